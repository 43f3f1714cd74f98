"""tandem_client.Connection against real servers on real ports.

The generic behaviour (deadlines, retries, metadata, tokens, streams, TLS) runs against
bare grpc.aio servers whose handlers each test writes by hand; the error decoding
against a real users server.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from google.protobuf import descriptor_pool, message_factory

from servicekit import errors as server_errors
from servicekit.server import Service, build_server
from tandem_client import (
    AUTH_SERVICE,
    USERS_SERVICE,
    Cancelled,
    ClientTls,
    Connection,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceAccount,
    StaticToken,
    Unauthenticated,
    Unavailable,
    request_id_var,
)
from tandem_client.services import AI_SERVICE, is_idempotent
from tandem_protos.ai.v1 import analysis_pb2
from tandem_protos.users.v1 import auth_pb2, users_pb2, users_pb2_grpc
from tests.support.servers import migrate_users, running_users, users_settings
from tests.support.tokens import service_token

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


def service(name: str, **behaviors: Behavior) -> grpc.GenericRpcHandler[Any, Any]:
    """A generic handler for the methods of the proto service `name`, by hand."""
    descriptor = descriptor_pool.Default().FindServiceByName(name)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method, behavior in behaviors.items():
        rpc = descriptor.methods_by_name[method]
        request = message_factory.GetMessageClass(rpc.input_type)
        response = message_factory.GetMessageClass(rpc.output_type)
        make = (
            grpc.unary_stream_rpc_method_handler
            if rpc.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method] = make(
            behavior,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(name, handlers)


@asynccontextmanager
async def bare_server(
    *handlers: grpc.GenericRpcHandler[Any, Any],
    credentials: grpc.ServerCredentials | None = None,
    port: int = 0,
) -> AsyncIterator[str]:
    """A started grpc.aio server with only `handlers` on `port` (0: any free one); yields
    its address."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    if credentials is None:
        port = server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        port = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@dataclass
class Seen:
    """What a handler saw: the invocation metadata of each call, in order."""

    calls: list[dict[str, str]] = field(default_factory=list)

    def record(self, context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.calls.append(metadata)
        return metadata


def a_user(user_id: str = "u1") -> users_pb2.User:
    return users_pb2.User(id=user_id, email="ada@example.com", name="Ada")


async def reach(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity) -> None:
    """Return once `channel` is in the `wanted` state."""
    state = channel.get_state()
    while state is not wanted:
        await channel.wait_for_state_change(state)
        state = channel.get_state()


async def shut_down(channel: grpc.aio.Channel) -> None:
    """Return once `channel` is closed."""
    await reach(channel, grpc.ChannelConnectivity.SHUTDOWN)


# --- a real users service ---------------------------------------------------------------


@pytest.fixture
async def users_address(sqlite_url: str) -> AsyncIterator[str]:
    await migrate_users(sqlite_url)
    async with running_users(users_settings(sqlite_url)) as address:
        yield address


# The users service needs an access token for most calls: these are the calls that
# succeed, or fail, before one matters.


async def test_a_call_returns_the_typed_response(users_address: str) -> None:
    async with Connection(users_address) as conn:
        jwks = await conn.call(conn.auth.GetJsonWebKeySet, auth_pb2.GetJsonWebKeySetRequest())
    assert isinstance(jwks, auth_pb2.JsonWebKeySet)
    assert [(key.kty, key.crv, key.alg) for key in jwks.keys] == [("OKP", "Ed25519", "EdDSA")]


async def test_invalid_arguments_come_with_their_field_violations(users_address: str) -> None:
    request = auth_pb2.IssueTokenRequest(client_credentials=auth_pb2.ClientCredentialsGrant())
    token = request_id_var.set("client-test-1")
    try:
        async with Connection(users_address) as conn:
            with pytest.raises(InvalidArgument) as caught:
                await conn.call(conn.auth.IssueToken, request)
    finally:
        request_id_var.reset(token)
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations == (
        FieldViolation("client_credentials.client_id", "is required"),
        FieldViolation("client_credentials.client_secret", "is required"),
    )
    assert error.request_id == "client-test-1"  # the server echoes the id it was sent
    assert isinstance(error.cause, grpc.aio.AioRpcError)
    assert error.__cause__ is None


@pytest.mark.parametrize(
    ("token", "reason"), [("", "CREDENTIALS_MISSING"), ("not-a-jwt", "TOKEN_INVALID")]
)
async def test_refusals_come_with_their_reason(users_address: str, token: str, reason: str) -> None:
    async with Connection(users_address) as conn:
        with pytest.raises(Unauthenticated) as caught:
            await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="x"), token=token)
    assert caught.value.reason == reason
    assert caught.value.request_id  # made up by the server when none was sent
    assert str(caught.value) == f"UNAUTHENTICATED: {caught.value.message} (reason {reason})"


async def test_a_service_account_with_a_wrong_secret_fails_the_call(users_address: str) -> None:
    async with Connection(users_address) as conn:
        conn.token = conn.service_account("nobody", "wrong-secret")
        with pytest.raises(Unauthenticated) as caught:
            await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="x"))
    assert caught.value.reason == "BAD_CREDENTIALS"
    assert "wrong-secret" not in str(caught.value)


async def test_the_users_services_refusals_decode_for_a_caller_with_a_token(
    users_address: str,
) -> None:
    """With a token the users service accepts (a service's, with every scope), its
    domain errors come through decoded: NOT_FOUND's reason, INVALID_ARGUMENT's fields."""
    unknown = "0b7a6f5e-3c1d-4e2f-9a8b-7c6d5e4f3a2b"
    async with Connection(users_address, token=StaticToken(service_token())) as conn:
        token = request_id_var.set("client-test-2")
        try:
            with pytest.raises(NotFound) as missing:
                await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id=unknown))
        finally:
            request_id_var.reset(token)
        bad_email = users_pb2.CreateUserRequest(
            user=users_pb2.User(email="not-an-email", name="Ada"), password="correct horse"
        )
        with pytest.raises(InvalidArgument) as invalid:
            await conn.call(conn.users.CreateUser, bad_email)
    assert missing.value.code is grpc.StatusCode.NOT_FOUND
    assert missing.value.reason == "USER_NOT_FOUND"
    assert missing.value.request_id == "client-test-2"
    assert missing.value.message == f"no user {unknown}"
    assert isinstance(missing.value.cause, grpc.aio.AioRpcError)
    assert invalid.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in invalid.value.violations] == ["user.email"]
    assert invalid.value.violations[0].description.startswith("is not a valid email address")
    assert invalid.value.request_id  # one the server made up: none was sent


async def test_not_found_from_a_servicekit_server_comes_with_reason_and_metadata() -> None:
    """The whole path of a domain error: raised by a handler, packed by servicekit's
    interceptor, decoded by the client."""

    async def get_user(request: Any, context: Any) -> users_pb2.User:
        raise server_errors.NotFound(
            f"no user {request.id}", reason="USER_NOT_FOUND", metadata={"id": request.id}
        )

    handler = service(USERS_SERVICE, GetUser=get_user)
    built = build_server(
        "127.0.0.1:0",
        [Service(USERS_SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))],
        access_log=False,
    )
    await built.start()
    try:
        async with Connection(built.address) as conn:
            with pytest.raises(NotFound) as caught:
                await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u9"))
    finally:
        await built.stop(0)
    error = caught.value
    assert (error.message, error.reason, dict(error.metadata)) == (
        "no user u9",
        "USER_NOT_FOUND",
        {"id": "u9"},
    )
    assert str(error) == "NOT_FOUND: no user u9 (reason USER_NOT_FOUND)"


# --- deadlines --------------------------------------------------------------------------


@pytest.fixture
async def silent_address() -> AsyncIterator[str]:
    """A server whose GetUser never answers."""

    async def never(request: Any, context: Any) -> users_pb2.User:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with bare_server(service(USERS_SERVICE, GetUser=never)) as address:
        yield address


async def test_a_silent_server_fails_the_call_at_the_default_deadline(
    silent_address: str,
) -> None:
    async with Connection(silent_address, deadline=0.2) as conn:
        with pytest.raises(DeadlineExceeded) as caught:
            await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"))
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_calls_own_timeout_wins_over_the_default(silent_address: str) -> None:
    async with Connection(silent_address, deadline=60) as conn:
        started = asyncio.get_running_loop().time()
        with pytest.raises(DeadlineExceeded):
            await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"), timeout=0.2)
    assert asyncio.get_running_loop().time() - started < 10


# --- retries ----------------------------------------------------------------------------


async def test_idempotent_reads_are_retried_on_unavailable_and_writes_are_not() -> None:
    attempts = {"GetUser": 0, "CreateUser": 0}

    def flaky(method: str) -> Behavior:
        async def behavior(request: Any, context: Any) -> users_pb2.User:
            attempts[method] += 1
            if attempts[method] == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "starting up")
            return a_user()

        return behavior

    handler = service(USERS_SERVICE, GetUser=flaky("GetUser"), CreateUser=flaky("CreateUser"))
    assert is_idempotent(USERS_SERVICE, "GetUser")
    assert not is_idempotent(USERS_SERVICE, "CreateUser")
    async with bare_server(handler) as address, Connection(address) as conn:
        user = await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"))
        assert user == a_user()
        assert attempts["GetUser"] == 2

        with pytest.raises(Unavailable) as caught:
            await conn.call(conn.users.CreateUser, users_pb2.CreateUserRequest())
        assert caught.value.message == "starting up"
        assert attempts["CreateUser"] == 1


async def test_a_read_cancelled_by_the_server_is_retried_and_a_write_is_not() -> None:
    """A stopping server cancels the calls it had not yet begun (grpc/grpc#41785): for a
    read that never ran, another attempt (on another replica) is safe."""
    attempts = {"GetUser": 0, "CreateUser": 0}

    def cancelled_once(method: str) -> Behavior:
        async def behavior(request: Any, context: Any) -> users_pb2.User:
            attempts[method] += 1
            if attempts[method] == 1:
                await context.abort(grpc.StatusCode.CANCELLED, "server shutting down")
            return a_user()

        return behavior

    handler = service(
        USERS_SERVICE, GetUser=cancelled_once("GetUser"), CreateUser=cancelled_once("CreateUser")
    )
    async with bare_server(handler) as address, Connection(address) as conn:
        user = await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"))
        assert user == a_user()
        assert attempts["GetUser"] == 2

        with pytest.raises(Cancelled):
            await conn.call(conn.users.CreateUser, users_pb2.CreateUserRequest())
        assert attempts["CreateUser"] == 1


# --- metadata: request id, authorization ------------------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Connection, Seen]]:
    """A connection to a server whose GetUser records the metadata it gets."""
    seen = Seen()

    async def get_user(request: Any, context: Any) -> users_pb2.User:
        seen.record(context)
        return a_user(request.id)

    handler = service(USERS_SERVICE, GetUser=get_user)
    async with bare_server(handler) as address, Connection(address) as conn:
        yield conn, seen


async def test_the_request_id_is_sent_when_one_is_set(echo: tuple[Connection, Seen]) -> None:
    conn, seen = echo
    await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"))
    token = request_id_var.set("req-42")
    try:
        await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"))
        await conn.call(
            conn.users.GetUser,
            users_pb2.GetUserRequest(id="u1"),
            metadata=[("x-request-id", "given"), ("x-extra", "1")],
        )
    finally:
        request_id_var.reset(token)
    assert "x-request-id" not in seen.calls[0]
    assert seen.calls[1]["x-request-id"] == "req-42"
    assert (seen.calls[2]["x-request-id"], seen.calls[2]["x-extra"]) == ("given", "1")


async def test_concurrent_calls_each_send_their_own_request_id(
    echo: tuple[Connection, Seen],
) -> None:
    conn, seen = echo

    async def one(request_id: str) -> None:
        request_id_var.set(request_id)  # in this task's own context
        await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id=request_id))

    ids = [f"req-{i}" for i in range(20)]
    await asyncio.gather(*(one(i) for i in ids))
    assert sorted(call["x-request-id"] for call in seen.calls) == sorted(ids)


async def test_the_token_provider_adds_authorization(echo: tuple[Connection, Seen]) -> None:
    conn, seen = echo
    request = users_pb2.GetUserRequest(id="u1")
    await conn.call(conn.users.GetUser, request)  # no default provider
    conn.token = StaticToken("default-token")
    await conn.call(conn.users.GetUser, request)
    await conn.call(conn.users.GetUser, request, token="call-token")
    await conn.call(conn.users.GetUser, request, token=StaticToken("call-provider"))
    await conn.call(conn.users.GetUser, request, token="")
    authorizations = [call.get("authorization") for call in seen.calls]
    assert authorizations == [
        None,
        "Bearer default-token",
        "Bearer call-token",
        "Bearer call-provider",
        None,
    ]
    assert "default-token" not in repr(conn.token)


# --- service accounts -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class TokenIssuer:
    """IssueToken by hand: counts calls, can be held, can fail."""

    expires_in: int = 300
    seen: Seen = field(default_factory=Seen)
    grants: list[auth_pb2.ClientCredentialsGrant] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event | None = None
    failing: bool = False

    @property
    def count(self) -> int:
        return len(self.seen.calls)

    async def issue(self, request: Any, context: Any) -> auth_pb2.IssueTokenResponse:
        self.seen.record(context)
        self.grants.append(request.client_credentials)
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "issuer down")
        return auth_pb2.IssueTokenResponse(
            access_token=f"token-{self.count}", token_type="Bearer", expires_in=self.expires_in
        )


@pytest.fixture
async def issuer() -> AsyncIterator[tuple[Connection, TokenIssuer, Seen]]:
    """A connection to a server with IssueToken by hand and a GetUser that records."""
    issuer = TokenIssuer()
    seen = Seen()

    async def get_user(request: Any, context: Any) -> users_pb2.User:
        seen.record(context)
        return a_user()

    handlers = (
        service(AUTH_SERVICE, IssueToken=issuer.issue),
        service(USERS_SERVICE, GetUser=get_user),
    )
    async with bare_server(*handlers) as address, Connection(address) as conn:
        yield conn, issuer, seen


def account_on(conn: Connection, clock: Clock) -> ServiceAccount:
    async def fetch(request: auth_pb2.IssueTokenRequest) -> auth_pb2.IssueTokenResponse:
        return await conn.call(conn.auth.IssueToken, request, token="")

    return ServiceAccount("billing", "s3cret-value", fetch=fetch, clock=clock)


async def test_a_service_account_authorizes_the_connections_calls(
    issuer: tuple[Connection, TokenIssuer, Seen], caplog: pytest.LogCaptureFixture
) -> None:
    conn, tokens, seen = issuer
    caplog.set_level(logging.DEBUG)
    conn.token = conn.service_account("billing", "s3cret-value")
    for _ in range(3):
        await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"))
    assert [call["authorization"] for call in seen.calls] == ["Bearer token-1"] * 3
    assert tokens.count == 1
    (grant,) = tokens.grants
    assert (grant.client_id, grant.client_secret) == ("billing", "s3cret-value")
    assert "authorization" not in tokens.seen.calls[0]  # the grant is the credential
    assert repr(conn.token) == "ServiceAccount(client_id='billing')"
    assert "s3cret" not in caplog.text


async def test_a_service_account_renews_its_token_before_it_expires(
    issuer: tuple[Connection, TokenIssuer, Seen],
) -> None:
    conn, tokens, _ = issuer
    clock = Clock()
    account = account_on(conn, clock)
    assert await account.token() == "token-1"
    # 300 s tokens are renewed when less than 60 s (a fifth) is left.
    clock.now += 239
    assert await account.token() == "token-1"
    assert tokens.count == 1
    clock.now += 2
    assert await account.token() == "token-2"
    assert tokens.count == 2
    assert await account.token() == "token-2"
    assert tokens.count == 2


async def test_concurrent_callers_share_one_fetch(
    issuer: tuple[Connection, TokenIssuer, Seen],
) -> None:
    conn, tokens, _ = issuer
    tokens.release = asyncio.Event()
    account = account_on(conn, Clock())
    callers = [asyncio.create_task(account.token()) for _ in range(10)]
    await tokens.started.wait()
    tokens.release.set()
    assert await asyncio.gather(*callers) == ["token-1"] * 10
    assert tokens.count == 1


async def test_a_cancelled_caller_does_not_cancel_the_fetch_for_the_others(
    issuer: tuple[Connection, TokenIssuer, Seen],
) -> None:
    conn, tokens, _ = issuer
    tokens.release = asyncio.Event()
    account = account_on(conn, Clock())
    first = asyncio.create_task(account.token())
    await tokens.started.wait()
    second = asyncio.create_task(account.token())
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    tokens.release.set()
    assert await second == "token-1"
    assert tokens.count == 1


async def test_a_failed_renewal_keeps_the_valid_token_then_raises(
    issuer: tuple[Connection, TokenIssuer, Seen], caplog: pytest.LogCaptureFixture
) -> None:
    conn, tokens, _ = issuer
    clock = Clock()
    account = account_on(conn, clock)
    assert await account.token() == "token-1"
    tokens.failing = True
    clock.now += 250  # due for renewal, valid 50 s more
    assert await account.token() == "token-1"
    assert tokens.count == 2
    assert "renewing the token of service account billing failed" in caplog.text
    clock.now += 0.5  # tried again no sooner than a second later
    assert await account.token() == "token-1"
    assert tokens.count == 2
    clock.now += 1
    assert await account.token() == "token-1"
    assert tokens.count == 3
    clock.now += 50  # expired
    with pytest.raises(Unavailable):
        await account.token()
    tokens.failing = False
    assert await account.token() == "token-5"
    assert "s3cret" not in caplog.text
    assert "s3cret" not in repr(account)


async def test_a_short_lived_token_is_renewed_at_half_its_life(
    issuer: tuple[Connection, TokenIssuer, Seen],
) -> None:
    conn, tokens, _ = issuer
    tokens.expires_in = 20
    clock = Clock()
    account = account_on(conn, clock)
    assert await account.token() == "token-1"
    clock.now += 9
    assert await account.token() == "token-1"
    clock.now += 2
    assert await account.token() == "token-2"


# --- server streams ---------------------------------------------------------------------


def chunk(summary: str) -> analysis_pb2.AnalyzeTextResponseChunk:
    return analysis_pb2.AnalyzeTextResponseChunk(
        partial=analysis_pb2.PartialAnalysis(summary=summary)
    )


async def test_a_stream_yields_typed_responses_and_carries_the_metadata() -> None:
    seen = Seen()

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        seen.record(context)
        for word in request.text.split():
            yield chunk(word)

    handler = service(AI_SERVICE, StreamAnalyzeText=stream)
    request = analysis_pb2.AnalyzeTextRequest(text="one two three")
    token = request_id_var.set("req-stream")
    try:
        async with (
            bare_server(handler) as address,
            Connection(address, token=StaticToken("t")) as conn,
        ):
            chunks = [c async for c in conn.stream(conn.analysis.StreamAnalyzeText, request)]
    finally:
        request_id_var.reset(token)
    assert all(isinstance(c, analysis_pb2.AnalyzeTextResponseChunk) for c in chunks)
    assert [c.partial.summary for c in chunks] == ["one", "two", "three"]
    assert (seen.calls[0]["authorization"], seen.calls[0]["x-request-id"]) == (
        "Bearer t",
        "req-stream",
    )


async def test_an_error_while_reading_a_stream_is_converted() -> None:
    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        yield chunk("first")
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota spent")

    handler = service(AI_SERVICE, StreamAnalyzeText=stream)
    async with bare_server(handler) as address, Connection(address) as conn:
        responses = conn.stream(conn.analysis.StreamAnalyzeText, analysis_pb2.AnalyzeTextRequest())
        assert (await anext(responses)).partial.summary == "first"
        with pytest.raises(ResourceExhausted) as caught:
            await anext(responses)
    assert caught.value.message == "quota spent"


async def test_a_stream_that_fails_at_its_deadline_raises_deadline_exceeded() -> None:
    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        yield chunk("first")
        await asyncio.Event().wait()

    handler = service(AI_SERVICE, StreamAnalyzeText=stream)
    async with bare_server(handler) as address, Connection(address, deadline=0.3) as conn:
        responses = conn.stream(conn.analysis.StreamAnalyzeText, analysis_pb2.AnalyzeTextRequest())
        assert (await anext(responses)).partial.summary == "first"
        with pytest.raises(DeadlineExceeded):
            await anext(responses)


async def test_closing_a_stream_early_cancels_the_call() -> None:
    cancelled = asyncio.Event()

    async def endless(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            n = 0
            while True:
                n += 1
                yield chunk(str(n))
        finally:  # cancelled, or closed by grpc once the call is
            cancelled.set()

    handler = service(AI_SERVICE, StreamAnalyzeText=endless)
    async with bare_server(handler) as address, Connection(address, deadline=30) as conn:
        responses = conn.stream(conn.analysis.StreamAnalyzeText, analysis_pb2.AnalyzeTextRequest())
        async for c in responses:
            if c.partial.summary == "3":
                break
        await responses.aclose()
        await asyncio.wait_for(cancelled.wait(), 10)


# --- TLS --------------------------------------------------------------------------------

SERVER_NAME = "users.tandem.test"


@dataclass
class Pki:
    ca: trustme.CA
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.directory / "client.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "client.key"

    def issue_client(self, identity: str) -> None:
        """Replace the client's files, as cert-manager does (a new file each)."""
        cert = self.ca.issue_cert(identity)
        files = ((self.cert_file, cert.cert_chain_pems[0]), (self.key_file, cert.private_key_pem))
        for path, blob in files:
            staged = path.with_suffix(".new")
            blob.write_to_path(str(staged))
            os.replace(staged, path)

    def server_credentials(self) -> grpc.ServerCredentials:
        cert = self.ca.issue_cert(SERVER_NAME)
        return grpc.ssl_server_credentials(
            [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())],
            root_certificates=self.ca.cert_pem.bytes(),
            require_client_auth=True,
        )

    def client_tls(self) -> ClientTls:
        return ClientTls(self.ca_file, self.cert_file, self.key_file, server_name=SERVER_NAME)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(trustme.CA(), tmp_path)
    pki.ca.cert_pem.write_to_path(str(pki.ca_file))
    pki.issue_client("one.clients.tandem.test")
    return pki


def peer_names(context: Any) -> list[str]:
    """The identities of the client certificate a call came with."""
    names = context.auth_context().get("x509_subject_alternative_name", [])
    return [n.decode() for n in names]


async def test_mutual_tls_and_client_files_that_rotate(pki: Pki) -> None:
    peers: list[list[str]] = []
    hold: asyncio.Event = asyncio.Event()
    held = asyncio.Event()

    async def get_user(request: Any, context: Any) -> users_pb2.User:
        peers.append(peer_names(context))
        if request.id == "slow":
            held.set()
            await hold.wait()
        return a_user(request.id)

    handler = service(USERS_SERVICE, GetUser=get_user)
    async with (
        bare_server(handler, credentials=pki.server_credentials()) as address,
        Connection(address, tls=pki.client_tls(), tls_check_seconds=0) as conn,
    ):
        assert (await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="a"))).id == "a"
        first = conn.channel
        assert conn.stub(users_pb2_grpc.UsersServiceStub) is conn.users  # one per channel
        assert (await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="b"))).id == "b"
        assert conn.channel is first  # unchanged files, same channel
        slow = asyncio.create_task(
            conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="slow"))
        )
        await held.wait()

        pki.issue_client("two.clients.tandem.test")
        assert (await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="c"))).id == "c"
        assert conn.channel is not first
        # The call in flight on the old channel finishes there; then it closes.
        hold.set()
        assert (await slow).id == "slow"
        await asyncio.wait_for(shut_down(first), 10)
        assert (await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="d"))).id == "d"
    assert peers == [
        ["one.clients.tandem.test"],
        ["one.clients.tandem.test"],
        ["one.clients.tandem.test"],
        ["two.clients.tandem.test"],
        ["two.clients.tandem.test"],
    ]


async def test_tls_files_are_looked_at_no_more_often_than_asked(pki: Pki) -> None:
    async def get_user(request: Any, context: Any) -> users_pb2.User:
        return a_user()

    handler = service(USERS_SERVICE, GetUser=get_user)
    async with (
        bare_server(handler, credentials=pki.server_credentials()) as address,
        Connection(address, tls=pki.client_tls(), tls_check_seconds=3600) as conn,
    ):
        first = conn.channel
        pki.issue_client("two.clients.tandem.test")
        await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="a"))
        assert conn.channel is first


async def test_a_plaintext_client_cannot_call_a_tls_server(pki: Pki) -> None:
    async def get_user(request: Any, context: Any) -> users_pb2.User:
        return a_user()

    handler = service(USERS_SERVICE, GetUser=get_user)
    async with (
        bare_server(handler, credentials=pki.server_credentials()) as address,
        Connection(address, deadline=5) as conn,
    ):
        with pytest.raises(Unavailable):
            await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="a"))


def test_client_tls_needs_both_or_neither_of_cert_and_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        ClientTls(tmp_path / "ca.pem", cert_file=tmp_path / "c.pem")


# --- lifetime ---------------------------------------------------------------------------


async def test_closing_the_connection_closes_its_channel(echo: tuple[Connection, Seen]) -> None:
    conn, _ = echo
    await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"))
    await conn.close()
    await asyncio.wait_for(shut_down(conn.channel), 10)


async def test_a_new_connection_does_not_inherit_another_ones_failed_connects() -> None:
    """A server stops, a connection to it fails to reconnect and backs off, and a new
    server takes the same port: a connection opened now reaches it at once (it once
    shared the other's backing-off subchannel and failed fast with "Connection refused")."""
    handler = service(USERS_SERVICE, GetUser=lambda request, context: a_user())
    async with bare_server(handler) as address:
        old = Connection(address)
        await old.call(old.users.GetUser, users_pb2.GetUserRequest(id="u1"))
    try:
        # round_robin reconnects at once, to a port nobody listens on now.
        await asyncio.wait_for(reach(old.channel, grpc.ChannelConnectivity.TRANSIENT_FAILURE), 10)
        port = int(address.rsplit(":", 1)[1])
        async with bare_server(handler, port=port), Connection(address) as conn:
            user = await conn.call(conn.users.GetUser, users_pb2.GetUserRequest(id="u1"))
        assert user == a_user()
    finally:
        await old.close()
