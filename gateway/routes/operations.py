"""Batches: `POST /v1/analyses:batchAnalyze` starts one, `/v1/operations` reads, lists
and cancels the caller's (the ai service's google.longrunning operations, AIP-151)."""

from __future__ import annotations

import uuid

from fastapi import Response
from google.longrunning import operations_pb2

from gateway import convert
from gateway.deps import AiUpstream, CurrentUser, OperationsUpstream, PageSize, PageToken
from gateway.idempotency import IdempotencyKey, call_keyed, request_id_for
from gateway.problems import problem_responses
from gateway.routes import resource_router
from gateway.schemas import BatchAnalysisCreate, Operation, OperationPage
from gateway.upstreams import OperationsStub, Upstream
from tandem_protos.ai.v1 import analysis_pb2

_AUTHED = (401, 503, 504)

router = resource_router()


# Started on the analyses' collection (an AIP-136 custom method), read as an operation.
@router.post(
    "/v1/analyses:batchAnalyze",
    tags=["analyses"],
    status_code=202,
    response_model=Operation,
    summary="Analyse many texts in the background",
    description=(
        "Starts a batch (with Claude, at half the price, within 24 hours) and answers at "
        "once with its operation; `GET /v1/operations/{id}` follows it. Each text is "
        "checked as POST /v1/analyses checks one: a bad one refuses the whole request, "
        "naming `texts[i]`. A retry with the same `Idempotency-Key` answers the first "
        "request's operation."
    ),
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problem_responses(400, *_AUTHED, 409, 413, 415, 422, 429),
    },
)
async def batch_analyze(
    body: BatchAnalysisCreate,
    caller: CurrentUser,
    ai: AiUpstream,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    request = analysis_pb2.BatchAnalyzeTextsRequest(
        texts=body.texts, request_id=request_id_for(idempotency_key)
    )
    started = await call_keyed(
        ai, ai.stub.BatchAnalyzeTexts, request, authorization=caller.authorization
    )
    content = convert.operation(started)
    headers = {"Location": f"/v1/operations/{content['id']}"}
    return convert.json_response(content, status_code=202, headers=headers)


@router.get(
    "/v1/operations/{id}",
    tags=["operations"],
    response_model=Operation,
    summary="One of the caller's batches",
    description="`done` once every text has its analysis or its error.",
    responses=problem_responses(400, *_AUTHED, 404),
)
async def get_operation(id: uuid.UUID, caller: CurrentUser, ops: OperationsUpstream) -> Response:
    # The ai service decides: another user's operation is NOT_FOUND there.
    return await _operation_as_it_is(ops, f"operations/{id}", caller.authorization)


@router.get(
    "/v1/operations",
    tags=["operations"],
    response_model=OperationPage,
    summary="The caller's batches, newest first",
    responses=problem_responses(400, *_AUTHED),
)
async def list_operations(
    caller: CurrentUser,
    ops: OperationsUpstream,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> Response:
    request = operations_pb2.ListOperationsRequest(
        name="operations", page_size=page_size or 0, page_token=page_token or ""
    )
    page = await ops.call(ops.stub.ListOperations, request, authorization=caller.authorization)
    content = {
        "operations": [convert.operation(o) for o in page.operations],
        "next_page_token": page.next_page_token,
    }
    return convert.json_response(content)


@router.post(
    "/v1/operations/{id}:cancel",
    tags=["operations"],
    response_model=Operation,
    summary="Cancel one of the caller's batches",
    description=(
        "Asks the batch to stop, and answers it as it is then. It ends (`done`, with an "
        "`error` CANCELLED listing what was finished) once the provider has stopped; a "
        "finished batch is not changed."
    ),
    responses=problem_responses(400, *_AUTHED, 404),
)
async def cancel_operation(id: uuid.UUID, caller: CurrentUser, ops: OperationsUpstream) -> Response:
    name = f"operations/{id}"
    await ops.call(
        ops.stub.CancelOperation,
        operations_pb2.CancelOperationRequest(name=name),
        authorization=caller.authorization,
    )
    return await _operation_as_it_is(ops, name, caller.authorization)


async def _operation_as_it_is(
    ops: Upstream[OperationsStub], name: str, authorization: str
) -> Response:
    found = await ops.call(
        ops.stub.GetOperation,
        operations_pb2.GetOperationRequest(name=name),
        authorization=authorization,
    )
    return convert.json_response(convert.operation(found))
