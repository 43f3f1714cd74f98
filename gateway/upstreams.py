"""The two upstreams: one long-lived grpc.aio channel each, deadlines, errors as problems.

Each channel is opened once, in the app's lifespan, and shared by every request. Its
service config balances calls over every address the target resolves to (`round_robin`,
so several replicas share the load and a dead one is skipped) and retries the
idempotent methods on UNAVAILABLE; calls that change state are never retried by the
channel. Calls do not wait for a connection (no `wait_for_ready`): an unreachable
upstream fails fast with UNAVAILABLE (503), a silent one at its deadline (504).
"""

from __future__ import annotations

import json
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
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc

log = logging.getLogger(__name__)

USERS_SERVICE = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name
AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
AI_SERVICE = analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name

# Methods marked `idempotency_level = NO_SIDE_EFFECTS` in the protos: safe to send twice.
IDEMPOTENT_METHODS: Mapping[str, Sequence[str]] = {
    USERS_SERVICE: ("GetUser", "BatchGetUsers", "ListUsers"),
    AUTH_SERVICE: ("GetJsonWebKeySet", "BatchGetSessions"),
    AI_SERVICE: ("GetAnalysis", "ListAnalyses"),
}
RETRY_POLICY: Mapping[str, Any] = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

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


def service_config(services: Sequence[str]) -> str:
    """The channel's service config: round_robin, and retries for the idempotent methods."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": m}
                    for service in services
                    for m in IDEMPOTENT_METHODS[service]
                ],
                "retryPolicy": RETRY_POLICY,
            }
        ],
    }
    return json.dumps(config)


def channel_options(services: Sequence[str]) -> list[tuple[str, Any]]:
    return [
        ("grpc.service_config", service_config(services)),
        # Ours, not one a DNS TXT record might carry.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        # Ping idle connections so a dead peer is noticed (the services allow pings
        # every 10 s or more without calls).
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect to a restarted upstream within seconds, not grpc's default 2 minutes.
        # (Not `grpc.min_reconnect_backoff_ms`: it is also the connect timeout, 20 s.)
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 3_000),
    ]


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
    ) -> None:
        """`channel`: share another upstream's; else one is opened, configured for
        `channel_services` (by default `service` alone)."""
        self.name = name
        self.service = service
        self.target = target
        self.deadline = deadline
        self.channel = channel or grpc.aio.insecure_channel(
            target, options=channel_options(channel_services or [service])
        )
        self.stub: StubT = stub(self.channel)
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
        carrying `metadata`, else the current request's id (and `authorization`).

        A failure raises the UpstreamError it stands for.
        """
        timeout = self.deadline if deadline is None else deadline
        try:
            return await method(
                request,
                timeout=timeout,
                metadata=call_metadata(authorization) if metadata is None else tuple(metadata),
            )
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
        self.users = Upstream(
            "users",
            USERS_SERVICE,
            settings.users_target,
            users_pb2_grpc.UsersServiceStub,
            settings.users_deadline_seconds,
            channel_services=(USERS_SERVICE, AUTH_SERVICE),
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
        )
        log.info("upstreams: users at %s, ai at %s", settings.users_target, settings.ai_target)

    async def close(self) -> None:
        await self.users.close()
        await self.ai.close()
