"""The two upstreams, as the routes call them: connections that raise HTTP problems.

A `tandem_client.Connection` per target does the gRPC side: one long-lived channel
(opened in the app's lifespan, shared by every request) balancing over every address
the target resolves to and retrying the idempotent methods on UNAVAILABLE and
CANCELLED; TLS, and a new channel when the client certificate files rotate; the
request id and bearer token every call carries; deadlines; failures raised as
`tandem_client.RpcError`. The users target's connection carries UsersService and
AuthService, the ai target's AnalysisService. What is left here: the gateway's service
account, each failure raised as the problem it becomes (gateway.upstream_errors), and
the health checks of /readyz.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
from google.longrunning import operations_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.problems import ProblemError
from gateway.settings import GatewaySettings
from gateway.upstream_errors import UpstreamError, rpc_problem
from servicekit.observers import UpstreamObserver
from tandem_client import Connection, RpcError, ServiceAccount, services
from tandem_protos.ai.v1 import analysis_pb2_grpc
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2_grpc

log = logging.getLogger(__name__)

USERS_SERVICE = services.USERS_SERVICE
AUTH_SERVICE = services.AUTH_SERVICE
AI_SERVICE = services.AI_SERVICE
OPERATIONS_SERVICE = services.OPERATIONS_SERVICE

# How often (at most) calls look for rotated TLS files (tandem_client.Connection).
TLS_CHECK_SECONDS = 30.0

# The generated async stub types exist only for type checkers.
if TYPE_CHECKING:
    UsersStub = users_pb2_grpc.UsersServiceAsyncStub
    UsersAuthStub = auth_pb2_grpc.AuthServiceAsyncStub
    AiStub = analysis_pb2_grpc.AnalysisServiceAsyncStub
    # googleapis-common-protos ships no stub types.
    OperationsStub = Any
else:
    UsersStub = users_pb2_grpc.UsersServiceStub
    UsersAuthStub = auth_pb2_grpc.AuthServiceStub
    AiStub = analysis_pb2_grpc.AnalysisServiceStub
    OperationsStub = operations_pb2_grpc.OperationsStub

_AUTHORIZATION = "authorization"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
StubT = TypeVar("StubT")


class Upstream(Generic[StubT]):
    """One service on an upstream `Connection` (or on a plaintext one of its own to a
    target): its stub, taken from the connection at each call since a TLS rotation
    swaps the channel; its default deadline; its health."""

    def __init__(
        self,
        name: str,
        service: str,
        connection: Connection,
        stub: Callable[[grpc.aio.Channel], StubT],
        deadline: float | None = None,
    ) -> None:
        """`name` ("users", "ai") is what problems call it; `deadline`, the
        connection's unless given."""
        self.name = name
        self.service = service
        self.connection = connection
        self.deadline = connection.deadline if deadline is None else deadline
        self._stub = stub

    @property
    def stub(self) -> StubT:
        """The service's stub on the connection's current channel."""
        return self.connection.stub(self._stub)

    async def call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        deadline: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        authorization: str | None = None,
    ) -> Resp:
        """Make one unary call (within `deadline` seconds, else the upstream's default).

        It carries `metadata`, and the current request's id and an `authorization`
        unless `metadata` holds them: `authorization`, the caller's ("Bearer …"),
        forwarded; None for the gateway's own service token (the connection's); ""
        for none. A failure raises the UpstreamError it stands for.
        """
        token, metadata = _credentials(authorization, metadata)
        try:
            return await self.connection.call(
                method,
                request,
                timeout=self.deadline if deadline is None else deadline,
                token=token,
                metadata=metadata,
            )
        except RpcError as error:
            raise rpc_problem(error, self.name) from None

    async def stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[Req, Resp],
        request: Req,
        *,
        deadline: float | None = None,
        authorization: str | None = None,
    ) -> AsyncGenerator[Resp, None]:
        """The responses of one server-streaming call, made as `call` makes one; the
        deadline covers the whole stream. A failure, before or between responses,
        raises its UpstreamError; closing the generator cancels the call."""
        token, metadata = _credentials(authorization, ())
        responses = self.connection.stream(
            method,
            request,
            timeout=self.deadline if deadline is None else deadline,
            token=token,
            metadata=metadata,
        )
        try:
            async for response in responses:
                yield response
        except RpcError as error:
            raise rpc_problem(error, self.name) from None
        finally:
            await responses.aclose()

    async def health(self, deadline: float) -> str:
        """The service's grpc.health.v1 status (`SERVING`…), or why it has none."""
        health = self.connection.stub(health_pb2_grpc.HealthStub)
        try:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=self.service), timeout=deadline
            )
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self.connection.close()


def _credentials(
    authorization: str | None, metadata: Sequence[tuple[str, str]]
) -> tuple[str | None, Sequence[tuple[str, str]]]:
    """Connection's `token` and `metadata` for a call's `authorization` (Upstream.call)."""
    if authorization:  # the caller's, forwarded as it came
        return "", (*metadata, (_AUTHORIZATION, authorization))
    return authorization, metadata  # None: the connection's token; "": none


class Upstreams:
    """Both upstreams; open in the lifespan (on the serving loop), close at shutdown."""

    def __init__(self, settings: GatewaySettings) -> None:
        tls = settings.client_tls()
        users = Connection(
            settings.users_target,
            tls=tls,
            deadline=settings.users_deadline_seconds,
            services=(USERS_SERVICE, AUTH_SERVICE),
            tls_check_seconds=TLS_CHECK_SECONDS,
            observer=UpstreamObserver("users", settings.users_target),
        )
        ai = Connection(
            settings.ai_target,
            tls=tls,
            deadline=settings.ai_deadline_seconds,
            services=(AI_SERVICE, OPERATIONS_SERVICE),
            tls_check_seconds=TLS_CHECK_SECONDS,
            observer=UpstreamObserver("ai", settings.ai_target),
        )
        self.users = Upstream("users", USERS_SERVICE, users, users_pb2_grpc.UsersServiceStub)
        # The users service's identity provider, on the same connection.
        self.auth = Upstream("users", AUTH_SERVICE, users, auth_pb2_grpc.AuthServiceStub)
        self.ai = Upstream("ai", AI_SERVICE, ai, analysis_pb2_grpc.AnalysisServiceStub)
        # The ai service's long-running operations, on the same connection.
        self.operations = Upstream("ai", OPERATIONS_SERVICE, ai, operations_pb2_grpc.OperationsStub)
        # The token of calls that act for no user, on both connections.
        self.service_account = ServiceAccount(
            settings.client_id, settings.service_secret(), fetch=self._issue_service_token
        )
        users.token = ai.token = self.service_account
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
