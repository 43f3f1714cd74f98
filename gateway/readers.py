"""Reading accounts by id, coalesced: concurrent requests share one BatchGetUsers call.

Every account GET and every liveness check of a token's account reads one user by
id, and under load many are in flight at once. A gRPC call costs the gateway and the
users service about 0.5 ms of CPU whatever it carries, so reads go out together
(`servicekit.batching`): when MAX_IN_FLIGHT calls are already out, the reads that
arrive meanwhile wait and share the next one. The same answers, as fresh, for a
fraction of the calls; a lone read is a plain GetUser. Each read keeps its own
deadline, and its request id travels with the call that carries it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from gateway.upstreams import Upstream, UpstreamError, UsersStub, deadline_exceeded
from servicekit.batching import Batcher
from servicekit.interceptor import REQUEST_ID_KEY
from servicekit.logs import request_id_var
from tandem_protos.users.v1 import users_pb2

# Bounded by the call's metadata, not by BatchGetUsers' 1000 ids: every read's request
# id (up to 128 characters, 171 bytes as gRPC counts them) rides along, and gRPC
# refuses more than 8 KB. 32 of the longest take 5.5 KB.
MAX_BATCH = 32
# Batch calls out at once: a slow one (a slow replica) holds up only its own reads.
MAX_IN_FLIGHT = 4

# The statuses with which the all-or-nothing BatchGetUsers answers for one bad id.
_ONE_ID_FAILED = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


@dataclass(frozen=True, slots=True)
class _Read:
    user_id: str
    request_id: str
    # Loop time by which the read must be answered.
    deadline: float


class UserReader:
    """`get(user_id)`: the live account, or the UpstreamError a GetUser would raise."""

    def __init__(
        self,
        upstream: Upstream[UsersStub],
        *,
        coalesce: bool = True,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._upstream = upstream
        self._batcher = (
            Batcher(self._read, max_size=max_batch, max_in_flight=max_in_flight)
            if coalesce
            else None
        )
        # How well reads coalesce: reads asked for, and the calls that answered them.
        self.reads = 0
        self.calls = 0

    async def get(self, user_id: str) -> users_pb2.User:
        self.reads += 1
        deadline = asyncio.get_running_loop().time() + self._upstream.deadline
        read = _Read(user_id, request_id_var.get(), deadline)
        if self._batcher is None:
            return await self._get_one(read)
        return await self._batcher.submit(read)

    async def _read(self, reads: list[_Read]) -> list[users_pb2.User | Exception]:
        # A read that waited out its deadline behind an earlier call is answered as a
        # call that timed out; the others go on with what is left of theirs.
        now = asyncio.get_running_loop().time()
        answers = iter(await self._read_live([read for read in reads if read.deadline > now]))
        return [
            next(answers) if read.deadline > now else deadline_exceeded("users") for read in reads
        ]

    async def _read_live(self, reads: list[_Read]) -> list[users_pb2.User | Exception]:
        if len(reads) <= 1:
            return [await self._outcome(read) for read in reads]
        stub = self._upstream.stub
        self.calls += 1
        try:
            reply = await self._upstream.call(
                stub.BatchGetUsers,
                users_pb2.BatchGetUsersRequest(ids=[read.user_id for read in reads]),
                deadline=min(read.deadline for read in reads) - asyncio.get_running_loop().time(),
                metadata=tuple((REQUEST_ID_KEY, read.request_id) for read in reads),
            )
        except UpstreamError as error:
            if error.grpc_code not in _ONE_ID_FAILED:
                raise
            # All or nothing: whether an id is missing is each read's own answer.
            return list(await asyncio.gather(*(self._outcome(read) for read in reads)))
        return list(reply.users)

    async def _get_one(self, read: _Read) -> users_pb2.User:
        self.calls += 1
        return await self._upstream.call(
            self._upstream.stub.GetUser,
            users_pb2.GetUserRequest(id=read.user_id),
            deadline=read.deadline - asyncio.get_running_loop().time(),
            metadata=((REQUEST_ID_KEY, read.request_id),),
        )

    async def _outcome(self, read: _Read) -> users_pb2.User | Exception:
        try:
            return await self._get_one(read)
        except UpstreamError as error:
            return error
