"""BatchAnalyzeTexts and google.longrunning.Operations through a real ai server with the
offline analyzer, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.rpc import reason, rpc_error, violations
from tests.support.servers import ai_settings, channel_to, running_ai
from tests.support.tokens import user_bearer

POSITIVE = "I love this phone. The battery is wonderful and the screen is gorgeous."
NEGATIVE = "This was a terrible purchase. It broke after a day and support was useless."
NEUTRAL = "The meeting is on Tuesday at ten in room four."


@dataclass
class Stubs:
    ai: Any
    operations: Any


@pytest.fixture
async def stubs(ai_db: str) -> AsyncIterator[Stubs]:
    settings = ai_settings(ai_db, batch_max_texts=5)
    async with running_ai(settings) as address, channel_to(address) as channel:
        yield Stubs(
            analysis_pb2_grpc.AnalysisServiceStub(channel),
            operations_pb2_grpc.OperationsStub(channel),
        )


def metadata_of(operation: Any) -> analysis_pb2.BatchAnalyzeTextsMetadata:
    metadata = analysis_pb2.BatchAnalyzeTextsMetadata()
    assert operation.metadata.Unpack(metadata)
    return metadata


def response_of(operation: Any) -> analysis_pb2.BatchAnalyzeTextsResponse:
    response = analysis_pb2.BatchAnalyzeTextsResponse()
    assert operation.response.Unpack(response)
    return response


async def wait(stubs: Stubs, name: str) -> Any:
    request = operations_pb2.WaitOperationRequest(
        name=name, timeout=duration_pb2.Duration(seconds=20)
    )
    operation = await stubs.operations.WaitOperation(request)
    assert operation.done, "the batch did not finish within 20 s"
    return operation


async def test_a_batch_runs_in_the_background_and_names_its_analyses_in_order(
    stubs: Stubs,
) -> None:
    user = str(uuid.uuid4())
    texts = [POSITIVE, NEGATIVE, NEUTRAL]
    started = await stubs.ai.BatchAnalyzeTexts(
        analysis_pb2.BatchAnalyzeTextsRequest(texts=texts, user_id=user)
    )
    assert started.name.startswith("operations/")
    assert uuid.UUID(started.name.removeprefix("operations/"))
    first = metadata_of(started)
    assert (first.total_count, first.user_id) == (3, user)
    assert first.model.startswith("offline")
    assert first.succeeded_count + first.failed_count + first.pending_count == 3

    done = await wait(stubs, started.name)
    metadata = metadata_of(done)
    assert (metadata.succeeded_count, metadata.failed_count, metadata.pending_count) == (3, 0, 0)
    assert metadata.provider_batch_ids == []
    assert metadata.HasField("end_time")
    results = response_of(done).results
    assert [r.WhichOneof("result") for r in results] == ["analysis"] * 3
    sentiments = [r.analysis.sentiment for r in results]
    assert sentiments[:2] == [analysis_pb2.SENTIMENT_POSITIVE, analysis_pb2.SENTIMENT_NEGATIVE]
    for result in results:
        stored = await stubs.ai.GetAnalysis(analysis_pb2.GetAnalysisRequest(id=result.analysis.id))
        assert stored == result.analysis
        assert stored.user_id == user
    # GetOperation answers the same finished operation.
    again = await stubs.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=started.name)
    )
    assert again == done


async def test_each_text_is_checked_and_the_count_is_bounded(stubs: Stubs) -> None:
    user = str(uuid.uuid4())
    cases = [
        ([], {"texts": "must hold at least one text"}),
        ([POSITIVE] * 6, {"texts": "must hold at most 5 texts"}),
        (
            [POSITIVE, "   ", NEGATIVE, ""],
            {
                "texts[1]": "must not be blank",
                "texts[3]": "is required",
            },
        ),
    ]
    for texts, expected in cases:
        error = await rpc_error(
            stubs.ai.BatchAnalyzeTexts(
                analysis_pb2.BatchAnalyzeTextsRequest(texts=texts, user_id=user)
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(error) == expected
    listed = await stubs.operations.ListOperations(
        operations_pb2.ListOperationsRequest(filter=f'user_id="{user}"')
    )
    assert list(listed.operations) == []


async def test_list_is_the_users_own_newest_first_with_pages(stubs: Stubs) -> None:
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    names = []
    for i in range(3):
        started = await stubs.ai.BatchAnalyzeTexts(
            analysis_pb2.BatchAnalyzeTextsRequest(texts=[f"{POSITIVE} {i}"], user_id=user)
        )
        names.append(started.name)
    await stubs.ai.BatchAnalyzeTexts(
        analysis_pb2.BatchAnalyzeTextsRequest(texts=[NEGATIVE], user_id=other)
    )
    seen, token = [], ""
    while True:
        page = await stubs.operations.ListOperations(
            operations_pb2.ListOperationsRequest(
                filter=f'user_id="{user}"', page_size=2, page_token=token
            )
        )
        seen += [o.name for o in page.operations]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(names))
    bad = await rpc_error(
        stubs.operations.ListOperations(operations_pb2.ListOperationsRequest(filter="done=true"))
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A service names the user it lists for.
    unnamed = await rpc_error(
        stubs.operations.ListOperations(operations_pb2.ListOperationsRequest())
    )
    assert violations(unnamed) == {"filter": 'is required of a service: user_id="<uuid>"'}


async def test_another_users_operation_is_not_found_and_unknown_names_too(
    ai_db: str,
) -> None:
    owner, other = uuid.uuid4(), uuid.uuid4()
    async with (
        running_ai(ai_settings(ai_db)) as address,
        channel_to(address, authorization=user_bearer(str(owner))) as mine,
        channel_to(address, authorization=user_bearer(str(other))) as theirs,
    ):
        started = await analysis_pb2_grpc.AnalysisServiceStub(mine).BatchAnalyzeTexts(
            analysis_pb2.BatchAnalyzeTextsRequest(texts=[POSITIVE])
        )
        assert metadata_of(started).user_id == str(owner)
        own = operations_pb2_grpc.OperationsStub(mine)
        stranger = operations_pb2_grpc.OperationsStub(theirs)
        assert (await own.GetOperation(operations_pb2.GetOperationRequest(name=started.name))).name
        calls = [
            stranger.GetOperation(operations_pb2.GetOperationRequest(name=started.name)),
            stranger.WaitOperation(operations_pb2.WaitOperationRequest(name=started.name)),
            stranger.CancelOperation(operations_pb2.CancelOperationRequest(name=started.name)),
            own.GetOperation(operations_pb2.GetOperationRequest(name=f"operations/{uuid.uuid4()}")),
        ]
        for call in calls:
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert reason(error) == "OPERATION_NOT_FOUND"
        listed = await stranger.ListOperations(operations_pb2.ListOperationsRequest())
        assert list(listed.operations) == []
        error = await rpc_error(
            own.GetOperation(operations_pb2.GetOperationRequest(name="analyses/x"))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_retry_with_the_request_id_answers_the_first_operation(stubs: Stubs) -> None:
    user, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    request = analysis_pb2.BatchAnalyzeTextsRequest(
        texts=[POSITIVE, NEGATIVE], user_id=user, request_id=request_id
    )
    first = await stubs.ai.BatchAnalyzeTexts(request)
    second = await stubs.ai.BatchAnalyzeTexts(request)
    assert second.name == first.name
    other = analysis_pb2.BatchAnalyzeTextsRequest(
        texts=[POSITIVE], user_id=user, request_id=request_id
    )
    error = await rpc_error(stubs.ai.BatchAnalyzeTexts(other))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == "IDEMPOTENCY_KEY_REUSED"


async def test_wait_answers_a_running_operation_when_its_timeout_is_up(stubs: Stubs) -> None:
    user = str(uuid.uuid4())
    started = await stubs.ai.BatchAnalyzeTexts(
        analysis_pb2.BatchAnalyzeTextsRequest(texts=[POSITIVE], user_id=user)
    )
    done = await wait(stubs, started.name)
    # Cancelling a finished operation changes nothing.
    await stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=started.name))
    after = await stubs.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=started.name)
    )
    assert after.WhichOneof("result") == "response"
    assert response_of(after) == response_of(done)


async def test_a_batch_is_one_request_of_the_users_analyses_a_minute(ai_db: str) -> None:
    settings = ai_settings(ai_db, analyses_per_minute=2)
    async with running_ai(settings) as address, channel_to(address) as channel:
        ai = analysis_pb2_grpc.AnalysisServiceStub(channel)
        user = str(uuid.uuid4())
        await ai.BatchAnalyzeTexts(
            analysis_pb2.BatchAnalyzeTextsRequest(texts=[POSITIVE, NEGATIVE, NEUTRAL], user_id=user)
        )
        await ai.AnalyzeText(analysis_pb2.AnalyzeTextRequest(text=POSITIVE, user_id=user))
        refused = await rpc_error(
            ai.BatchAnalyzeTexts(
                analysis_pb2.BatchAnalyzeTextsRequest(texts=[NEUTRAL], user_id=user)
            )
        )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(refused) == "TOO_MANY_ANALYSES"
