"""An ai service killed in the middle of a Claude batch loses nothing: a new process on
the same database takes the operation over once the dead one's lease has run out,
polls the same provider batch (no second one is created) and stores every result."""

from __future__ import annotations

import signal
import uuid

from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.conftest import ROOT
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.fake_batches import BATCHES_PATH
from tests.support.processes import ServiceProcess, run_command
from tests.support.servers import channel_to
from tests.support.users_standin import running_users_standin

GOOD = {
    "summary": "Loud but powerful.",
    "sentiment": "mixed",
    "key_points": ["powerful", "loud"],
    "confidence": 0.7,
}
TEXTS = ["Powerful motor.", "Awful noise.", "Fine price."]


async def start(env: dict[str, str]) -> ServiceProcess:
    return await ServiceProcess(["-m", "ai_service"], env, cwd=str(ROOT)).start()


async def test_a_batch_survives_the_death_of_its_process(sqlite_url: str) -> None:
    with FakeAnthropic() as fake:
        async with running_users_standin() as (_, users):
            env = {
                **fake.env(),
                "AI_USERS_TARGET": users,
                "AI_DATABASE_URL": sqlite_url,
                "AI_ADDR": "127.0.0.1:0",
                "AI_MODEL": "claude-sonnet-5-5",
                "AI_BATCH_POLL_SECONDS": "0.05",
                "AI_BATCH_POLL_MAX_SECONDS": "0.1",
                "AI_BATCH_LEASE_SECONDS": "1",
                "AI_BATCH_SCAN_SECONDS": "0.1",
            }
            code, output = await run_command(["-m", "ai_service", "migrate"], env)
            assert code == 0, output
            first = await start(env)
            try:
                async with channel_to(await first.wait_serving()) as channel:
                    started = await analysis_pb2_grpc.AnalysisServiceStub(
                        channel
                    ).BatchAnalyzeTexts(
                        analysis_pb2.BatchAnalyzeTextsRequest(
                            texts=TEXTS, user_id=str(uuid.uuid4())
                        )
                    )
                (created,) = await fake.wait_for_requests_async(1, timeout=15, path=BATCHES_PATH)
                assert await created.wait_completed(10)
                (batch_id,) = fake.batches.ids
                batch_path = f"{BATCHES_PATH}/{batch_id}"
                # Polled: so the batch is recorded with its texts.
                await fake.wait_for_requests_async(1, timeout=15, path=batch_path)
            finally:
                first.send_signal(signal.SIGKILL)
                await first.wait()
            polled = len(fake.requests_to(batch_path))

            second = await start(env)
            try:
                async with channel_to(await second.wait_serving()) as channel:
                    # The second process polls the same batch once the lease is free.
                    await fake.wait_for_requests_async(polled + 1, timeout=15, path=batch_path)
                    fake.enqueue(*[Reply.json_output(GOOD)] * len(TEXTS))
                    fake.batches.end(batch_id)
                    done = await operations_pb2_grpc.OperationsStub(channel).WaitOperation(
                        operations_pb2.WaitOperationRequest(
                            name=started.name, timeout=duration_pb2.Duration(seconds=20)
                        )
                    )
            finally:
                await second.stop()
    assert done.done, second.tail()
    response = analysis_pb2.BatchAnalyzeTextsResponse()
    assert done.response.Unpack(response)
    assert [r.analysis.summary for r in response.results] == [GOOD["summary"]] * len(TEXTS)
    metadata = analysis_pb2.BatchAnalyzeTextsMetadata()
    assert done.metadata.Unpack(metadata)
    assert list(metadata.provider_batch_ids) == [batch_id]
    # One provider batch, created once: the restart did not send the texts again.
    assert [r.method for r in fake.requests_to(BATCHES_PATH)] == ["POST"]
    assert f"working on operation {started.name.removeprefix('operations/')}" in second.output
