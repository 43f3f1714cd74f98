"""The gateway's coalesced account reads (gateway.readers.UserReader) over real gRPC.

The upstream is a stand-in UsersService on a real port that keeps accounts in a dict,
records every call with its request ids and `authorization`, and can hold calls until
released. It decides what each caller sees as the users service does: it verifies the
caller's bearer token (`servicekit.callers`, with the tests' signing key) and asks
the service's policy for the view (`users_service.policy.view_of`): one's own account
in full, another's as its public profile. The tokens are minted by the users service's
own issuer (`users_service.tokens.AccessTokens`), so they are real ones, of real size.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import grpc
import pytest

from gateway.readers import MAX_BATCH, UserReader
from gateway.upstream_errors import UpstreamError
from gateway.upstreams import USERS_SERVICE, Upstream
from servicekit.callers import CallerResolver
from servicekit.errors import NotFound
from servicekit.liveness import Liveness
from servicekit.logs import request_id_var
from servicekit.server import GrpcServer, Service, build_server
from servicekit.tokens import KeySet, TokenVerifier
from tandem_client import Connection
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.support.keys import signing_key
from tests.support.servers import users_settings
from users_service.policy import Caller, View, view_of
from users_service.signing_keys import SigningKeys, build_signing_keys
from users_service.tokens import AccessTokens

# What the in-process users servers of the tests sign with, and how.
SETTINGS = users_settings("sqlite+aiosqlite:///unused.db")


KEYS: SigningKeys = build_signing_keys(signing_key(), [])
ISSUER = AccessTokens(
    KEYS,
    issuer=SETTINGS.token_issuer,
    audience=SETTINGS.token_audience,
    ttl_seconds=SETTINGS.access_token_ttl_seconds,
)


# The sessions of the tokens `bearer` made: all live, by session id.
SESSIONS: dict[str, str] = {}


def bearer(user_id: str, role: str = "user") -> str:
    """The `authorization` of a caller: a real access token of a new session of `user_id`."""
    now = datetime.now(UTC)
    session_id = uuid.uuid4()
    SESSIONS[str(session_id)] = user_id
    issued = ISSUER.issue(
        user_id=uuid.UUID(user_id),
        session_id=session_id,
        role=role,
        now=now,
        ends=now + timedelta(seconds=SETTINGS.session_max_seconds),
    )
    return f"Bearer {issued.token}"


def _caller_resolver() -> CallerResolver:
    async def published_keys() -> dict[str, Any]:
        return KEYS.jwks()

    verifier = TokenVerifier(
        KeySet(published_keys),
        issuer=SETTINGS.token_issuer,
        audience=SETTINGS.token_audience,
        max_lifetime_seconds=SETTINGS.token_max_lifetime_seconds,
    )

    async def live_owner(session_id: str, _credential: str) -> str | None:
        return SESSIONS.get(session_id)

    return CallerResolver(verifier, Liveness(live_owner, ttl=60))


# (method, ids asked, request ids the call carried, authorizations the call carried)
Call = tuple[str, list[str], list[str], list[str]]


@dataclass
class Accounts(users_pb2_grpc.UsersServiceServicer):
    users: dict[str, users_pb2.User] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    held: asyncio.Event | None = None
    # Only calls asking for one of these ids are held (all calls when empty).
    hold_only: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    callers: CallerResolver = field(default_factory=_caller_resolver)

    def add(self, name: str) -> str:
        user_id = str(uuid.uuid4())
        self.users[user_id] = users_pb2.User(
            id=user_id,
            name=name,
            email=f"{user_id}@example.com",
            etag=f"etag-{user_id}",
            view=users_pb2.USER_VIEW_FULL,
        )
        return user_id

    async def _enter(self, method: str, ids: Sequence[str], context: Any) -> Caller:
        metadata = context.invocation_metadata()
        request_ids = [v for k, v in metadata if k == "x-request-id"]
        authorizations = [v for k, v in metadata if k == "authorization"]
        self.calls.append((method, list(ids), request_ids, authorizations))
        self.arrived.set()
        if self.held is not None and (not self.hold_only or self.hold_only & set(ids)):
            await self.held.wait()
        return await self.callers.caller(context)

    def _find(self, user_id: str, caller: Caller) -> users_pb2.User:
        if user_id not in self.users:
            raise NotFound(f"no user {user_id}", reason="USER_NOT_FOUND")
        user = self.users[user_id]
        if view_of(caller, uuid.UUID(user_id)) is View.FULL:
            return user
        return users_pb2.User(id=user.id, name=user.name, view=users_pb2.USER_VIEW_PUBLIC)

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> users_pb2.User:  # noqa: N802
        caller = await self._enter("GetUser", [request.id], context)
        return self._find(request.id, caller)

    async def BatchGetUsers(  # noqa: N802
        self, request: users_pb2.BatchGetUsersRequest, context: Any
    ) -> users_pb2.BatchGetUsersResponse:
        caller = await self._enter("BatchGetUsers", request.ids, context)
        return users_pb2.BatchGetUsersResponse(users=[self._find(i, caller) for i in request.ids])


@pytest.fixture
async def accounts() -> AsyncIterator[tuple[Accounts, GrpcServer]]:
    servicer = Accounts()  # type: ignore[abstract]  # the other methods: UNIMPLEMENTED
    register = partial(users_pb2_grpc.add_UsersServiceServicer_to_server, servicer)
    server = build_server("127.0.0.1:0", [Service(USERS_SERVICE, register)], access_log=False)
    await server.start()
    try:
        yield servicer, server
    finally:
        await server.stop(0)


@pytest.fixture
async def reader_for(
    accounts: tuple[Accounts, GrpcServer],
) -> AsyncIterator[Any]:
    upstreams: list[Upstream[Any]] = []

    def make(deadline: float = 5.0, **options: Any) -> UserReader:
        connection = Connection(accounts[1].address, deadline=deadline, services=(USERS_SERVICE,))
        upstream: Upstream[Any] = Upstream(
            "users", USERS_SERVICE, connection, users_pb2_grpc.UsersServiceStub
        )
        upstreams.append(upstream)
        return UserReader(upstream, **options)

    yield make
    for upstream in upstreams:
        await upstream.close()


async def read_as(
    reader: UserReader, user_id: str, request_id: str, authorization: str
) -> users_pb2.User:
    request_id_var.set(request_id)  # in this task's own context
    return await reader.get(user_id, authorization)


def is_public(user: users_pb2.User) -> bool:
    return user.view == users_pb2.USER_VIEW_PUBLIC and not user.email and not user.etag


async def test_a_lone_read_is_a_plain_get_user(accounts: Any, reader_for: Any) -> None:
    servicer, _ = accounts
    ada = servicer.add("Ada")
    ada_auth = bearer(ada)
    found = await read_as(reader_for(), ada, "req-1", ada_auth)
    # Her own account: in full.
    assert (found.name, found.email) == ("Ada", f"{ada}@example.com")
    assert found.view == users_pb2.USER_VIEW_FULL
    assert servicer.calls == [("GetUser", [ada], ["req-1"], [ada_auth])]


async def test_concurrent_reads_share_one_call_carrying_every_request_id(
    accounts: Any, reader_for: Any
) -> None:
    servicer, _ = accounts
    caller = bearer(servicer.add("Reader"))
    ids = [servicer.add(f"user {i}") for i in range(10)]
    reader = reader_for()
    found = await asyncio.gather(
        *(read_as(reader, u, f"req-{i}", caller) for i, u in enumerate(ids))
    )
    assert [user.name for user in found] == [f"user {i}" for i in range(10)]
    # Others' accounts, as the caller may see them.
    assert all(is_public(user) for user in found)
    # The same caller's reads share the call, which carries its authorization once.
    assert servicer.calls == [("BatchGetUsers", ids, [f"req-{i}" for i in range(10)], [caller])]


async def test_reads_of_different_callers_never_share_a_call(
    accounts: Any, reader_for: Any
) -> None:
    servicer, _ = accounts
    ada, bob = servicer.add("Ada"), servicer.add("Bob")
    others = [servicer.add(f"user {i}") for i in range(4)]
    auth = {"ada": bearer(ada), "bob": bearer(bob)}
    targets = [ada, bob, *others]
    reader = reader_for()
    # Interleaved, all at once: a reader that batched by arrival would mix them.
    reads = [(who, target) for target in targets for who in ("ada", "bob")]
    found = await asyncio.gather(
        *(read_as(reader, t, f"{who}-{i}", auth[who]) for i, (who, t) in enumerate(reads))
    )
    # Each read got what its own caller may see: only one's own account in full.
    for (who, target), user in zip(reads, found, strict=True):
        assert user.id == target
        own = target == (ada if who == "ada" else bob)
        assert (user.view == users_pb2.USER_VIEW_FULL) is own, (who, user)
        assert is_public(user) is not own
    # Every call carried one caller's reads, request ids and authorization only.
    assert {method for method, _, _, _ in servicer.calls} == {"BatchGetUsers"}
    by_caller: dict[str, list[str]] = {}
    for _, asked, request_ids, authorizations in servicer.calls:
        (authorization,) = authorizations
        who = "ada" if authorization == auth["ada"] else "bob"
        assert authorization == auth[who]
        assert all(r.startswith(f"{who}-") for r in request_ids), request_ids
        assert len(asked) == len(request_ids)
        by_caller.setdefault(who, []).extend(asked)
    assert by_caller == {"ada": targets, "bob": targets}
    assert len(servicer.calls) == 2


async def test_reads_arriving_during_a_call_go_together_in_the_next(
    accounts: Any, reader_for: Any
) -> None:
    servicer, _ = accounts
    caller = bearer(servicer.add("Reader"))
    ids = [servicer.add(f"user {i}") for i in range(4)]
    reader = reader_for()
    servicer.held = asyncio.Event()
    first = asyncio.ensure_future(read_as(reader, ids[0], "req-0", caller))
    await servicer.arrived.wait()
    later = [
        asyncio.ensure_future(read_as(reader, u, f"req-{i + 1}", caller))
        for i, u in enumerate(ids[1:])
    ]
    await asyncio.sleep(0)
    servicer.held.set()
    assert (await first).name == "user 0"
    assert [u.name for u in await asyncio.gather(*later)] == ["user 1", "user 2", "user 3"]
    assert [(method, asked, auths) for method, asked, _, auths in servicer.calls] == [
        ("GetUser", ids[:1], [caller]),
        ("BatchGetUsers", ids[1:], [caller]),
    ]


async def test_a_slow_call_holds_up_only_its_own_reads(accounts: Any, reader_for: Any) -> None:
    servicer, _ = accounts
    caller = bearer(servicer.add("Reader"))
    slow, *others = [servicer.add(f"user {i}") for i in range(4)]
    reader = reader_for()
    servicer.held, servicer.hold_only = asyncio.Event(), {slow}
    first = asyncio.ensure_future(read_as(reader, slow, "slow", caller))
    await servicer.arrived.wait()
    found = await asyncio.gather(*(read_as(reader, u, "fast", caller) for u in others))
    assert [user.name for user in found] == ["user 1", "user 2", "user 3"]
    assert not first.done()
    servicer.held.set()
    assert (await first).name == "user 0"


async def test_one_callers_slow_call_holds_up_no_other_caller(
    accounts: Any, reader_for: Any
) -> None:
    servicer, _ = accounts
    ada, bob = servicer.add("Ada"), servicer.add("Bob")
    slow, fast = servicer.add("slow"), servicer.add("fast")
    reader = reader_for(max_in_flight=1)
    servicer.held, servicer.hold_only = asyncio.Event(), {slow}
    held = asyncio.ensure_future(read_as(reader, slow, "ada-0", bearer(ada)))
    await servicer.arrived.wait()
    # With one call in flight per caller, Bob's reads still go out and come back while
    # Ada's call is held.
    found = await asyncio.gather(
        *(read_as(reader, fast, f"bob-{i}", bearer(bob)) for i in range(3))
    )
    assert [user.name for user in found] == ["fast"] * 3
    assert not held.done()
    servicer.held.set()
    assert (await held).name == "slow"


async def test_a_missing_account_fails_only_its_own_read(accounts: Any, reader_for: Any) -> None:
    servicer, _ = accounts
    ada, bob = servicer.add("Ada"), servicer.add("Bob")
    ada_auth = bearer(ada)
    missing = str(uuid.uuid4())
    reader = reader_for()
    results = await asyncio.gather(
        read_as(reader, ada, "a", ada_auth),
        read_as(reader, missing, "m", ada_auth),
        read_as(reader, bob, "b", ada_auth),
        return_exceptions=True,
    )
    assert isinstance(results[0], users_pb2.User)
    assert results[0].name == "Ada"
    assert results[0].view == users_pb2.USER_VIEW_FULL  # her own
    assert isinstance(results[1], UpstreamError)
    assert (results[1].status, results[1].grpc_code) == (404, grpc.StatusCode.NOT_FOUND)
    assert isinstance(results[2], users_pb2.User)
    assert results[2].name == "Bob"
    assert is_public(results[2])  # another's
    # The all-or-nothing batch failed; each read then asked for its own account, still
    # acting for its caller.
    assert [(method, auths) for method, _, _, auths in servicer.calls] == [
        ("BatchGetUsers", [ada_auth])
    ] + [("GetUser", [ada_auth])] * 3
    assert sorted(r for _, _, rs, _ in servicer.calls[1:] for r in rs) == ["a", "b", "m"]


async def test_an_unreachable_upstream_fails_every_read_with_503(
    accounts: Any, reader_for: Any
) -> None:
    servicer, server = accounts
    caller = bearer(servicer.add("Reader"))
    ids = [servicer.add("x") for _ in range(3)]
    reader = reader_for()
    await server.stop(0)
    results = await asyncio.gather(*(reader.get(u, caller) for u in ids), return_exceptions=True)
    assert all(isinstance(r, UpstreamError) and r.status == 503 for r in results)


async def test_reads_behind_a_slow_call_keep_their_own_deadline(
    accounts: Any, reader_for: Any
) -> None:
    servicer, _ = accounts
    caller = bearer(servicer.add("Reader"))
    ids = [servicer.add("x") for _ in range(3)]
    reader = reader_for(deadline=0.3)
    servicer.held = asyncio.Event()  # never released: the upstream does not answer
    first = asyncio.ensure_future(reader.get(ids[0], caller))
    await servicer.arrived.wait()
    behind = [asyncio.ensure_future(reader.get(u, caller)) for u in ids[1:]]
    results = await asyncio.gather(first, *behind, return_exceptions=True)
    assert all(isinstance(r, UpstreamError) and r.status == 504 for r in results), results
    # The reads queued behind the first did not get a full deadline of their own after
    # it: they were answered (504) when theirs ran out, with at most one more call.
    assert len(servicer.calls) <= 2


async def test_a_full_batch_of_the_longest_request_ids_fits_in_the_calls_metadata(
    accounts: Any, reader_for: Any
) -> None:
    # gRPC refuses metadata over 8 KB; every read's id (up to 128 characters) rides
    # along, and so does the caller's bearer token (a real one: the users service's
    # issuer, the longest role).
    servicer, _ = accounts
    caller = bearer(servicer.add("Admin"), role="admin")
    ids = [servicer.add(f"user {i}") for i in range(MAX_BATCH)]
    reader = reader_for()
    request_ids = [f"{i:03d}".ljust(128, "x") for i in range(MAX_BATCH)]
    found = await asyncio.gather(
        *(read_as(reader, u, r, caller) for u, r in zip(ids, request_ids, strict=True))
    )
    assert len(found) == MAX_BATCH
    assert servicer.calls == [("BatchGetUsers", ids, request_ids, [caller])]
    # The service read the token: an admin sees every account in full.
    assert all(user.view == users_pb2.USER_VIEW_FULL and user.email for user in found)
