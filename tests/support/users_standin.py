"""A stand-in users service for tests whose subject is the ai service.

The ai service asks the users service three things: its keys (GetJsonWebKeySet), whether
a user's session is live (BatchGetSessions) and whether an account is (BatchGetUsers).
This server answers them as the real one would for tokens signed with the tests' key -
every session of a valid token live, every account live unless listed in `gone` -
without a database, so that ai tests may name any user id. The real users service's
answers are tested with the real pair (tests/integration/test_ai_authorization.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import grpc

from servicekit.errors import NotFound, Unauthenticated
from servicekit.server import Service, build_server
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.support.keys import signing_key
from tests.support.tokens import subject_of
from users_service.signing_keys import build_signing_keys

_KEYS = build_signing_keys(signing_key(), [])


def _subject(context: Any) -> str:
    return subject_of(dict(context.invocation_metadata()).get("authorization"))


@dataclass
class UsersStandIn:
    # Ids of accounts that do not exist (or were deleted), and ended session ids.
    gone: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    # Set once the keys were asked for.
    keys_asked: asyncio.Event = field(default_factory=asyncio.Event)

    async def GetJsonWebKeySet(  # noqa: N802
        self, request: auth_pb2.GetJsonWebKeySetRequest, context: Any
    ) -> auth_pb2.JsonWebKeySet:
        self.calls.append("GetJsonWebKeySet")
        self.keys_asked.set()
        return auth_pb2.JsonWebKeySet(keys=[auth_pb2.JsonWebKey(**k) for k in _KEYS.jwks()["keys"]])

    async def BatchGetSessions(  # noqa: N802
        self, request: auth_pb2.BatchGetSessionsRequest, context: Any
    ) -> auth_pb2.BatchGetSessionsResponse:
        self.calls.append("BatchGetSessions")
        owner = _subject(context)
        if set(request.ids) & self.ended:
            raise Unauthenticated("the session has ended", reason="SESSION_ENDED")
        sessions = []
        for session_id in request.ids:
            session = auth_pb2.Session(id=session_id, user_id=owner)
            session.create_time.FromDatetime(datetime.now(UTC))
            session.expire_time.FromDatetime(datetime.now(UTC) + timedelta(days=1))
            sessions.append(session)
        return auth_pb2.BatchGetSessionsResponse(sessions=sessions)

    async def BatchGetUsers(  # noqa: N802
        self, request: users_pb2.BatchGetUsersRequest, context: Any
    ) -> users_pb2.BatchGetUsersResponse:
        self.calls.append("BatchGetUsers")
        _subject(context)
        for user_id in request.ids:
            if user_id in self.gone:
                raise NotFound(
                    f"no user {user_id}", reason="USER_NOT_FOUND", metadata={"id": user_id}
                )
        users = [
            users_pb2.User(id=str(uuid.UUID(i)), name="Someone", view=users_pb2.USER_VIEW_PUBLIC)
            for i in request.ids
        ]
        return users_pb2.BatchGetUsersResponse(users=users)

    def __getattr__(self, name: str) -> Any:
        # The methods the ai service never calls: UNIMPLEMENTED, as a server without them.
        if not name[:1].isupper():
            raise AttributeError(name)

        async def unimplemented(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"the stand-in has no {name}")

        return unimplemented


@asynccontextmanager
async def running_users_standin(
    standin: UsersStandIn | None = None, *, addr: str = "127.0.0.1:0"
) -> AsyncIterator[tuple[UsersStandIn, str]]:
    """A started stand-in on a real port (any free one unless `addr` names it); yields
    it and its address."""
    standin = standin or UsersStandIn()
    services = [
        Service(
            "users.v1.AuthService",
            partial(auth_pb2_grpc.add_AuthServiceServicer_to_server, cast(Any, standin)),
        ),
        Service(
            "users.v1.UsersService",
            partial(users_pb2_grpc.add_UsersServiceServicer_to_server, cast(Any, standin)),
        ),
    ]
    server = build_server(addr, services, access_log=False)
    await server.start()
    try:
        yield standin, server.address
    finally:
        await server.stop(0)
