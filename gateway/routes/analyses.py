"""`/v1/analyses`: analyse a text (at once or streamed), read one's own analyses."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi import Response

from gateway import convert
from gateway.deps import AiUpstream, CurrentUser, PageSize, PageToken, RuntimeDep
from gateway.idempotency import IdempotencyKey, call_keyed, request_id_for
from gateway.problems import ProblemError, problem_bytes, problem_responses
from gateway.routes import resource_router
from gateway.schemas import Analysis, AnalysisCreate, AnalysisPage
from gateway.sse import EventStreamResponse, event
from gateway.upstream_errors import UpstreamError
from tandem_client import request_id_var
from tandem_protos.ai.v1 import analysis_pb2

log = logging.getLogger(__name__)

router = resource_router(prefix="/v1/analyses", tags=["analyses"])

_AUTHED = (401, 503, 504)
Chunks = AsyncGenerator[analysis_pb2.AnalyzeTextResponseChunk, None]

_STREAM_DESCRIPTION = """\
Server-sent events, as the ai service produces them:

- `partial`: the fields so far (`PartialAnalysis` JSON), any number of times;
- `analysis`: the final, stored analysis (`Analysis` JSON), once;
- `done`: the end (`data: {}`).

An error after the stream has begun comes as an `error` event whose data is the
problem JSON, followed by `done`. Errors before the first event are ordinary problem
responses. Closing the connection cancels the analysis upstream."""


@router.post(
    "",
    status_code=201,
    response_model=Analysis,
    summary="Analyse a text",
    description=(
        "409 while an earlier request with the same `Idempotency-Key` still runs; a retry "
        "with the key answers the analysis the first request stored."
    ),
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problem_responses(400, *_AUTHED, 409, 413, 415, 422, 429),
    },
)
async def create_analysis(
    body: AnalysisCreate,
    caller: CurrentUser,
    ai: AiUpstream,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    # No user_id: the ai service acts for the caller's token (and scopes the key by it).
    request = analysis_pb2.AnalyzeTextRequest(
        text=body.text, request_id=request_id_for(idempotency_key)
    )
    deadline = runtime.settings.analysis_deadline_seconds
    made = await call_keyed(
        ai, ai.stub.AnalyzeText, request, deadline=deadline, authorization=caller.authorization
    )
    headers = {"Location": f"/v1/analyses/{made.id}"}
    return convert.json_response(convert.analysis(made), status_code=201, headers=headers)


def _event_schema(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
        },
    }


# One event of the stream (OpenAPI 3.2's `itemSchema`, which tools of 3.1 ignore).
_EVENT_SCHEMA = {
    "oneOf": [
        _event_schema("partial", {"$ref": "#/components/schemas/PartialAnalysis"}),
        _event_schema("analysis", {"$ref": "#/components/schemas/Analysis"}),
        _event_schema("error", {"$ref": "#/components/schemas/Problem"}),
        _event_schema("done", {"type": "object", "maxProperties": 0}),
    ]
}


@router.post(
    ":stream",
    summary="Analyse a text, streaming partial results",
    description=_STREAM_DESCRIPTION,
    response_class=EventStreamResponse,
    responses={
        200: {
            "description": "the event stream",
            "content": {"text/event-stream": {"itemSchema": _EVENT_SCHEMA}},
        },
        **problem_responses(400, *_AUTHED, 413, 415, 429),
    },
)
async def stream_analysis(
    body: AnalysisCreate, caller: CurrentUser, ai: AiUpstream, runtime: RuntimeDep
) -> Response:
    request = analysis_pb2.AnalyzeTextRequest(text=body.text)
    chunks = ai.stream(
        ai.stub.StreamAnalyzeText,
        request,
        deadline=runtime.settings.stream_deadline_seconds,
        authorization=caller.authorization,
    )
    try:
        # Wait for the first chunk, so that an upstream that fails at once (bad text,
        # unreachable, too slow) gets its own status rather than a 200 with an error event.
        first = await anext(chunks, None)
    except BaseException:
        await chunks.aclose()  # cancels the call, if it still runs
        raise
    return EventStreamResponse(_relay(chunks, first))


async def _relay(
    chunks: Chunks, first: analysis_pb2.AnalyzeTextResponseChunk | None
) -> AsyncGenerator[bytes, None]:
    """The upstream's chunks as events, from `first` on; cancels the call when closed."""
    try:
        chunk = first
        finished = False
        while chunk is not None:
            kind = chunk.WhichOneof("chunk")
            if kind == "partial":
                yield event("partial", orjson.dumps(convert.partial(chunk.partial)))
            elif kind == "analysis":
                yield event("analysis", orjson.dumps(convert.analysis(chunk.analysis)))
                finished = True
            chunk = await anext(chunks, None)
        if not finished:
            raise convert.UpstreamContractError("the stream ended without an analysis")
    except UpstreamError as error:
        yield event("error", problem_bytes(error, request_id_var.get()))
    except Exception:
        log.exception("the analysis stream failed")
        fault = ProblemError(500, "the analysis stream failed; quote the request id to report it")
        yield event("error", problem_bytes(fault, request_id_var.get()))
    finally:
        await chunks.aclose()
    yield event("done", b"{}")


@router.get(
    "/{id}",
    response_model=Analysis,
    summary="One of the caller's analyses",
    responses=problem_responses(400, *_AUTHED, 404),
)
async def get_analysis(id: uuid.UUID, caller: CurrentUser, ai: AiUpstream) -> Response:
    # The ai service decides: another user's analysis is NOT_FOUND there.
    found = await ai.call(
        ai.stub.GetAnalysis,
        analysis_pb2.GetAnalysisRequest(id=str(id)),
        authorization=caller.authorization,
    )
    return convert.json_response(convert.analysis(found))


@router.get(
    "",
    response_model=AnalysisPage,
    summary="The caller's analyses, newest first",
    responses=problem_responses(400, *_AUTHED),
)
async def list_analyses(
    caller: CurrentUser,
    ai: AiUpstream,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> Response:
    request = analysis_pb2.ListAnalysesRequest(
        page_size=page_size or 0, page_token=page_token or ""
    )
    page = await ai.call(ai.stub.ListAnalyses, request, authorization=caller.authorization)
    content = {
        "analyses": [convert.analysis(a) for a in page.analyses],
        "next_page_token": page.next_page_token,
    }
    return convert.json_response(content)
