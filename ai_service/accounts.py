"""What the ai service asks the users service: whether a session or an account is live.

Asked with the caller's own token, so the ai service holds no credential of its own:
a user's token may read its own session (`BatchGetSessions`), and any token may read
a live account's public profile (`BatchGetUsers`). Answers are remembered briefly
(`servicekit.liveness`). When the users service cannot answer, the call fails
UNAVAILABLE: a token whose session may have ended is not accepted on trust.
"""

from __future__ import annotations

import uuid

from servicekit.authz import Caller
from servicekit.callers import live_owner
from servicekit.errors import Unavailable
from servicekit.liveness import Liveness
from tandem_client import Connection, RpcError, Unauthenticated
from tandem_protos.users.v1 import auth_pb2, users_pb2


class Accounts:
    def __init__(self, users: Connection, *, ttl: float) -> None:
        self._users = users
        self.sessions = Liveness(self._session_owner, ttl=ttl)
        self._accounts = Liveness(self._live_account, ttl=ttl)

    async def is_live(self, user_id: uuid.UUID, caller: Caller) -> bool:
        """Whether a live account has this id (asked with the caller's token)."""
        key = str(user_id)
        return await self._accounts.owner(key, caller.token) == key

    async def _session_owner(self, session_id: str, token: str) -> str | None:
        request = auth_pb2.BatchGetSessionsRequest(ids=[session_id])
        try:
            reply = await self._users.call(self._users.auth.BatchGetSessions, request, token=token)
        except Unauthenticated:
            # The users service refuses the token of an ended session itself.
            return None
        except RpcError as error:
            raise _unavailable(error) from None
        return next((o for o in map(live_owner, reply.sessions) if o is not None), None)

    async def _live_account(self, user_id: str, token: str) -> str | None:
        request = users_pb2.BatchGetUsersRequest(ids=[user_id])
        try:
            reply = await self._users.call(self._users.users.BatchGetUsers, request, token=token)
        except RpcError as error:
            if error.reason == "USER_NOT_FOUND":
                return None
            raise _unavailable(error) from None
        return user_id if reply.users else None


def _unavailable(error: RpcError) -> Unavailable:
    return Unavailable(
        f"the users service could not confirm the caller's account ({error.code.name})",
        reason="USERS_SERVICE_UNAVAILABLE",
    )
