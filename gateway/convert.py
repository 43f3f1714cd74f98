"""Protobuf messages as the JSON the REST API returns, serialised once with orjson.

Routes return these bytes in a plain Response: FastAPI then skips its own validation
and serialisation, which would cost more than the upstream call's decoding. The shapes
match the models in `gateway.schemas`, which document them; tests hold the two together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from starlette.responses import Response

from tandem_protos.ai.v1 import analysis_pb2
from tandem_protos.users.v1 import users_pb2

_SENTIMENTS: Mapping[int, str] = {
    analysis_pb2.SENTIMENT_POSITIVE: "positive",
    analysis_pb2.SENTIMENT_NEGATIVE: "negative",
    analysis_pb2.SENTIMENT_NEUTRAL: "neutral",
    analysis_pb2.SENTIMENT_MIXED: "mixed",
}


class UpstreamContractError(Exception):
    """An upstream answered something its contract rules out (a bug there, a 500 here)."""


def timestamp(value: Timestamp) -> str:
    return value.ToJsonString()


_ROLES: Mapping[int, str] = {users_pb2.ROLE_USER: "user", users_pb2.ROLE_ADMIN: "admin"}


def user(message: users_pb2.User) -> dict[str, Any]:
    """The account as the users service let the caller see it: in full, or its profile."""
    if message.view != users_pb2.USER_VIEW_FULL:
        return {"id": message.id, "name": message.name}
    content = {
        "id": message.id,
        "email": message.email,
        "name": message.name,
        "role": _ROLES.get(message.role, "user"),
        "created_at": message.create_time.ToJsonString(),
        "updated_at": message.update_time.ToJsonString(),
    }
    if message.HasField("delete_time"):
        content["deleted_at"] = message.delete_time.ToJsonString()
    return content


def analysis(message: analysis_pb2.Analysis) -> dict[str, Any]:
    sentiment = _SENTIMENTS.get(message.sentiment)
    if sentiment is None:
        raise UpstreamContractError(f"analysis {message.id} has no sentiment")
    return {
        "id": message.id,
        "user_id": message.user_id,
        "summary": message.summary,
        "sentiment": sentiment,
        "key_points": list(message.key_points),
        "confidence": message.confidence,
        "model": message.model,
        "cached": message.cached,
        "usage": {
            "input_tokens": message.usage.input_tokens,
            "output_tokens": message.usage.output_tokens,
            "cache_read_input_tokens": message.usage.cache_read_input_tokens,
            "cache_creation_input_tokens": message.usage.cache_creation_input_tokens,
        },
        "created_at": message.create_time.ToJsonString(),
    }


def partial(message: analysis_pb2.PartialAnalysis) -> dict[str, Any]:
    return {
        "summary": message.summary,
        "sentiment": _SENTIMENTS.get(message.sentiment),
        "key_points": list(message.key_points),
    }


def etag_header(etag: str) -> dict[str, str]:
    return {"ETag": f'"{etag}"'} if etag else {}


def json_response(
    content: Any, *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


_STATUS_NAMES: Mapping[int, str] = {c.value[0]: c.name for c in grpc.StatusCode}


def operation(message: Any) -> dict[str, Any]:
    """A google.longrunning.Operation of BatchAnalyzeTexts as gateway.schemas.Operation."""
    metadata = analysis_pb2.BatchAnalyzeTextsMetadata()
    if not message.metadata.Unpack(metadata):
        raise UpstreamContractError(f"operation {message.name} has no batch metadata")
    content: dict[str, Any] = {
        "name": message.name,
        "id": message.name.removeprefix("operations/"),
        "done": message.done,
        "metadata": {
            "total_count": metadata.total_count,
            "succeeded_count": metadata.succeeded_count,
            "failed_count": metadata.failed_count,
            "pending_count": metadata.pending_count,
            "provider_batch_ids": list(metadata.provider_batch_ids),
            "model": metadata.model,
            "user_id": metadata.user_id,
            "cancel_requested": metadata.cancel_requested,
            "created_at": metadata.create_time.ToJsonString(),
            "updated_at": metadata.update_time.ToJsonString(),
            "ended_at": metadata.end_time.ToJsonString() if metadata.HasField("end_time") else None,
        },
        "response": None,
        "error": None,
    }
    response = analysis_pb2.BatchAnalyzeTextsResponse()
    outcome = message.WhichOneof("result")
    if outcome == "response" and message.response.Unpack(response):
        content["response"] = {"results": [_batch_result(r) for r in response.results]}
    elif outcome == "error":
        # A cancelled batch: what it finished first is in the status's details.
        results = []
        if message.error.details and message.error.details[0].Unpack(response):
            results = [_batch_result(r) for r in response.results]
        content["error"] = {
            "code": message.error.code,
            "status": _STATUS_NAMES.get(message.error.code, "UNKNOWN"),
            "message": message.error.message,
            "results": results,
        }
    return content


def _batch_result(result: analysis_pb2.BatchAnalyzeTextsResult) -> dict[str, Any]:
    if result.WhichOneof("result") == "analysis":
        return {"analysis": analysis(result.analysis), "error": None}
    info = error_details_pb2.ErrorInfo()
    reason = info.reason if result.error.details and result.error.details[0].Unpack(info) else ""
    return {
        "analysis": None,
        "error": {
            "code": result.error.code,
            "status": _STATUS_NAMES.get(result.error.code, "UNKNOWN"),
            "reason": reason,
            "message": result.error.message,
        },
    }
