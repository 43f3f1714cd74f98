"""The ai service as a real process: against the fake Messages API through
ANTHROPIC_BASE_URL, and offline; driven with the real grpcurl, as a service account
(its token's keys, and the accounts it names, from a stand-in users service)."""

from __future__ import annotations

import json
import uuid

import grpc

from tests.conftest import ROOT
from tests.support.fake_anthropic import MESSAGES_PATH, FakeAnthropic, Reply
from tests.support.grpcurl import grpcurl
from tests.support.processes import ServiceProcess, run_command
from tests.support.users_standin import running_users_standin

SERVICE = "ai.v1.AnalysisService"
GOOD = {
    "summary": "Loud but powerful.",
    "sentiment": "mixed",
    "key_points": ["powerful", "loud"],
    "confidence": 0.7,
}


async def start(env: dict[str, str], users: str) -> ServiceProcess:
    env = {**env, "AI_USERS_TARGET": users}
    code, output = await run_command(["-m", "ai_service", "migrate"], env)
    assert code == 0, output
    return await ServiceProcess(["-m", "ai_service"], env, cwd=str(ROOT)).start()


async def test_claude_path_through_a_real_process(sqlite_url: str) -> None:
    async with running_users_standin() as (_, users):
        await _claude_path(sqlite_url, users)


async def _claude_path(sqlite_url: str, users: str) -> None:
    with FakeAnthropic() as fake:
        fake.enqueue(Reply.json_output(GOOD))
        env = {
            **fake.env(),
            "AI_DATABASE_URL": sqlite_url,
            "AI_ADDR": "127.0.0.1:0",
            "AI_MODEL": "claude-sonnet-5-5",
        }
        service = await start(env, users)
        try:
            address = await service.wait_serving()
            assert "analyses by claude-sonnet-5-5" in service.output
            user = str(uuid.uuid4())
            result = await grpcurl(
                "-v",
                address,
                f"{SERVICE}/AnalyzeText",
                data={"text": "Powerful motor, awful noise.", "user_id": user},
            )
            assert result.exit_code == 0, result.output
            body = json.loads(
                result.output[result.output.index("{") : result.output.rindex("}") + 1]
            )
            assert body["sentiment"] == "SENTIMENT_MIXED"
            assert body["user_id"] == user
            sent = fake.last_request
            assert f"anthropic-request-id: {sent.request_id}" in result.output
            assert sent.json["model"] == "claude-sonnet-5-5"
            assert "Powerful motor, awful noise." in sent.user_text
            assert len(fake.requests_to(MESSAGES_PATH)) == 1
        finally:
            await service.stop()
        assert service.process.returncode == 0


async def test_offline_path_streams_through_grpcurl(sqlite_url: str) -> None:
    env = {"AI_DATABASE_URL": sqlite_url, "AI_ADDR": "127.0.0.1:0"}
    async with running_users_standin() as (_, users):
        service = await start(env, users)
        await _offline_path(service)


async def _offline_path(service: ServiceProcess) -> None:
    try:
        address = await service.wait_serving()
        assert "analyses by offline" in service.output
        user = str(uuid.uuid4())
        streamed = await grpcurl(
            address,
            f"{SERVICE}/StreamAnalyzeText",
            data={"text": "What a wonderful, delightful day. I loved it.", "user_id": user},
        )
        assert streamed.exit_code == 0, streamed.output
        assert '"analysis"' in streamed.output
        assert "SENTIMENT_POSITIVE" in streamed.output
        empty = await grpcurl(
            address, f"{SERVICE}/AnalyzeText", data={"text": "   ", "user_id": user}
        )
        assert empty.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert '"field":"text"' in empty.output
        anonymous = await grpcurl(address, f"{SERVICE}/ListAnalyses", data={}, token=None)
        assert anonymous.status_code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "CREDENTIALS_MISSING" in anonymous.output
    finally:
        await service.stop()
