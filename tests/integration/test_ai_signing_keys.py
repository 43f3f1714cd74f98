"""The ai service's keys at a cold start: fetched from the users service (the stand-in, on
a real port) as soon as the server serves, and soon after a users service that comes up
later, with a retry delay that says when the next fetch may be."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from tandem_client import errors
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.gateway import closed_port
from tests.support.rpc import reason, rpc_error, trailers
from tests.support.servers import ai_settings, channel_to, running_ai
from tests.support.users_standin import running_users_standin

# Well past the few fetches the back-off makes in it.
WITHIN_S = 15.0


def listing() -> analysis_pb2.ListAnalysesRequest:
    return analysis_pb2.ListAnalysesRequest(user_id=str(uuid.uuid4()))


async def test_the_keys_are_fetched_before_the_first_call(ai_sqlite_db: str) -> None:
    async with running_users_standin() as (standin, users):
        settings = ai_settings(ai_sqlite_db, users_target=users)
        async with running_ai(settings) as address, channel_to(address) as channel:
            await asyncio.wait_for(standin.keys_asked.wait(), WITHIN_S)
            await analysis_pb2_grpc.AnalysisServiceStub(channel).ListAnalyses(listing())
    assert standin.calls.count("GetJsonWebKeySet") == 1


async def test_a_users_service_that_comes_up_later(ai_sqlite_db: str) -> None:
    users = f"127.0.0.1:{closed_port()}"
    settings = ai_settings(ai_sqlite_db, users_target=users)
    async with running_ai(settings) as address, channel_to(address) as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        error = await rpc_error(stub.ListAnalyses(listing()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(error) == "SIGNING_KEYS_UNAVAILABLE"
        # The back-off of a key set never fetched, not AI_JWKS_MIN_REFETCH_SECONDS (10).
        retry_after = errors.from_rpc_error(error).retry_after
        assert retry_after is not None
        assert 0 < retry_after <= 2
        assert trailers(error)["retry-after"] in {"1", "2"}
        async with running_users_standin(addr=users) as (standin, _):
            await asyncio.wait_for(standin.keys_asked.wait(), WITHIN_S)
            await stub.ListAnalyses(listing())
