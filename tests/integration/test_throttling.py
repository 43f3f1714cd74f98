"""The users service's limits on logins, sign-ups and client grants, through a real server.

The server runs in this process on a real port; calls carry a service token with every
scope, so they may name the end client (`x-tandem-client-address`) as the gateway does.
The limits are small here, and the delays short; the rules themselves are unit-tested
(tests/unit/test_login_throttling.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tandem_client import CLIENT_ADDRESS_KEY, from_rpc_error
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.support.gateway import closed_port
from tests.support.rpc import reason, rpc_error, trailers
from tests.support.servers import channel_to, migrate_users, running_users, users_settings
from tests.support.tokens import GATEWAY_SECRET
from users_service.passwords import PasswordHasher

PASSWORD = "correct horse battery"
WRONG = "not the password"
ATTACKER, OWNER = "203.0.113.9", "198.51.100.7"
LIMITS: dict[str, Any] = {
    "login_failures_per_pair": 4,
    "login_failures_per_address": 50,
    "login_failures_per_account": 50,
    "login_free_failures": 1,
    "login_delay_seconds": 0.05,
    "login_max_delay_seconds": 0.2,
}


@dataclass
class Users:
    users: Any
    auth: Any

    async def sign_up(self, email: str, address: str = OWNER) -> users_pb2.User:
        request = users_pb2.CreateUserRequest(
            user=users_pb2.User(email=email, name="Ada"), password=PASSWORD
        )
        user: users_pb2.User = await self.users.CreateUser(request, metadata=_from(address))
        return user

    async def login(
        self, email: str, password: str = PASSWORD, address: str = OWNER
    ) -> auth_pb2.IssueTokenResponse:
        grant = auth_pb2.PasswordGrant(email=email, password=password)
        reply: auth_pb2.IssueTokenResponse = await self.auth.IssueToken(
            auth_pb2.IssueTokenRequest(password=grant), metadata=_from(address)
        )
        return reply

    async def failed_login(self, email: str, address: str = ATTACKER) -> grpc.aio.AioRpcError:
        return await rpc_error(self.login(email, WRONG, address))


def _from(address: str) -> tuple[tuple[str, str], ...]:
    return ((CLIENT_ADDRESS_KEY, address),)


@asynccontextmanager
async def running(database_url: str, **overrides: Any) -> AsyncIterator[Users]:
    settings = users_settings(database_url, **{**LIMITS, **overrides})
    async with running_users(settings) as address, channel_to(address) as channel:
        yield Users(
            users_pb2_grpc.UsersServiceStub(channel), auth_pb2_grpc.AuthServiceStub(channel)
        )


@pytest.fixture
async def db(sqlite_url: str) -> str:
    await migrate_users(sqlite_url)
    return sqlite_url


@pytest.fixture
async def service(db: str) -> AsyncIterator[Users]:
    async with running(db) as users:
        await users.sign_up("ada@example.com")
        yield users


def assert_throttled(error: grpc.aio.AioRpcError, expected_reason: str) -> float:
    """Check a RESOURCE_EXHAUSTED refusal with RetryInfo; its retry delay."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == expected_reason
    retry_after = from_rpc_error(error).retry_after
    assert retry_after is not None
    assert retry_after >= 1
    assert trailers(error)["retry-after"] == str(int(-(-retry_after // 1)))
    return retry_after


# --- logins -------------------------------------------------------------------------------


async def test_failed_logins_wait_longer_and_longer_then_are_refused(service: Users) -> None:
    waited = []
    for _ in range(LIMITS["login_failures_per_pair"]):
        started = time.perf_counter()
        error = await service.failed_login("ada@example.com")
        waited.append(time.perf_counter() - started)
        assert reason(error) == "BAD_CREDENTIALS"
    # No delay for the free failure, then 0.05, 0.1, 0.2 s before each check.
    for took, delay in zip(waited[1:], (0.05, 0.1, 0.2), strict=True):
        assert took >= delay
    refused = await rpc_error(service.login("ada@example.com", WRONG, ATTACKER))
    assert_throttled(refused, "TOO_MANY_FAILED_LOGINS")
    # The right password from that address is refused as well: the lock is the pair's.
    right = await rpc_error(service.login("ada@example.com", PASSWORD, ATTACKER))
    assert_throttled(right, "TOO_MANY_FAILED_LOGINS")


async def test_the_owner_logs_in_while_the_attackers_address_is_locked(service: Users) -> None:
    for _ in range(LIMITS["login_failures_per_pair"]):
        await service.failed_login("ada@example.com")
    assert (await service.login("ada@example.com", address=OWNER)).access_token
    # The owner's success did not unlock the attacker's pair.
    again = await rpc_error(service.login("ada@example.com", PASSWORD, ATTACKER))
    assert_throttled(again, "TOO_MANY_FAILED_LOGINS")


async def test_an_address_is_locked_across_accounts(db: str) -> None:
    async with running(db, login_failures_per_address=3) as service:
        await service.sign_up("ada@example.com")
        # Unknown emails count as known ones do.
        for n in range(3):
            await service.failed_login(f"nobody{n}@example.com")
        refused = await rpc_error(service.login("ada@example.com", PASSWORD, ATTACKER))
        assert_throttled(refused, "TOO_MANY_FAILED_LOGINS")
        assert (await service.login("ada@example.com", address=OWNER)).access_token


async def test_an_account_is_locked_across_addresses(db: str) -> None:
    async with running(db, login_failures_per_account=4, login_failures_per_pair=2) as service:
        await service.sign_up("ada@example.com")
        for n in range(2):
            await service.failed_login("ada@example.com", f"203.0.113.{n}")
            await service.failed_login("ada@example.com", f"203.0.113.{n}")
        refused = await rpc_error(service.login("ada@example.com", PASSWORD, OWNER))
        assert_throttled(refused, "TOO_MANY_FAILED_LOGINS")


async def test_authenticate_user_counts_with_the_password_grant(service: Users) -> None:
    for _ in range(LIMITS["login_failures_per_pair"]):
        await service.failed_login("ada@example.com")
    request = users_pb2.AuthenticateUserRequest(email="ada@example.com", password=PASSWORD)
    refused = await rpc_error(service.users.AuthenticateUser(request, metadata=_from(ATTACKER)))
    assert_throttled(refused, "TOO_MANY_FAILED_LOGINS")
    user = await service.users.AuthenticateUser(request, metadata=_from(OWNER))
    assert user.email == "ada@example.com"


async def test_a_refused_login_costs_no_hash(
    service: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str] = []
    real = PasswordHasher.verify

    async def counted(self: PasswordHasher, password_hash: str | None, password: str) -> bool:
        checks.append(password)
        return await real(self, password_hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counted)
    for _ in range(LIMITS["login_failures_per_pair"]):
        await service.failed_login("ada@example.com")
    for _ in range(5):
        await rpc_error(service.login("ada@example.com", PASSWORD, ATTACKER))
    assert len(checks) == LIMITS["login_failures_per_pair"]


class Gate:
    """Holds every password check on its worker thread until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self, *_args: Any) -> bool:
        self.entered.set()
        assert self.opened.wait(10), "the test never opened the gate"
        return False


async def test_a_full_hash_queue_refuses_at_once(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    monkeypatch.setattr(PasswordHasher, "_verify", lambda _self, *args: gate.hold(*args))
    async with running(db, password_hash_workers=1, password_hash_queue=0) as service:
        try:
            held = asyncio.create_task(service.failed_login("ada@example.com", OWNER))
            await asyncio.to_thread(gate.entered.wait, 10)
            # Answered while the only worker is still busy: not queued.
            refused = await rpc_error(service.login("bob@example.com", PASSWORD, OWNER))
            assert_throttled(refused, "PASSWORD_HASH_QUEUE_FULL")
            assert not held.done()
        finally:
            gate.opened.set()
        assert reason(await held) == "BAD_CREDENTIALS"


async def test_an_address_holds_only_a_few_places_in_the_hash_queue(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()
    monkeypatch.setattr(PasswordHasher, "_verify", lambda _self, *args: gate.hold(*args))
    # Room for 5 hashes (1 running, 4 waiting); an address may hold 2 of them.
    settings = {
        "password_hash_workers": 1,
        "password_hash_queue": 4,
        "logins_in_progress_per_address": 2,
    }
    async with running(db, **settings) as service:
        await service.sign_up("ada@example.com")
        try:
            # 6 guesses at once, enough to fill the hash queue without the cap.
            pending = {
                asyncio.create_task(service.failed_login(f"nobody{n}@example.com"))
                for n in range(6)
            }
            answered: set[asyncio.Task[grpc.aio.AioRpcError]] = set()
            while len(answered) < 4:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                answered |= done
            # Refused at once, while the gate still holds the address's 2 admitted ones.
            for refused in answered:
                assert_throttled(refused.result(), "TOO_MANY_LOGINS_IN_PROGRESS")
            assert len(pending) == 2
            # The owner, from another address, finds room in the queue.
            owner = asyncio.create_task(service.login("ada@example.com", address=OWNER))
            await asyncio.to_thread(gate.entered.wait, 10)
        finally:
            gate.opened.set()
        assert [reason(await guess) for guess in pending] == ["BAD_CREDENTIALS"] * 2
        # The gate answers every check False, the owner's too: its hash was run.
        assert reason(await rpc_error(owner)) == "BAD_CREDENTIALS"
        # The guesses ended and gave their places back.
        assert reason(await service.failed_login("nobody@example.com")) == "BAD_CREDENTIALS"


async def test_logins_fail_closed_and_sign_ups_open_without_the_store(db: str) -> None:
    unreachable = f"redis://127.0.0.1:{closed_port()}/0"
    async with running(db, redis_url=unreachable) as service:
        await service.sign_up("ada@example.com")
        refused = await rpc_error(service.login("ada@example.com"))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(refused) == "THROTTLE_UNAVAILABLE"
        assert from_rpc_error(refused).retry_after is not None


# --- sign-ups and client grants -----------------------------------------------------------


async def test_sign_ups_are_limited_per_address(db: str) -> None:
    async with running(db, signups_per_address=2) as service:
        await service.sign_up("a1@example.com", ATTACKER)
        await service.sign_up("a2@example.com", ATTACKER)
        refused = await rpc_error(service.sign_up("a3@example.com", ATTACKER))
        assert_throttled(refused, "TOO_MANY_SIGNUPS")
        assert (await service.sign_up("a3@example.com", OWNER)).id


async def test_failed_client_grants_are_limited_per_client_id_and_address(service: Users) -> None:
    async def grant(client_id: str, secret: str, address: str = ATTACKER) -> Any:
        credentials = auth_pb2.ClientCredentialsGrant(client_id=client_id, client_secret=secret)
        request = auth_pb2.IssueTokenRequest(client_credentials=credentials)
        return await service.auth.IssueToken(request, metadata=_from(address))

    for _ in range(LIMITS["login_failures_per_pair"]):
        assert reason(await rpc_error(grant("gateway", "tnds_guess"))) == "BAD_CREDENTIALS"
    refused = await rpc_error(grant("gateway", GATEWAY_SECRET))
    assert_throttled(refused, "TOO_MANY_FAILED_GRANTS")
    # The grant carries no token: whoever calls cannot name another address.
    assert_throttled(
        await rpc_error(grant("gateway", GATEWAY_SECRET, OWNER)), "TOO_MANY_FAILED_GRANTS"
    )
    # Another client id from the same address is not locked.
    assert reason(await rpc_error(grant("billing", "tnds_guess"))) == "BAD_CREDENTIALS"
