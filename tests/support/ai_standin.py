"""A stand-in `ai.v1.AnalysisService` for gateway tests, until the real servicer exists.

A real grpc.aio server (servicekit's `build_server`: health, reflection, interceptor) on
port 0, keeping analyses in memory. Tests steer it through hooks:

- `fail(method, error)`: the next calls of `method` raise `error` (a ServiceError gets
  its status and rich details from the interceptor; any other exception is INTERNAL);
  `times=` limits how many calls fail. `abort(method, code, message)` ends calls with a
  bare status, without details, like grpc itself does.
- `hold(method)`: calls of `method` wait until `release()` (or until the caller's
  deadline or cancellation ends them): a slow upstream, without sleeping.
- `stream_partials`: the partial chunks StreamAnalyzeText sends before the analysis;
  `hold_stream()` makes it wait after them, `fail_stream(error)` fail after them.
- `BatchAnalyzeTexts` answers a finished operation at once, which the stand-in
  `google.longrunning.Operations` (Get, List, Cancel) then serves to its owner.
- events a test can await: `stream_started`, `stream_cancelled`, `analyze_started`,
  `analyze_cancelled` (AnalyzeText's, whose analysis is then not kept); `calls` records
  (method, request, request id) of every call.

`python -m tests.support.ai_standin ADDR` serves one until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2

from servicekit import errors
from servicekit.logs import configure_logging
from servicekit.server import GrpcServer, Service, build_server, serve_until_signalled
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.tokens import subject_of

SERVICE_NAME = "ai.v1.AnalysisService"
OPERATIONS_SERVICE = "google.longrunning.Operations"
TEXT_LIMIT = 50_000

log = logging.getLogger("ai_standin")


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    request: Any
    request_id: str | None
    authorization: str | None = None


@dataclass
class _Failure:
    error: BaseException | None
    code: grpc.StatusCode | None = None
    message: str = ""
    times: int | None = None


def default_partials() -> list[analysis_pb2.PartialAnalysis]:
    return [
        analysis_pb2.PartialAnalysis(summary="A short"),
        analysis_pb2.PartialAnalysis(
            summary="A short text.",
            sentiment=analysis_pb2.SENTIMENT_POSITIVE,
            key_points=["short"],
        ),
    ]


@dataclass
class AnalysisStandIn(analysis_pb2_grpc.AnalysisServiceServicer):
    analyses: dict[str, analysis_pb2.Analysis] = field(default_factory=dict)
    # Finished batches by name, with their owners.
    operations: dict[str, tuple[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    stream_partials: list[analysis_pb2.PartialAnalysis] = field(default_factory=default_partials)
    # What the next analyses say (SENTIMENT_UNSPECIFIED plays a broken upstream).
    sentiment: analysis_pb2.Sentiment.ValueType = analysis_pb2.SENTIMENT_POSITIVE
    stream_started: asyncio.Event = field(default_factory=asyncio.Event)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    analyze_started: asyncio.Event = field(default_factory=asyncio.Event)
    analyze_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    _failures: dict[str, _Failure] = field(default_factory=dict)
    _held: set[str] = field(default_factory=set)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _hold_stream: bool = False
    _stream_error: BaseException | None = None

    # Hooks

    def fail(self, method: str, error: BaseException, *, times: int | None = None) -> None:
        self._failures[method] = _Failure(error, times=times)

    def abort(self, method: str, code: grpc.StatusCode, message: str) -> None:
        self._failures[method] = _Failure(None, code=code, message=message)

    def hold(self, method: str) -> None:
        self._held.add(method)

    def hold_stream(self) -> None:
        self._hold_stream = True

    def fail_stream(self, error: BaseException) -> None:
        self._stream_error = error

    def release(self) -> None:
        self._release.set()

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # Behaviour shared by every method

    async def _enter(self, method: str, request: Any, context: Any) -> str:
        """Record the call, play its failure if one is set; the caller's user id."""
        metadata = dict(context.invocation_metadata() or ())
        self.calls.append(
            Call(method, request, metadata.get("x-request-id"), metadata.get("authorization"))
        )
        failure = self._failures.get(method)
        if failure is not None:
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    del self._failures[method]
            if failure.error is not None:
                raise failure.error
            assert failure.code is not None
            await context.abort(failure.code, failure.message)
        if method in self._held:
            await self._release.wait()
        return subject_of(metadata.get("authorization"))

    @staticmethod
    def _check(request: analysis_pb2.AnalyzeTextRequest) -> None:
        violations = []
        if not request.text.strip():
            violations.append(errors.FieldViolation("text", errors.empty_text(request.text)))
        elif len(request.text) > TEXT_LIMIT:
            violations.append(
                errors.FieldViolation("text", f"must be at most {TEXT_LIMIT} characters")
            )
        try:
            uuid.UUID(request.user_id)
        except ValueError:
            violations.append(errors.FieldViolation("user_id", "must be a UUID"))
        if violations:
            raise errors.InvalidArgument(violations)

    def _analyse(self, request: analysis_pb2.AnalyzeTextRequest) -> analysis_pb2.Analysis:
        self._check(request)
        made = analysis_pb2.Analysis(
            id=str(uuid.uuid4()),
            user_id=request.user_id,
            summary=request.text[:80],
            sentiment=self.sentiment,
            key_points=[request.text[:20]],
            confidence=0.75,
            model="stub",
        )
        made.create_time.FromDatetime(datetime.now(UTC))
        self.analyses[made.id] = made
        return made

    # The service

    async def AnalyzeText(  # noqa: N802
        self, request: analysis_pb2.AnalyzeTextRequest, context: Any
    ) -> analysis_pb2.Analysis:
        self.analyze_started.set()
        try:
            caller = await self._enter("AnalyzeText", request, context)
        except asyncio.CancelledError:
            self.analyze_cancelled.set()
            raise
        return self._analyse(_for(request, caller))

    async def StreamAnalyzeText(  # noqa: N802
        self, request: analysis_pb2.AnalyzeTextRequest, context: Any
    ) -> AsyncIterator[analysis_pb2.AnalyzeTextResponseChunk]:
        self.stream_started.set()
        try:
            caller = await self._enter("StreamAnalyzeText", request, context)
            request = _for(request, caller)
            self._check(request)
            for chunk in self.stream_partials:
                yield analysis_pb2.AnalyzeTextResponseChunk(partial=chunk)
            if self._stream_error is not None:
                raise self._stream_error
            if self._hold_stream:
                await self._release.wait()
            yield analysis_pb2.AnalyzeTextResponseChunk(analysis=self._analyse(request))
        except asyncio.CancelledError:
            self.stream_cancelled.set()
            raise

    async def GetAnalysis(  # noqa: N802
        self, request: analysis_pb2.GetAnalysisRequest, context: Any
    ) -> analysis_pb2.Analysis:
        caller = await self._enter("GetAnalysis", request, context)
        found = self.analyses.get(request.id)
        if found is None or found.user_id != caller:
            raise errors.NotFound(f"no analysis {request.id}", reason="ANALYSIS_NOT_FOUND")
        return found

    async def ListAnalyses(  # noqa: N802
        self, request: analysis_pb2.ListAnalysesRequest, context: Any
    ) -> analysis_pb2.ListAnalysesResponse:
        caller = await self._enter("ListAnalyses", request, context)
        owner = request.user_id or caller
        size = min(request.page_size or 50, 1000)
        if request.page_size < 0:
            raise errors.InvalidArgument.field("page_size", "must not be negative")
        start = 0
        if request.page_token:
            if not (request.page_token.isascii() and request.page_token.isdigit()):
                raise errors.InvalidArgument.field(
                    "page_token", "is not a page token from this API"
                )
            start = int(request.page_token)
        mine = [a for a in reversed(self.analyses.values()) if a.user_id == owner]
        page = mine[start : start + size]
        more = start + size < len(mine)
        return analysis_pb2.ListAnalysesResponse(
            analyses=page, next_page_token=str(start + size) if more else ""
        )

    async def BatchAnalyzeTexts(  # noqa: N802
        self, request: analysis_pb2.BatchAnalyzeTextsRequest, context: Any
    ) -> Any:
        # Done at once: batches' life is tested against the real ai server
        # (tests/integration/test_ai_batches.py, test_gateway_batches.py).
        caller = await self._enter("BatchAnalyzeTexts", request, context)
        owner = request.user_id or caller
        if not request.texts:
            raise errors.InvalidArgument.field("texts", "must hold at least one text")
        made = [
            self._analyse(analysis_pb2.AnalyzeTextRequest(text=t, user_id=owner))
            for t in request.texts
        ]
        metadata = analysis_pb2.BatchAnalyzeTextsMetadata(
            total_count=len(made), succeeded_count=len(made), model="stub", user_id=owner
        )
        for stamp in (metadata.create_time, metadata.update_time, metadata.end_time):
            stamp.FromDatetime(datetime.now(UTC))
        operation = operations_pb2.Operation(name=f"operations/{uuid.uuid4()}", done=True)
        operation.metadata.Pack(metadata)
        operation.response.Pack(
            analysis_pb2.BatchAnalyzeTextsResponse(
                results=[analysis_pb2.BatchAnalyzeTextsResult(analysis=a) for a in made]
            )
        )
        self.operations[operation.name] = (owner, operation)
        return operation


# Its base class has no type stubs; it answers UNIMPLEMENTED to the rest (Wait, Delete).
@dataclass
class OperationsStandIn(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    """google.longrunning.Operations over the AnalysisStandIn's finished batches."""

    analyses: AnalysisStandIn

    async def GetOperation(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self._find(request.name, "GetOperation", request, context)

    async def CancelOperation(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._find(request.name, "CancelOperation", request, context)
        return empty_pb2.Empty()

    async def ListOperations(self, request: Any, context: Any) -> Any:  # noqa: N802
        caller = await self.analyses._enter("ListOperations", request, context)
        mine = [o for owner, o in reversed(self.analyses.operations.values()) if owner == caller]
        return operations_pb2.ListOperationsResponse(operations=mine[: request.page_size or 50])

    async def _find(self, name: str, method: str, request: Any, context: Any) -> Any:
        caller = await self.analyses._enter(method, request, context)
        owner, operation = self.analyses.operations.get(name, (None, None))
        if operation is None or owner != caller:
            raise errors.NotFound(f"no operation {name}", reason="OPERATION_NOT_FOUND")
        return operation


def _for(request: analysis_pb2.AnalyzeTextRequest, caller: str) -> analysis_pb2.AnalyzeTextRequest:
    """The request with its user: the one it names, else the caller (as the ai service)."""
    if request.user_id:
        return request
    return analysis_pb2.AnalyzeTextRequest(text=request.text, user_id=caller)


@dataclass
class RunningStandIn:
    standin: AnalysisStandIn
    server: GrpcServer

    @property
    def address(self) -> str:
        return self.server.address

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.server.health.set(SERVICE_NAME, status)


def _services(standin: AnalysisStandIn) -> list[Service]:
    register = partial(analysis_pb2_grpc.add_AnalysisServiceServicer_to_server, standin)
    register_operations = partial(
        operations_pb2_grpc.add_OperationsServicer_to_server, OperationsStandIn(standin)
    )
    return [
        Service(SERVICE_NAME, register),
        Service(OPERATIONS_SERVICE, register_operations),
    ]


@asynccontextmanager
async def running_ai_standin(
    standin: AnalysisStandIn | None = None, addr: str = "127.0.0.1:0"
) -> AsyncIterator[RunningStandIn]:
    """A started stand-in server; yields it with its address."""
    standin = standin or AnalysisStandIn()
    server = build_server(addr, _services(standin), access_log=False)
    await server.start()
    try:
        yield RunningStandIn(standin, server)
    finally:
        standin.release()
        await server.stop(0)


async def main(addr: str) -> None:
    server = build_server(addr, _services(AnalysisStandIn()), access_log=False)
    await serve_until_signalled(server, grace=1)


if __name__ == "__main__":
    configure_logging("INFO")
    asyncio.run(main(sys.argv[1]))
