"""Small helpers for asserting on gRPC outcomes."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

import grpc

from tandem_client import errors


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error `call` fails with; fails the test if it succeeds."""
    try:
        result = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"expected an error, got {result!r}")


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of an error, as {field: description}."""
    return {v.field: v.description for v in errors.field_violations(errors.rich_status(error))}


def reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason of an error, if it carries one."""
    from google.rpc import error_details_pb2

    status = errors.rich_status(error)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return None


def trailers(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The trailing metadata of a failed call, as a dict."""
    return dict(cast(Any, error.trailing_metadata()) or ())
