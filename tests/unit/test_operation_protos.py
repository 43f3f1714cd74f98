"""An operation as google.longrunning.Operation (AIP-151), and back through the gateway's
JSON: running, done, cancelled, with per-text errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.rpc import error_details_pb2

from ai_service.batches import cancelled_error
from ai_service.domain import Analysis, AnalysisResult, Sentiment, Usage
from ai_service.operations import OperationView
from ai_service.operations_repository import ItemError, Operation
from ai_service.operations_servicer import operation_to_proto
from gateway import convert
from gateway.schemas import Operation as OperationJson
from tandem_protos.ai.v1 import analysis_pb2

NOW = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)
USER = uuid.uuid4()
ANALYSIS = Analysis(
    id=uuid.uuid4(),
    user_id=USER,
    result=AnalysisResult(
        summary="Loud.",
        sentiment=Sentiment.MIXED,
        key_points=("loud",),
        confidence=0.7,
        model="claude-x",
        usage=Usage(input_tokens=10, output_tokens=5, service_tier="batch"),
    ),
    create_time=NOW,
)
EXPIRED = ItemError(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "PROVIDER_BATCH_EXPIRED", "late")


def operation(**changes: object) -> Operation:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "user_id": USER,
        "model": "claude-x",
        "total": 2,
        "provider_batch_ids": ("msgbatch_1",),
        "cancel_requested": False,
        "done": False,
        "create_time": NOW,
        "update_time": NOW + timedelta(seconds=5),
        "end_time": None,
        **changes,
    }
    return Operation(**values)  # type: ignore[arg-type]


def metadata_of(message: object) -> analysis_pb2.BatchAnalyzeTextsMetadata:
    metadata = analysis_pb2.BatchAnalyzeTextsMetadata()
    assert message.metadata.Unpack(metadata)  # type: ignore[attr-defined]
    return metadata


def test_a_running_operation_has_metadata_and_no_result() -> None:
    running = operation(succeeded=1)
    message = operation_to_proto(OperationView(running))
    assert message.name == f"operations/{running.id}"
    assert not message.done
    assert message.WhichOneof("result") is None
    metadata = metadata_of(message)
    assert (metadata.total_count, metadata.succeeded_count, metadata.pending_count) == (2, 1, 1)
    assert list(metadata.provider_batch_ids) == ["msgbatch_1"]
    assert metadata.user_id == str(USER)
    assert not metadata.HasField("end_time")
    OperationJson.model_validate(convert.operation(message))


def test_a_done_operation_names_each_result_in_order_with_item_errors() -> None:
    done = operation(done=True, end_time=NOW, succeeded=1, failed=1)
    message = operation_to_proto(OperationView(done, (ANALYSIS, EXPIRED)))
    response = analysis_pb2.BatchAnalyzeTextsResponse()
    assert message.response.Unpack(response)
    first, second = response.results
    assert first.analysis.id == str(ANALYSIS.id)
    assert first.analysis.usage.service_tier == "batch"
    assert second.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    info = error_details_pb2.ErrorInfo()
    assert second.error.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("PROVIDER_BATCH_EXPIRED", "tandem")
    body = convert.operation(message)
    OperationJson.model_validate(body)
    assert body["error"] is None
    assert body["response"]["results"][1]["error"] == {
        "code": 4,
        "status": "DEADLINE_EXCEEDED",
        "reason": "PROVIDER_BATCH_EXPIRED",
        "message": "late",
    }


def test_a_cancelled_operation_ends_in_cancelled_with_what_it_finished() -> None:
    done = operation(done=True, end_time=NOW, cancel_requested=True, succeeded=1, failed=1)
    message = operation_to_proto(OperationView(done, (ANALYSIS, cancelled_error())))
    assert message.WhichOneof("result") == "error"
    assert message.error.code == grpc.StatusCode.CANCELLED.value[0]
    response = analysis_pb2.BatchAnalyzeTextsResponse()
    assert message.error.details[0].Unpack(response)
    assert response.results[0].analysis.id == str(ANALYSIS.id)
    body = convert.operation(message)
    OperationJson.model_validate(body)
    assert (body["response"], body["error"]["status"]) == (None, "CANCELLED")
    assert body["error"]["results"][1]["error"]["reason"] == "OPERATION_CANCELLED"


def test_cancel_requested_but_finished_anyway_is_a_response() -> None:
    done = operation(done=True, end_time=NOW, cancel_requested=True, succeeded=1, total=1)
    message = operation_to_proto(OperationView(done, (ANALYSIS,)))
    assert message.WhichOneof("result") == "response"
    assert metadata_of(message).cancel_requested
