"""The ai service's account checks against a users service (the stand-in, on a real port):
concurrent checks of many users go together in one batch call."""

from __future__ import annotations

import asyncio
import uuid

from ai_service.accounts import Accounts
from servicekit.authz import Caller
from tandem_client import AUTH_SERVICE, USERS_SERVICE, Connection
from tests.support.tokens import service_token
from tests.support.users_standin import UsersStandIn, running_users_standin


def service_caller(name: str = "tests") -> Caller:
    return Caller.service_account(name, frozenset(), token=service_token(name=name))


async def test_concurrent_checks_of_many_users_make_one_batch_call() -> None:
    standin = UsersStandIn()
    users = [uuid.uuid4() for _ in range(20)]
    standin.gone = {str(users[3]), str(users[11])}
    async with running_users_standin(standin) as (_, address):
        connection = Connection(address, deadline=5, services=(USERS_SERVICE, AUTH_SERVICE))
        try:
            accounts = Accounts(connection, ttl=0)
            caller = service_caller()
            live = await asyncio.gather(*(accounts.is_live(u, caller) for u in users))
            # A second caller's checks go with its own token, in a call of their own.
            other = await asyncio.gather(
                accounts.is_live(users[0], service_caller("other")),
                accounts.is_live(users[1], caller),
            )
        finally:
            await connection.close()
    assert live == [str(u) not in standin.gone for u in users]
    assert list(other) == [True, True]
    # One call for all twenty, asked again without each missing account it named;
    # then one per token.
    assert standin.calls.count("BatchGetUsers") == 3 + 2


async def test_an_unreachable_users_service_fails_every_check_in_the_batch() -> None:
    async with running_users_standin() as (_, address):
        pass  # the port is free again: nothing answers there now
    connection = Connection(address, deadline=1, services=(USERS_SERVICE, AUTH_SERVICE))
    try:
        accounts = Accounts(connection, ttl=0)
        caller = service_caller()
        outcomes = await asyncio.gather(
            *(accounts.is_live(uuid.uuid4(), caller) for _ in range(3)), return_exceptions=True
        )
    finally:
        await connection.close()
    assert [getattr(o, "reason", o) for o in outcomes] == ["USERS_SERVICE_UNAVAILABLE"] * 3
