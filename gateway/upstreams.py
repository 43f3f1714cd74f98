"""The two upstreams: one long-lived grpc.aio channel each, deadlines, errors as problems.

Each channel is opened once, in the app's lifespan, and shared by every request. Its
service config balances calls over every address the target resolves to (`round_robin`,
so several replicas share the load and a dead one is skipped) and retries the
idempotent methods on UNAVAILABLE; calls that change state are never retried by the
channel. Calls do not wait for a connection (no `wait_for_ready`): an unreachable
upstream fails fast with UNAVAILABLE (503), a silent one at its deadline (504).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.problems import ProblemError
from gateway.settings import GatewaySettings
from servicekit.errors import HTTP_STATUS_BY_GRPC_CODE, decode_details, field_violations
from servicekit.interceptor import REQUEST_ID_KEY
from servicekit.logs import request_id_var
from tandem_client import ClientTls, ServiceAccount, TokenProvider, services
from tandem_client.services import channel_options
from tandem_protos.ai.v1 import analysis_pb2_grpc
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2_grpc

log = logging.getLogger(__name__)

# The services, their idempotent methods and the channel options: tandem_client.services.
USERS_SERVICE = services.USERS_SERVICE
AUTH_SERVICE = services.AUTH_SERVICE
AI_SERVICE = services.AI_SERVICE

# The generated async stub types exist only for type checkers.
if TYPE_CHECKING:
    UsersStub = users_pb2_grpc.UsersServiceAsyncStub
    UsersAuthStub = auth_pb2_grpc.AuthServiceAsyncStub
    AiStub = analysis_pb2_grpc.AnalysisServiceAsyncStub
else:
    UsersStub = users_pb2_grpc.UsersServiceStub
    UsersAuthStub = auth_pb2_grpc.AuthServiceStub
    AiStub = analysis_pb2_grpc.AnalysisServiceStub

_UNEXPECTED = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
StubT = TypeVar("StubT")


class UpstreamError(ProblemError):
    """A failed upstream call, as the problem it becomes; keeps the gRPC code and reason."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        grpc_code: grpc.StatusCode,
        reason: str | None,
        errors: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            status, detail, code=grpc_code, errors=errors, headers=headers, reason=reason
        )
        self.grpc_code = grpc_code


def rpc_problem(error: grpc.aio.AioRpcError, upstream: str) -> UpstreamError:
    """The problem a failed call to `upstream` ("users", "ai") becomes.

    The detail is the upstream's own message when it sent rich details (our services
    compose those for clients); otherwise, and for every unexpected fault, a generic
    one: transport errors and tracebacks never reach the client.
    """
    code = error.code()
    trailers = cast(Sequence[tuple[str, str | bytes]], tuple(error.trailing_metadata() or ()))
    status = decode_details(trailers)
    headers = {}
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        for key, value in trailers:
            if key == "retry-after" and isinstance(value, str) and value.isdigit():
                headers["Retry-After"] = value
    errors = [(rest_field(v.field), v.description) for v in field_violations(status)]
    return UpstreamError(
        HTTP_STATUS_BY_GRPC_CODE.get(code, 500),
        _detail(code, status, upstream),
        grpc_code=code,
        reason=_reason(status),
        errors=errors,
        headers=headers,
    )


def deadline_exceeded(upstream: str) -> UpstreamError:
    """The problem of a call to `upstream` that ran out of time."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    return UpstreamError(
        HTTP_STATUS_BY_GRPC_CODE[code], _detail(code, None, upstream), grpc_code=code, reason=None
    )


def rest_field(field: str) -> str:
    """A request field path of the gRPC API as the REST API names it (`user.email`)."""
    return field.removeprefix("user.")


# Details for statuses that came without a message of our services (from grpc itself).
_GENERIC_DETAILS: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the {upstream} service is unavailable; retry shortly",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the {upstream} service did not answer in time",
    grpc.StatusCode.UNIMPLEMENTED: "the {upstream} service does not support this call",
    grpc.StatusCode.CANCELLED: "the call to the {upstream} service was cancelled",
}


def _detail(code: grpc.StatusCode, status: status_pb2.Status | None, upstream: str) -> str:
    if code in _UNEXPECTED:
        return f"the {upstream} service failed unexpectedly; quote the request id to report it"
    if status is not None and status.message:
        return str(status.message)
    template = _GENERIC_DETAILS.get(code, "the {upstream} service refused the call ({code})")
    return template.format(upstream=upstream, code=code.name)


def _reason(status: status_pb2.Status | None) -> str | None:
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return None


def call_metadata(authorization: str | None = None) -> tuple[tuple[str, str], ...]:
    """What every upstream call carries: the current request's id, and the caller's
    `authorization` when the call acts for it."""
    if authorization is None:
        return ((REQUEST_ID_KEY, request_id_var.get()),)
    return ((REQUEST_ID_KEY, request_id_var.get()), ("authorization", authorization))


def _open_channel(
    target: str, options: list[tuple[str, Any]], tls: ClientTls | None
) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(
        target, tls.channel_credentials(), options=[*options, *tls.channel_options()]
    )


class Upstream(Generic[StubT]):
    """One upstream service: its channel, its generated stub, its default deadline."""

    def __init__(
        self,
        name: str,
        service: str,
        target: str,
        stub: Callable[[grpc.aio.Channel], StubT],
        deadline: float,
        *,
        channel: grpc.aio.Channel | None = None,
        channel_services: Sequence[str] = (),
        service_token: TokenProvider | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """`channel`: share another upstream's; else one is opened, configured for
        `channel_services` (by default `service` alone). `service_token`: the
        gateway's own token, for calls that act for no user."""
        self.name = name
        self.service = service
        self.target = target
        self.deadline = deadline
        self.channel = channel or _open_channel(
            target, channel_options(channel_services or [service]), tls
        )
        self.stub: StubT = stub(self.channel)
        self.service_token = service_token
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        deadline: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        authorization: str | None = None,
    ) -> Resp:
        """Make one unary call (within `deadline` seconds, else the upstream's default),
        carrying `metadata`, else the current request's id and `authorization`: the
        caller's, forwarded; None for the gateway's own service token; "" for none.

        A failure raises the UpstreamError it stands for.
        """
        timeout = self.deadline if deadline is None else deadline
        try:
            if metadata is None:
                if authorization is None and self.service_token is not None:
                    authorization = "Bearer " + await self.service_token.token()
                metadata = call_metadata(authorization or None)
            return await method(request, timeout=timeout, metadata=tuple(metadata))
        except grpc.aio.AioRpcError as error:
            raise rpc_problem(error, self.name) from None

    async def health(self, deadline: float) -> str:
        """The service's grpc.health.v1 status (`SERVING`…), or why it has none."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=self.service), timeout=deadline
            )
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self.channel.close(grace=None)


class Upstreams:
    """Both upstreams; open in the lifespan (on the serving loop), close at shutdown."""

    def __init__(self, settings: GatewaySettings) -> None:
        tls = settings.client_tls()
        self.users = Upstream(
            "users",
            USERS_SERVICE,
            settings.users_target,
            users_pb2_grpc.UsersServiceStub,
            settings.users_deadline_seconds,
            channel_services=(USERS_SERVICE, AUTH_SERVICE),
            tls=tls,
        )
        # The users service's identity provider, on the same channel.
        self.auth = Upstream(
            "users",
            AUTH_SERVICE,
            settings.users_target,
            auth_pb2_grpc.AuthServiceStub,
            settings.users_deadline_seconds,
            channel=self.users.channel,
        )
        self.ai = Upstream(
            "ai",
            AI_SERVICE,
            settings.ai_target,
            analysis_pb2_grpc.AnalysisServiceStub,
            settings.ai_deadline_seconds,
            tls=tls,
        )
        self.service_account = ServiceAccount(
            settings.client_id, settings.service_secret(), fetch=self._issue_service_token
        )
        for upstream in (self.users, self.auth, self.ai):
            upstream.service_token = self.service_account
        log.info(
            "upstreams: users at %s, ai at %s (%s); acting as service account %s",
            settings.users_target,
            settings.ai_target,
            "plaintext" if tls is None else "mTLS" if tls.cert_file else "TLS",
            settings.client_id,
        )

    async def _issue_service_token(
        self, request: auth_pb2.IssueTokenRequest
    ) -> auth_pb2.IssueTokenResponse:
        # The client-credentials grant is its own credential: no token is sent.
        try:
            return await self.auth.call(self.auth.stub.IssueToken, request, authorization="")
        except UpstreamError as exc:
            if exc.grpc_code != grpc.StatusCode.UNAUTHENTICATED:
                raise
            # The gateway's own credential is refused: its fault, not the client's.
            log.error(
                "the users service refused the gateway's service account %s (%s): "
                "check GATEWAY_CLIENT_ID and its secret",
                request.client_credentials.client_id,
                exc.reason,
            )
            raise ProblemError(
                503, "the gateway cannot authenticate to its upstreams; retry later"
            ) from None

    async def close(self) -> None:
        await self.users.close()
        await self.ai.close()
