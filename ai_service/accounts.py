"""What the ai service asks the users service: whether a session or an account is live.

Asked with the caller's own token, so the ai service holds no credential of its own:
a user's token may read its own session (`BatchGetSessions`), and any token may read
a live account's public profile (`BatchGetUsers`). Answers are remembered briefly
(`servicekit.liveness`). When the users service cannot answer, the call fails
UNAVAILABLE: a token whose session may have ended is not accepted on trust.

A service acting for many users at once (a bulk job, a busy integration) would ask
once per user; concurrent account checks go together instead, one `BatchGetUsers` per
calling token for all the users its calls name (`servicekit.batching`).
"""

from __future__ import annotations

import asyncio
import uuid

from servicekit.authz import Caller
from servicekit.batching import Batcher
from servicekit.callers import live_owner
from servicekit.errors import Unavailable
from servicekit.liveness import Liveness
from tandem_client import Connection, RpcError, Unauthenticated
from tandem_protos.users.v1 import auth_pb2, users_pb2

# Ids one BatchGetUsers may name (the users service allows 1000).
BATCH_SIZE = 256


class Accounts:
    def __init__(self, users: Connection, *, ttl: float) -> None:
        self._users = users
        self.sessions = Liveness(self._session_owner, ttl=ttl)
        self._accounts = Liveness(self._live_account, ttl=ttl)
        self._account_batches: Batcher[tuple[str, str], str | None] = Batcher(
            self._live_accounts, max_size=BATCH_SIZE
        )

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
        return await self._account_batches.submit((user_id, token))

    async def _live_accounts(self, checks: list[tuple[str, str]]) -> list[str | Exception | None]:
        """Each (user id, token) check's answer: one batch call per token."""
        by_token: dict[str, list[str]] = {}
        for user_id, token in checks:
            by_token.setdefault(token, []).append(user_id)
        tokens = list(by_token)
        answers = await asyncio.gather(
            *(self._live_among(by_token[t], t) for t in tokens), return_exceptions=True
        )
        found = dict(zip(tokens, answers, strict=True))
        outcomes: list[str | Exception | None] = []
        for user_id, token in checks:
            answer = found[token]
            if isinstance(answer, Exception):
                outcomes.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                outcomes.append(answer[user_id])
        return outcomes

    async def _live_among(self, user_ids: list[str], token: str) -> dict[str, str | None]:
        """Which of `user_ids` are live accounts. The batch call fails on the first id
        with no live account: that one is left out and the rest asked again."""
        pending = list(dict.fromkeys(user_ids))
        live: dict[str, str | None] = {}
        while pending:
            request = users_pb2.BatchGetUsersRequest(ids=pending)
            try:
                reply = await self._users.call(
                    self._users.users.BatchGetUsers, request, token=token
                )
            except RpcError as error:
                if error.reason != "USER_NOT_FOUND":
                    raise _unavailable(error) from None
                missing = error.metadata.get("id")
                if missing not in pending:
                    if len(pending) > 1:
                        # Not told which: one at a time finds them.
                        for one in pending:
                            live.update(await self._live_among([one], token))
                        return live
                    missing = pending[0]
                live[missing] = None
                pending.remove(missing)
                continue
            returned = {user.id for user in reply.users}
            live.update({u: u if u in returned else None for u in pending})
            return live
        return live


def _unavailable(error: RpcError) -> Unavailable:
    return Unavailable(
        f"the users service could not confirm the caller's account ({error.code.name})",
        reason="USERS_SERVICE_UNAVAILABLE",
    )
