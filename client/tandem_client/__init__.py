"""Tandem's Python client: typed calls to the users and ai services.

    from tandem_client import ClientTls, Connection, NotFound
    from tandem_protos.users.v1 import users_pb2

    async with Connection("users:50051", tls=ClientTls(Path("ca.pem"))) as conn:
        conn.token = conn.service_account("billing", secret)
        try:
            user = await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id=uid))
        except NotFound as error:
            ...

`Connection` (connection.py) is one long-lived channel to one target; `ClientTls`
(tls.py) its TLS files; `StaticToken` and `ServiceAccount` (tokens.py) where its calls'
bearer tokens come from; `CallObserver` (observer.py) a hook on every call, for metrics
and traces; `RpcError` and its subclasses (errors.py) what failed calls
raise; `request_id_var` (context.py) the request id every call carries; services.py the
services and the methods safe to retry. The generated messages and stubs are the
`tandem_protos` package, installed with this one.
"""

from __future__ import annotations

from tandem_client.connection import Connection
from tandem_client.context import CLIENT_ADDRESS_KEY, REQUEST_ID_KEY, request_id_var
from tandem_client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RpcError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_rpc_error,
)
from tandem_client.observer import CallEnd, CallObserver
from tandem_client.services import AI_SERVICE, AUTH_SERVICE, IDEMPOTENT_METHODS, USERS_SERVICE
from tandem_client.tls import ClientTls
from tandem_client.tokens import ServiceAccount, StaticToken, TokenProvider

__all__ = [
    "AI_SERVICE",
    "AUTH_SERVICE",
    "CLIENT_ADDRESS_KEY",
    "IDEMPOTENT_METHODS",
    "REQUEST_ID_KEY",
    "USERS_SERVICE",
    "Aborted",
    "AlreadyExists",
    "CallEnd",
    "CallObserver",
    "Cancelled",
    "ClientTls",
    "Connection",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RpcError",
    "ServiceAccount",
    "StaticToken",
    "TokenProvider",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
    "request_id_var",
]
