"""gRPC adapter of `google.longrunning.Operations` for the ai service's operations.

Operations are named `operations/{uuid}`. DeleteOperation is not offered (operations
are kept, as analyses are): UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import any_pb2, empty_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ai_service.domain import Analysis
from ai_service.operations import Operations, OperationView
from ai_service.operations_repository import ItemError
from ai_service.servicer import call_deadline, to_proto
from servicekit.callers import CallerResolver
from servicekit.errors import ERROR_DOMAIN
from tandem_protos.ai.v1 import analysis_pb2

SERVICE_NAME = "google.longrunning.Operations"


# googleapis-common-protos ships no type stubs for its gRPC servicer.
class OperationsServicer(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    def __init__(
        self, operations: Operations, callers: CallerResolver, *, default_deadline_seconds: float
    ) -> None:
        self._operations = operations
        self._callers = callers
        self._default_deadline = default_deadline_seconds

    async def GetOperation(self, request: Any, context: Any) -> Any:  # noqa: N802
        caller = await self._callers.caller(context)
        return operation_to_proto(await self._operations.get(request.name, caller))

    async def ListOperations(self, request: Any, context: Any) -> Any:  # noqa: N802
        page = await self._operations.list(
            request.name,
            request.filter,
            await self._callers.caller(context),
            size=request.page_size,
            token=request.page_token,
        )
        return operations_pb2.ListOperationsResponse(
            operations=[operation_to_proto(v) for v in page.items],
            next_page_token=page.next_page_token,
        )

    async def CancelOperation(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._operations.cancel(request.name, await self._callers.caller(context))
        return empty_pb2.Empty()

    async def WaitOperation(self, request: Any, context: Any) -> Any:  # noqa: N802
        caller = await self._callers.caller(context)
        seconds = (
            request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
        )
        remaining: float | None = context.time_remaining()
        if remaining is not None:
            # Answer before the caller's deadline, with the operation as it is then.
            bound = max(0.0, remaining - 0.1)
            seconds = bound if seconds is None else min(seconds, bound)
        view = await self._operations.wait(request.name, caller, seconds=seconds)
        return operation_to_proto(view)

    async def batch_analyze(
        self, request: analysis_pb2.BatchAnalyzeTextsRequest, context: Any
    ) -> Any:
        """AnalysisService.BatchAnalyzeTexts (served there, as the proto declares)."""
        view = await self._operations.batch_analyze(
            request.texts,
            request.user_id,
            await self._callers.caller(context),
            request_id=request.request_id,
            deadline=call_deadline(context, self._default_deadline),
        )
        return operation_to_proto(view)


def operation_to_proto(view: OperationView) -> Any:
    """The google.longrunning.Operation of `view` (AIP-151)."""
    operation = view.operation
    metadata = analysis_pb2.BatchAnalyzeTextsMetadata(
        total_count=operation.total,
        succeeded_count=operation.succeeded,
        failed_count=operation.failed,
        pending_count=operation.pending,
        provider_batch_ids=list(operation.provider_batch_ids),
        model=operation.model,
        user_id=str(operation.user_id),
        cancel_requested=operation.cancel_requested,
    )
    metadata.create_time.FromDatetime(operation.create_time)
    metadata.update_time.FromDatetime(operation.update_time)
    if operation.end_time is not None:
        metadata.end_time.FromDatetime(operation.end_time)
    message = operations_pb2.Operation(name=view.name, done=operation.done)
    message.metadata.Pack(metadata)
    if not operation.done:
        return message
    response = analysis_pb2.BatchAnalyzeTextsResponse(results=[_result(r) for r in view.results])
    if view.cancelled:
        # AIP-151: a cancelled operation ends with CANCELLED; what it finished first is
        # in the status's details.
        details = any_pb2.Any()
        details.Pack(response)
        message.error.CopyFrom(
            status_pb2.Status(
                code=code_pb2.CANCELLED,
                message="the operation was cancelled",
                details=[details],
            )
        )
    else:
        message.response.Pack(response)
    return message


def _result(result: Analysis | ItemError) -> analysis_pb2.BatchAnalyzeTextsResult:
    if isinstance(result, Analysis):
        return analysis_pb2.BatchAnalyzeTextsResult(analysis=to_proto(result))
    return analysis_pb2.BatchAnalyzeTextsResult(error=item_status(result))


def item_status(error: ItemError) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    return status_pb2.Status(code=error.code, message=error.message, details=[info])
