"""Every AnalysisService method through a real server with the offline analyzer,
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.rpc import rpc_error, violations
from tests.support.servers import ai_settings, channel_to, running_ai

Stub = Any
POSITIVE = "I love this phone. The battery is wonderful and the screen is gorgeous."
NEGATIVE = "This was a terrible purchase. It broke after a day and support was useless."


@pytest.fixture
async def ai(ai_db: str) -> AsyncIterator[Stub]:
    async with running_ai(ai_settings(ai_db)) as address, channel_to(address) as channel:
        yield analysis_pb2_grpc.AnalysisServiceStub(channel)


def request(text: str, user: str) -> analysis_pb2.AnalyzeTextRequest:
    return analysis_pb2.AnalyzeTextRequest(text=text, user_id=user)


async def test_analyze_get_and_the_offline_model(ai: Stub) -> None:
    user = str(uuid.uuid4())
    analysis = await ai.AnalyzeText(request(POSITIVE, user))
    assert uuid.UUID(analysis.id)
    assert analysis.user_id == user
    assert analysis.sentiment == analysis_pb2.SENTIMENT_POSITIVE
    assert analysis.summary
    assert analysis.key_points
    assert 0 < analysis.confidence <= 1
    assert analysis.model.startswith("offline")
    assert analysis.usage == analysis_pb2.Usage()
    assert analysis.create_time.seconds > 0
    assert await ai.GetAnalysis(analysis_pb2.GetAnalysisRequest(id=analysis.id)) == analysis


async def test_get_of_unknown_or_malformed_ids(ai: Stub) -> None:
    missing = str(uuid.uuid4())
    error = await rpc_error(ai.GetAnalysis(analysis_pb2.GetAnalysisRequest(id=missing)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(ai.GetAnalysis(analysis_pb2.GetAnalysisRequest(id="nope")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"id": "must be a UUID"}


async def test_offline_results_are_cached_too(ai: Stub) -> None:
    user = str(uuid.uuid4())
    first = await ai.AnalyzeText(request(NEGATIVE, user))
    second = await ai.AnalyzeText(request(NEGATIVE, user))
    assert (first.cached, second.cached) == (False, True)
    assert (second.summary, second.sentiment) == (first.summary, first.sentiment)


async def test_list_is_newest_first_per_user_with_pages(ai: Stub) -> None:
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    made = [(await ai.AnalyzeText(request(f"{POSITIVE} Number {i}.", user))).id for i in range(5)]
    await ai.AnalyzeText(request(NEGATIVE, other))
    seen: list[str] = []
    token = ""
    while True:
        page = await ai.ListAnalyses(
            analysis_pb2.ListAnalysesRequest(user_id=user, page_size=2, page_token=token)
        )
        seen += [a.id for a in page.analyses]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))
    theirs = await ai.ListAnalyses(analysis_pb2.ListAnalysesRequest(user_id=other))
    assert len(theirs.analyses) == 1


async def test_list_rejects_bad_parameters(ai: Stub) -> None:
    user = str(uuid.uuid4())
    for _ in range(2):
        await ai.AnalyzeText(request(f"{POSITIVE} {uuid.uuid4()}", user))
    page = await ai.ListAnalyses(analysis_pb2.ListAnalysesRequest(user_id=user, page_size=1))
    cases = [
        (analysis_pb2.ListAnalysesRequest(user_id="x"), {"user_id": "must be a UUID"}),
        (
            analysis_pb2.ListAnalysesRequest(user_id=user, page_size=-1),
            {"page_size": "must not be negative"},
        ),
        (
            # A token belongs to the user it was issued for.
            analysis_pb2.ListAnalysesRequest(
                user_id=str(uuid.uuid4()), page_token=page.next_page_token
            ),
            {"page_token": "was issued for a request with other parameters"},
        ),
        (
            analysis_pb2.ListAnalysesRequest(user_id=user, page_token=page.next_page_token + "x"),
            {"page_token": "is not a page token from this API"},
        ),
    ]
    for message, expected in cases:
        error = await rpc_error(ai.ListAnalyses(message))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(error) == expected


async def test_stream_ends_with_one_stored_analysis(ai: Stub) -> None:
    user = str(uuid.uuid4())
    chunks = [c async for c in ai.StreamAnalyzeText(request(NEGATIVE, user))]
    assert [c.WhichOneof("chunk") for c in chunks][-1] == "analysis"
    assert sum(c.WhichOneof("chunk") == "analysis" for c in chunks) == 1
    final = chunks[-1].analysis
    assert final.sentiment == analysis_pb2.SENTIMENT_NEGATIVE
    assert await ai.GetAnalysis(analysis_pb2.GetAnalysisRequest(id=final.id)) == final


async def test_a_long_text_is_analysed_within_the_limit(ai: Stub) -> None:
    text = ((POSITIVE + " " + NEGATIVE + "\n") * 340)[:50_000]
    assert len(text) <= 50_000
    analysis = await ai.AnalyzeText(request(text, str(uuid.uuid4())), timeout=30)
    assert analysis.summary
    error = await rpc_error(ai.AnalyzeText(request("x" * 50_001, str(uuid.uuid4()))))
    assert violations(error) == {"text": "must be at most 50000 characters"}


async def test_many_concurrent_calls_all_succeed(ai: Stub) -> None:
    user = str(uuid.uuid4())
    results = await asyncio.gather(
        *(ai.AnalyzeText(request(f"{POSITIVE} Variant {i}.", user)) for i in range(30))
    )
    assert len({r.id for r in results}) == 30
    listed = await ai.ListAnalyses(analysis_pb2.ListAnalysesRequest(user_id=user, page_size=100))
    assert len(listed.analyses) == 30
