"""One long-lived grpc.aio channel to one target, and the calls made over it.

    async with Connection("users.internal:50051", tls=ClientTls(ca), deadline=2.0) as conn:
        user = await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id=uid))

Every call made through `call` or `stream`

- carries the current request id (`tandem_client.context.request_id_var`) as
  `x-request-id`, and `authorization: Bearer <token>` from the call's `token` or the
  connection's default provider;
- has a deadline: the call's `timeout`, else the connection's `deadline`;
- raises an `RpcError` subclass (tandem_client.errors) when it fails, never a grpc
  error.

The channel balances over every address of the target and retries the idempotent
methods on UNAVAILABLE (tandem_client.services). Make the connection once, on the event
loop that uses it, and share it: a channel multiplexes any number of concurrent calls.

No grpc client interceptors: on grpc.aio each one costs an asyncio task per call, and
this is the hot path of every service that calls another. The metadata is added here
instead, in the awaiting task, and an `observer` (tandem_client.observer), when given,
is told of each call as it begins and ends: metrics and traces, without a dependency here.

With `tls`, the certificate files may rotate: at most every `tls_check_seconds`, a call
compares the files' (mtime_ns, size, inode) with those the channel was made from and,
when they changed, opens a new channel for the calls that follow; the old one is closed
once its calls have finished (at most `old_channel_grace` seconds later, when the ones
still running are cancelled). Stubs from `stub()` and the service properties belong to
the channel current when they were taken: take them at each call, as in the example
above (a dictionary look-up), rather than keeping one for the connection's lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import grpc

from tandem_client.context import NO_REQUEST_ID, REQUEST_ID_KEY, request_id_var
from tandem_client.errors import from_rpc_error
from tandem_client.observer import CallObserver, method_name
from tandem_client.services import SERVICES, channel_options
from tandem_client.tls import ClientTls, FileStamp
from tandem_client.tokens import ServiceAccount, TokenProvider
from tandem_protos.ai.v1 import analysis_pb2_grpc
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2_grpc

if TYPE_CHECKING:
    from tandem_protos.ai.v1.analysis_pb2_grpc import AnalysisServiceAsyncStub
    from tandem_protos.users.v1.auth_pb2_grpc import AuthServiceAsyncStub
    from tandem_protos.users.v1.users_pb2_grpc import UsersServiceAsyncStub

log = logging.getLogger("tandem_client.connection")

AUTHORIZATION_KEY = "authorization"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
StubT = TypeVar("StubT")

Metadata = tuple[tuple[str, str], ...]
_NOTHING_GIVEN: frozenset[str] = frozenset()


class Connection:
    """A channel to `target` (`host:port`, `dns:///name:port`) and the calls over it.

    - `tls`: the CA (and client certificate) to connect with; None for plaintext;
    - `deadline`: seconds a call may take when it names no `timeout` of its own;
    - `token`: the default source of calls' bearer tokens; None sends none. An
      attribute, so it may be set later: `conn.token = conn.service_account(...)`;
    - `tls_check_seconds`: how often (at most) calls look for rotated TLS files;
    - `old_channel_grace`: how long calls on a replaced channel may still run;
    - `services`: the services the target hosts, for the retry policy (all of
      Tandem's by default: naming more does no harm);
    - `options`: more channel options; one named here replaces the default;
    - `observer`: told of every call as it begins and ends (tandem_client.observer).
    """

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTls | None = None,
        deadline: float = 5.0,
        token: TokenProvider | None = None,
        tls_check_seconds: float = 30.0,
        old_channel_grace: float = 60.0,
        services: Sequence[str] = SERVICES,
        options: Sequence[tuple[str, Any]] = (),
        observer: CallObserver | None = None,
    ) -> None:
        self.target = target
        self.observer = observer
        self.tls = tls
        self.deadline = deadline
        self.token = token
        self.tls_check_seconds = tls_check_seconds
        self.old_channel_grace = old_channel_grace
        extra = [*options, *(tls.channel_options() if tls is not None else ())]
        replaced = {key for key, _ in extra}
        self._options = [o for o in channel_options(services) if o[0] not in replaced] + extra
        self._stamp: tuple[FileStamp, ...] = tls.stamp() if tls is not None else ()
        self._channel = self._open()
        self._stubs: dict[object, object] = {}
        self._next_tls_check = time.monotonic() + tls_check_seconds
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"Connection({self.target!r}, tls={self.tls is not None})"

    # --- channel and stubs -------------------------------------------------------------

    @property
    def channel(self) -> grpc.aio.Channel:
        """The current channel, for raw access (health checks, connectivity state)."""
        if self.tls is not None:
            self._check_tls()
        return self._channel

    def stub(self, stub_class: Callable[[grpc.aio.Channel], StubT]) -> StubT:
        """The generated stub (`users_pb2_grpc.UsersServiceStub`) on the current channel.

        Made once per channel and kept: asking again is a dictionary look-up.
        """
        channel = self.channel
        stub = self._stubs.get(stub_class)
        if stub is None:
            stub = self._stubs[stub_class] = stub_class(channel)
        return cast(StubT, stub)

    @property
    def users(self) -> UsersServiceAsyncStub:
        """`users.v1.UsersService` on the current channel."""
        return self.stub(users_pb2_grpc.UsersServiceStub)

    @property
    def auth(self) -> AuthServiceAsyncStub:
        """`users.v1.AuthService` on the current channel."""
        return self.stub(auth_pb2_grpc.AuthServiceStub)

    @property
    def analysis(self) -> AnalysisServiceAsyncStub:
        """`ai.v1.AnalysisService` on the current channel."""
        return self.stub(analysis_pb2_grpc.AnalysisServiceStub)

    # --- calls ---------------------------------------------------------------------------

    async def call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
        token: TokenProvider | str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Resp:
        """Make one unary call: `await conn.call(conn.users.GetUser, request)`.

        `timeout`: seconds, else the connection's deadline. `token`: the bearer token
        (or its provider) for this call, else the connection's; "" sends none.
        `metadata`: more pairs to send; an `x-request-id` or `authorization` among them
        replaces the one the connection would add. Raises an `RpcError` on failure.
        """
        if self.tls is not None:
            self._check_tls()
        sent = await self._metadata(token, metadata)
        timeout = self.deadline if timeout is None else timeout
        if self.observer is None:
            try:
                return await method(request, timeout=timeout, metadata=sent)
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from None
        pairs = list(sent)
        end = self.observer.begin(method_name(method), pairs, stream=False)
        # What a call that neither answers nor fails ends as: the caller gave up on it.
        code = grpc.StatusCode.CANCELLED
        try:
            response = await method(request, timeout=timeout, metadata=tuple(pairs))
            code = grpc.StatusCode.OK
            return response
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise from_rpc_error(error) from None
        finally:
            end(code)

    async def stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
        token: TokenProvider | str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncGenerator[Resp, None]:
        """The responses of one server-streaming call, as `call` makes it:

            async for chunk in conn.stream(conn.analysis.StreamAnalyzeText, request): ...

        The deadline covers the whole stream. A failure, before or between responses,
        raises an `RpcError`; leaving the loop early (break, or closing the generator)
        cancels the call.
        """
        if self.tls is not None:
            self._check_tls()
        sent = await self._metadata(token, metadata)
        end = None
        if self.observer is not None:
            pairs = list(sent)
            end = self.observer.begin(method_name(method), pairs, stream=True)
            sent = tuple(pairs)
        call = method(request, timeout=self.deadline if timeout is None else timeout, metadata=sent)
        code = grpc.StatusCode.CANCELLED
        try:
            async for response in call:
                yield response
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise from_rpc_error(error) from None
        finally:
            call.cancel()  # a no-op once the call has ended
            if end is not None:
                end(code)

    async def _metadata(
        self, token: TokenProvider | str | None, extra: Sequence[tuple[str, str]]
    ) -> Metadata:
        pairs = list(extra)
        given = {key for key, _ in pairs} if pairs else _NOTHING_GIVEN
        request_id = request_id_var.get()
        if request_id != NO_REQUEST_ID and REQUEST_ID_KEY not in given:
            pairs.append((REQUEST_ID_KEY, request_id))
        provider = self.token if token is None else token
        if provider is not None and AUTHORIZATION_KEY not in given:
            value = provider if isinstance(provider, str) else await provider.token()
            if value:
                pairs.append((AUTHORIZATION_KEY, "Bearer " + value))
        return tuple(pairs)

    # --- tokens ----------------------------------------------------------------------------

    def service_account(self, client_id: str, client_secret: str) -> ServiceAccount:
        """A ServiceAccount whose tokens this connection's target (the users service)
        issues: `IssueToken` with the client-credentials grant, sent with no token."""

        async def fetch(request: auth_pb2.IssueTokenRequest) -> auth_pb2.IssueTokenResponse:
            return await self.call(self.auth.IssueToken, request, token="")

        return ServiceAccount(client_id, client_secret, fetch=fetch)

    # --- TLS rotation ----------------------------------------------------------------------

    def _open(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self._options)
        credentials = self.tls.channel_credentials()
        return grpc.aio.secure_channel(self.target, credentials, options=self._options)

    def _check_tls(self) -> None:
        now = time.monotonic()
        if now < self._next_tls_check or self._closed:
            return
        self._next_tls_check = now + self.tls_check_seconds
        assert self.tls is not None
        stamp = self.tls.stamp()
        # A missing file is one being replaced: look again at the next check.
        if stamp == self._stamp or None in stamp:
            return
        try:
            loop = asyncio.get_running_loop()
            channel = self._open()
        except (OSError, RuntimeError) as exc:  # unreadable files, or no loop to close on
            log.warning("TLS files for %s changed but cannot be used yet: %s", self.target, exc)
            return
        old, self._channel, self._stamp = self._channel, channel, stamp
        self._stubs = {}
        log.info("TLS files for %s changed: new channel opened", self.target)
        task = loop.create_task(old.close(self.old_channel_grace))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # --- lifetime --------------------------------------------------------------------------

    async def close(self, grace: float | None = None) -> None:
        """Close the channel: calls still running get `grace` seconds to finish, none by
        default. Channels being replaced get the same `grace`, then are left to close by
        themselves: they take no new calls, and their last ones end by their deadlines."""
        self._closed = True
        retiring = list(self._retiring)
        await self._channel.close(grace)
        if retiring:
            _, pending = await asyncio.wait(retiring, timeout=grace or 0)
            for task in pending:
                task.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
