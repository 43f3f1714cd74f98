"""AnalyzeText's and StreamAnalyzeText's `request_id` (AIP-155) through real ai servers
(offline analyzer), on SQLite and PostgreSQL: a retry answers the stored analysis,
another request with the id is refused, concurrent ones store one analysis, and ids
are their caller's own and expire."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import grpc
from sqlalchemy import Table

from ai_service.models import AnalysisRow, analysis_keys
from servicekit.idempotency import KEY_IN_FLIGHT, KEY_REUSED
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.rpc import reason, rpc_error, violations
from tests.support.servers import ai_settings, channel_to, running_ai
from tests.support.tables import count_of, rows_of
from tests.support.tokens import user_bearer

Stub = Any
ANALYSES = cast(Table, AnalysisRow.__table__)
TEXT = "I love this phone. The battery is wonderful and the screen is gorgeous."
USER = str(uuid.uuid4())


def analyze(
    request_id: str, text: str = TEXT, user_id: str = USER
) -> analysis_pb2.AnalyzeTextRequest:
    return analysis_pb2.AnalyzeTextRequest(text=text, user_id=user_id, request_id=request_id)


def new_id() -> str:
    return str(uuid.uuid4())


async def test_a_retry_answers_the_stored_analysis_and_stores_no_other(ai_db: str) -> None:
    request_id = new_id()
    async with running_ai(ai_settings(ai_db)) as address, channel_to(address) as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        first = await stub.AnalyzeText(analyze(request_id))
        again = await stub.AnalyzeText(analyze(request_id))
        # Without an id, the same text is another (cached) analysis.
        other = await stub.AnalyzeText(analyze(""))
    assert again == first
    assert other.id != first.id
    assert await count_of(ai_db, ANALYSES) == 2
    (key,) = await rows_of(ai_db, analysis_keys)
    assert (key["scope"], str(key["resource_id"])) == ("service:tests", first.id)


async def test_the_same_request_id_with_another_request_is_refused(ai_db: str) -> None:
    request_id = new_id()
    async with running_ai(ai_settings(ai_db)) as address, channel_to(address) as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        await stub.AnalyzeText(analyze(request_id))
        for other in (analyze(request_id, text=TEXT + "!"), analyze(request_id, user_id=new_id())):
            error = await rpc_error(stub.AnalyzeText(other))
            assert (error.code(), reason(error)) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                KEY_REUSED,
            )
        error = await rpc_error(stub.AnalyzeText(analyze("nope")))
        assert violations(error) == {"request_id": "must be a UUID"}
    assert await count_of(ai_db, ANALYSES) == 1


async def test_concurrent_retries_on_one_replica_store_one_analysis(ai_db: str) -> None:
    request_id = new_id()
    async with running_ai(ai_settings(ai_db)) as address, channel_to(address) as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        outcomes = await asyncio.gather(
            *(stub.AnalyzeText(analyze(request_id)) for _ in range(10)), return_exceptions=True
        )
    made = [o for o in outcomes if isinstance(o, analysis_pb2.Analysis)]
    refused = [o for o in outcomes if not isinstance(o, analysis_pb2.Analysis)]
    assert made and {analysis.id for analysis in made} == {made[0].id}
    for error in refused:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert (error.code(), reason(error)) == (grpc.StatusCode.ABORTED, KEY_IN_FLIGHT)
    assert await count_of(ai_db, ANALYSES) == 1


async def test_concurrent_retries_on_two_replicas_store_one_analysis(ai_db: str) -> None:
    settings = ai_settings(ai_db)
    async with (
        running_ai(settings) as first_address,
        running_ai(settings) as second_address,
        channel_to(first_address) as first_channel,
        channel_to(second_address) as second_channel,
    ):
        first = analysis_pb2_grpc.AnalysisServiceStub(first_channel)
        second = analysis_pb2_grpc.AnalysisServiceStub(second_channel)
        for round_ in range(5):
            request = analyze(new_id(), text=f"{TEXT} Round {round_}.")
            one, other = await asyncio.gather(
                first.AnalyzeText(request), second.AnalyzeText(request)
            )
            assert one == other
    assert await count_of(ai_db, ANALYSES) == 5
    assert await count_of(ai_db, analysis_keys) == 5


async def test_request_ids_are_their_callers_own(ai_db: str) -> None:
    request_id = new_id()
    made = []
    async with running_ai(ai_settings(ai_db)) as address:
        for user in (str(uuid.uuid4()), str(uuid.uuid4())):
            async with channel_to(address, authorization=user_bearer(user)) as channel:
                stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
                # Their own texts, no user_id: each user's token acts for itself.
                request = analysis_pb2.AnalyzeTextRequest(
                    text=f"{TEXT} Says {user}.", request_id=request_id
                )
                made.append(await stub.AnalyzeText(request))
    assert made[0].user_id != made[1].user_id
    scopes = {row["scope"] for row in await rows_of(ai_db, analysis_keys)}
    assert scopes == {f"user:{made[0].user_id}", f"user:{made[1].user_id}"}


async def test_a_stream_with_a_request_id_seen_before_sends_only_the_stored_analysis(
    ai_db: str,
) -> None:
    request_id = new_id()
    async with running_ai(ai_settings(ai_db)) as address, channel_to(address) as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        chunks = [chunk async for chunk in stub.StreamAnalyzeText(analyze(request_id))]
        stored = chunks[-1].analysis
        again = [chunk async for chunk in stub.StreamAnalyzeText(analyze(request_id))]
        assert [chunk.WhichOneof("chunk") for chunk in again] == ["analysis"]
        assert again[0].analysis == stored
        # The two methods share the request message: one id, one analysis.
        assert await stub.AnalyzeText(analyze(request_id)) == stored
        error = await rpc_error(stub.AnalyzeText(analyze(request_id, text="other")))
        assert reason(error) == KEY_REUSED
    assert await count_of(ai_db, ANALYSES) == 1


async def test_request_ids_expire_after_the_window(ai_db: str) -> None:
    request_id = new_id()
    settings = ai_settings(ai_db, idempotency_key_ttl_seconds=1)
    async with running_ai(settings) as address, channel_to(address) as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        first = await stub.AnalyzeText(analyze(request_id))
        await asyncio.sleep(1.1)
        second = await stub.AnalyzeText(analyze(request_id, text="Another text entirely."))
    assert second.id != first.id
    (key,) = await rows_of(ai_db, analysis_keys)
    assert str(key["resource_id"]) == second.id
