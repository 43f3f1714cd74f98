"""Reads by id, coalesced: concurrent requests share one batch call (AIP-231).

Every account GET reads one user by id, and every bearer request checks one session
by id; under load many are in flight at once. A gRPC call costs the gateway and the
users service about 0.5 ms of CPU whatever it carries, so reads go out together
(`servicekit.batching`): when MAX_IN_FLIGHT calls are already out, the reads that
arrive meanwhile wait and share the next one. A lone read is a call of its own.

Account reads act for their caller: the users service decides from the caller's token
what each may see, so a batch carries one caller's reads only, with that caller's
`authorization`. Session checks are the gateway's own and share calls across callers.
Each read keeps its own deadline, and its request id travels with the call that
carries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from gateway.upstream_errors import UpstreamError, deadline_exceeded
from gateway.upstreams import Upstream, UsersAuthStub, UsersStub
from servicekit.batching import Batcher
from tandem_client import REQUEST_ID_KEY, request_id_var
from tandem_protos.users.v1 import auth_pb2, users_pb2

# Bounded by the call's metadata, not by the batch methods' 1000 ids: every read's
# request id (up to 128 characters, 171 bytes as gRPC counts them) rides along, and
# gRPC refuses more than 8 KB. 32 of the longest take 5.5 KB, and a token 1 KB more.
MAX_BATCH = 32
# Batch calls out at once: a slow one (a slow replica) holds up only its own reads.
MAX_IN_FLIGHT = 4

# The statuses with which the users service answers for an id that is not a live
# account or session (and an all-or-nothing batch, for its one bad id).
GONE = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)

StubT = TypeVar("StubT")
Msg = TypeVar("Msg")


@dataclass(frozen=True, slots=True)
class _Read:
    id: str
    request_id: str
    # Loop time by which the read must be answered.
    deadline: float
    # The caller's `authorization` metadata; None for the gateway's own reads.
    authorization: str | None


class _CoalescedReader(Generic[StubT, Msg]):
    """`get(id)`: the resource, or the UpstreamError a single get would raise."""

    # The batches' span name and metrics label (servicekit.batching).
    BATCH_NAME = "gateway.coalesced_reads"

    def __init__(
        self,
        upstream: Upstream[StubT],
        *,
        coalesce: bool = True,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_callers: int = 10_000,
    ) -> None:
        self._upstream = upstream
        self._coalesce = coalesce
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._max_callers = max_callers
        # One batcher per caller (`authorization`), so that one caller's slow call holds
        # up only that caller's reads.
        self._batchers: dict[str | None, Batcher[_Read, Msg]] = {}
        # How well reads coalesce: reads asked for, and the calls that answered them.
        self.reads = 0
        self.calls = 0

    async def _get(self, resource_id: str, authorization: str | None) -> Msg:
        self.reads += 1
        deadline = asyncio.get_running_loop().time() + self._upstream.deadline
        read = _Read(resource_id, request_id_var.get(), deadline, authorization)
        if not self._coalesce:
            return await self._get_one(read)
        return await self._batcher_of(authorization).submit(read)

    def _batcher_of(self, authorization: str | None) -> Batcher[_Read, Msg]:
        batcher = self._batchers.get(authorization)
        if batcher is None:
            if len(self._batchers) >= self._max_callers:
                # Forgetting a batcher is safe: one that is busy finishes what it holds.
                self._batchers.clear()
            batcher = Batcher(
                self._read,
                max_size=self._max_batch,
                max_in_flight=self._max_in_flight,
                name=self.BATCH_NAME,
            )
            self._batchers[authorization] = batcher
        return batcher

    async def _read(self, reads: list[_Read]) -> list[Msg | Exception]:
        # A read that waited out its deadline behind an earlier call is answered as a
        # call that timed out; the others go on with what is left of theirs.
        now = asyncio.get_running_loop().time()
        answers = iter(await self._read_group([read for read in reads if read.deadline > now]))
        return [
            next(answers) if read.deadline > now else deadline_exceeded("users") for read in reads
        ]

    async def _read_group(self, reads: list[_Read]) -> Sequence[Msg | Exception]:
        """One call for reads of one caller."""
        if len(reads) <= 1:
            return [await self._outcome(read) for read in reads]
        self.calls += 1
        deadline = min(read.deadline for read in reads) - asyncio.get_running_loop().time()
        try:
            return await self._get_batch([read.id for read in reads], deadline, _metadata(reads))
        except UpstreamError as error:
            if error.grpc_code not in GONE:
                return [error] * len(reads)
            # All or nothing: whether an id is missing is each read's own answer.
            return list(await asyncio.gather(*(self._outcome(read) for read in reads)))

    async def _outcome(self, read: _Read) -> Msg | Exception:
        try:
            return await self._get_one(read)
        except UpstreamError as error:
            return error

    async def _get_one(self, read: _Read) -> Msg:
        self.calls += 1
        deadline = read.deadline - asyncio.get_running_loop().time()
        return await self._get_single(read.id, deadline, _metadata([read]))

    async def _get_single(
        self, resource_id: str, deadline: float, metadata: Sequence[tuple[str, str]]
    ) -> Msg:
        raise NotImplementedError

    async def _get_batch(
        self, ids: list[str], deadline: float, metadata: Sequence[tuple[str, str]]
    ) -> Sequence[Msg]:
        raise NotImplementedError


def _metadata(reads: Sequence[_Read]) -> list[tuple[str, str]]:
    """A call's metadata: every read's request id, and their one caller's credential;
    without one, the connection adds the gateway's own."""
    metadata = [(REQUEST_ID_KEY, read.request_id) for read in reads]
    authorization = reads[0].authorization
    if authorization is not None:
        metadata.append(("authorization", authorization))
    return metadata


class UserReader(_CoalescedReader[UsersStub, users_pb2.User]):
    """Accounts by id, as their caller may see them (GetUser / BatchGetUsers)."""

    BATCH_NAME = "gateway.user_reads"

    async def get(self, user_id: str, authorization: str) -> users_pb2.User:
        return await self._get(user_id, authorization)

    async def _get_single(
        self, resource_id: str, deadline: float, metadata: Sequence[tuple[str, str]]
    ) -> users_pb2.User:
        stub = self._upstream.stub
        request = users_pb2.GetUserRequest(id=resource_id)
        return await self._upstream.call(
            stub.GetUser, request, deadline=deadline, metadata=metadata
        )

    async def _get_batch(
        self, ids: list[str], deadline: float, metadata: Sequence[tuple[str, str]]
    ) -> Sequence[users_pb2.User]:
        stub = self._upstream.stub
        request = users_pb2.BatchGetUsersRequest(ids=ids)
        reply = await self._upstream.call(
            stub.BatchGetUsers, request, deadline=deadline, metadata=metadata
        )
        return list(reply.users)


class SessionReader(_CoalescedReader[UsersAuthStub, auth_pb2.Session]):
    """Sessions by id (BatchGetSessions), for the gateway's check of every token."""

    BATCH_NAME = "gateway.session_checks"

    async def get(self, session_id: str) -> auth_pb2.Session:
        return await self._get(session_id, None)

    async def _get_single(
        self, resource_id: str, deadline: float, metadata: Sequence[tuple[str, str]]
    ) -> auth_pb2.Session:
        (session,) = await self._get_batch([resource_id], deadline, metadata)
        return session

    async def _get_batch(
        self, ids: list[str], deadline: float, metadata: Sequence[tuple[str, str]]
    ) -> Sequence[auth_pb2.Session]:
        stub = self._upstream.stub
        request = auth_pb2.BatchGetSessionsRequest(ids=ids)
        reply = await self._upstream.call(
            stub.BatchGetSessions, request, deadline=deadline, metadata=metadata
        )
        return list(reply.sessions)
