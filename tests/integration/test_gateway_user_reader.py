"""The gateway's coalesced account reads (gateway.readers.UserReader) over real gRPC.

The upstream is a stand-in UsersService on a real port that keeps accounts in a dict,
records every call with its request ids, and can hold calls until released.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import pytest

from gateway.readers import MAX_BATCH, UserReader
from gateway.upstreams import USERS_SERVICE, Upstream, UpstreamError
from servicekit.errors import NotFound
from servicekit.logs import request_id_var
from servicekit.server import GrpcServer, Service, build_server
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc


@dataclass
class Accounts(users_pb2_grpc.UsersServiceServicer):
    users: dict[str, users_pb2.User] = field(default_factory=dict)
    # (method, ids asked, request ids the call carried)
    calls: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    held: asyncio.Event | None = None
    # Only calls asking for one of these ids are held (all calls when empty).
    hold_only: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, name: str) -> str:
        user_id = str(uuid.uuid4())
        self.users[user_id] = users_pb2.User(id=user_id, name=name)
        return user_id

    async def _enter(self, method: str, ids: Sequence[str], context: Any) -> None:
        request_ids = [v for k, v in context.invocation_metadata() if k == "x-request-id"]
        self.calls.append((method, list(ids), request_ids))
        self.arrived.set()
        if self.held is not None and (not self.hold_only or self.hold_only & set(ids)):
            await self.held.wait()

    def _find(self, user_id: str) -> users_pb2.User:
        if user_id not in self.users:
            raise NotFound(f"no user {user_id}", reason="USER_NOT_FOUND")
        return self.users[user_id]

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> users_pb2.User:  # noqa: N802
        await self._enter("GetUser", [request.id], context)
        return self._find(request.id)

    async def BatchGetUsers(  # noqa: N802
        self, request: users_pb2.BatchGetUsersRequest, context: Any
    ) -> users_pb2.BatchGetUsersResponse:
        await self._enter("BatchGetUsers", request.ids, context)
        return users_pb2.BatchGetUsersResponse(users=[self._find(i) for i in request.ids])


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

    def make(deadline: float = 5.0) -> UserReader:
        upstream: Upstream[Any] = Upstream(
            "users",
            USERS_SERVICE,
            accounts[1].address,
            users_pb2_grpc.UsersServiceStub,
            deadline,
        )
        upstreams.append(upstream)
        return UserReader(upstream)

    yield make
    for upstream in upstreams:
        await upstream.close()


async def read_as(reader: UserReader, user_id: str, request_id: str) -> users_pb2.User:
    request_id_var.set(request_id)  # in this task's own context
    return await reader.get(user_id)


async def test_a_lone_read_is_a_plain_get_user(accounts: Any, reader_for: Any) -> None:
    servicer, _ = accounts
    ada = servicer.add("Ada")
    assert (await read_as(reader_for(), ada, "req-1")).name == "Ada"
    assert servicer.calls == [("GetUser", [ada], ["req-1"])]


async def test_concurrent_reads_share_one_call_carrying_every_request_id(
    accounts: Any, reader_for: Any
) -> None:
    servicer, _ = accounts
    ids = [servicer.add(f"user {i}") for i in range(10)]
    reader = reader_for()
    found = await asyncio.gather(*(read_as(reader, u, f"req-{i}") for i, u in enumerate(ids)))
    assert [user.name for user in found] == [f"user {i}" for i in range(10)]
    assert servicer.calls == [("BatchGetUsers", ids, [f"req-{i}" for i in range(10)])]


async def test_reads_arriving_during_a_call_go_together_in_the_next(
    accounts: Any, reader_for: Any
) -> None:
    servicer, _ = accounts
    ids = [servicer.add(f"user {i}") for i in range(4)]
    reader = reader_for()
    servicer.held = asyncio.Event()
    first = asyncio.ensure_future(read_as(reader, ids[0], "req-0"))
    await servicer.arrived.wait()
    later = [
        asyncio.ensure_future(read_as(reader, u, f"req-{i + 1}")) for i, u in enumerate(ids[1:])
    ]
    await asyncio.sleep(0)
    servicer.held.set()
    assert (await first).name == "user 0"
    assert [u.name for u in await asyncio.gather(*later)] == ["user 1", "user 2", "user 3"]
    assert [(method, asked) for method, asked, _ in servicer.calls] == [
        ("GetUser", ids[:1]),
        ("BatchGetUsers", ids[1:]),
    ]


async def test_a_slow_call_holds_up_only_its_own_reads(accounts: Any, reader_for: Any) -> None:
    servicer, _ = accounts
    slow, *others = [servicer.add(f"user {i}") for i in range(4)]
    reader = reader_for()
    servicer.held, servicer.hold_only = asyncio.Event(), {slow}
    first = asyncio.ensure_future(read_as(reader, slow, "slow"))
    await servicer.arrived.wait()
    found = await asyncio.gather(*(read_as(reader, u, "fast") for u in others))
    assert [user.name for user in found] == ["user 1", "user 2", "user 3"]
    assert not first.done()
    servicer.held.set()
    assert (await first).name == "user 0"


async def test_a_missing_account_fails_only_its_own_read(accounts: Any, reader_for: Any) -> None:
    servicer, _ = accounts
    ada, bob = servicer.add("Ada"), servicer.add("Bob")
    missing = str(uuid.uuid4())
    reader = reader_for()
    results = await asyncio.gather(
        read_as(reader, ada, "a"),
        read_as(reader, missing, "m"),
        read_as(reader, bob, "b"),
        return_exceptions=True,
    )
    assert isinstance(results[0], users_pb2.User)
    assert results[0].name == "Ada"
    assert isinstance(results[1], UpstreamError)
    assert (results[1].status, results[1].grpc_code) == (404, grpc.StatusCode.NOT_FOUND)
    assert isinstance(results[2], users_pb2.User)
    assert results[2].name == "Bob"
    # The all-or-nothing batch failed; each read then asked for its own account.
    assert [method for method, _, _ in servicer.calls] == ["BatchGetUsers"] + ["GetUser"] * 3


async def test_an_unreachable_upstream_fails_every_read_with_503(
    accounts: Any, reader_for: Any
) -> None:
    servicer, server = accounts
    ids = [servicer.add("x") for _ in range(3)]
    reader = reader_for()
    await server.stop(0)
    results = await asyncio.gather(*(reader.get(u) for u in ids), return_exceptions=True)
    assert all(isinstance(r, UpstreamError) and r.status == 503 for r in results)


async def test_reads_behind_a_slow_call_keep_their_own_deadline(
    accounts: Any, reader_for: Any
) -> None:
    servicer, _ = accounts
    ids = [servicer.add("x") for _ in range(3)]
    reader = reader_for(deadline=0.3)
    servicer.held = asyncio.Event()  # never released: the upstream does not answer
    first = asyncio.ensure_future(reader.get(ids[0]))
    await servicer.arrived.wait()
    behind = [asyncio.ensure_future(reader.get(u)) for u in ids[1:]]
    results = await asyncio.gather(first, *behind, return_exceptions=True)
    assert all(isinstance(r, UpstreamError) and r.status == 504 for r in results), results
    # The reads queued behind the first did not get a full deadline of their own after
    # it: they were answered (504) when theirs ran out, with at most one more call.
    assert len(servicer.calls) <= 2


async def test_a_full_batch_of_the_longest_request_ids_fits_in_the_calls_metadata(
    accounts: Any, reader_for: Any
) -> None:
    # gRPC refuses metadata over 8 KB; every read's id (up to 128 characters) rides along.
    servicer, _ = accounts
    ids = [servicer.add(f"user {i}") for i in range(MAX_BATCH)]
    reader = reader_for()
    request_ids = [f"{i:03d}".ljust(128, "x") for i in range(MAX_BATCH)]
    found = await asyncio.gather(
        *(read_as(reader, u, r) for u, r in zip(ids, request_ids, strict=True))
    )
    assert len(found) == MAX_BATCH
    assert servicer.calls == [("BatchGetUsers", ids, request_ids)]
