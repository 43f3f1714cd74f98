"""The login and sign-up limits seen through the gateway: 429 problems with Retry-After,
which client an X-Forwarded-For names (only behind a trusted proxy), and replicas that
share their counts through Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest

import gateway.refusals
from tests.support.ai_standin import running_ai_standin
from tests.support.gateway import (
    PASSWORD,
    Stack,
    assert_problem,
    gateway_settings,
    running_gateway,
    unique_email,
)
from tests.support.redis import REDIS_URL, redis_prefix
from tests.support.servers import migrate_users, running_users, users_settings
from users_service.throttling import LoginAttempt, Throttling

__all__ = ["redis_prefix"]  # a fixture the tests here use

PAIR_LIMIT = 3
LIMITS: dict[str, Any] = {
    "login_failures_per_pair": PAIR_LIMIT,
    "login_delay_seconds": 0,
    "signups_per_address": 2,
}
ATTACKER, OWNER = "203.0.113.9", "198.51.100.7"


@asynccontextmanager
async def stack_on(
    database_url: str, users: dict[str, Any] | None = None, **gateway: Any
) -> AsyncIterator[Stack]:
    """A users server with small limits, an ai stand-in and a gateway (with `gateway`
    settings) in front of them."""
    async with AsyncExitStack() as running:
        settings = users_settings(database_url, **{**LIMITS, **(users or {})})
        users_address = await running.enter_async_context(running_users(settings))
        ai = await running.enter_async_context(running_ai_standin())
        served = gateway_settings(users_address, ai.address, **gateway)
        url = await running.enter_async_context(running_gateway(served))
        client = await running.enter_async_context(httpx.AsyncClient(base_url=url, timeout=15))
        yield Stack(url, client, ai, users_address, served)


@pytest.fixture
async def db(sqlite_url: str) -> str:
    await migrate_users(sqlite_url)
    return sqlite_url


async def log_in(
    stack: Stack, email: str, password: str, forwarded: str | None = None
) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return await stack.client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
        headers=headers,
    )


async def lock_out(stack: Stack, email: str, forwarded: str | None = None) -> None:
    for _ in range(PAIR_LIMIT):
        failed = await log_in(stack, email, "not the password", forwarded)
        assert failed.status_code == 400, failed.text
        assert failed.json()["reason"] == "BAD_CREDENTIALS"


async def window_start(window_seconds: int) -> None:
    """Wait until a new window of `window_seconds` has just begun.

    The sliding window counter's windows start at multiples of their length on the wall
    clock, and a count carried into the next one weighs less than whole: 1 failure of a
    limit of 1 stops refusing the moment a boundary passes. A test that needs the refusal
    of its next request starts the count early in a window."""
    await asyncio.sleep(window_seconds - time.time() % window_seconds)


def assert_too_many(response: httpx.Response, reason: str) -> dict[str, Any]:
    body = assert_problem(response, 429, "RESOURCE_EXHAUSTED")
    assert body["reason"] == reason
    assert int(response.headers["retry-after"]) >= 1
    return body


async def test_too_many_failed_logins_are_429_with_retry_after(db: str) -> None:
    async with stack_on(db) as stack:
        user = await stack.sign_up()
        await lock_out(stack, user["email"])
        refused = await log_in(stack, user["email"], PASSWORD)
        body = assert_too_many(refused, "TOO_MANY_FAILED_LOGINS")
        # Also an OAuth error, which clients may retry later.
        assert body["error"] == "temporarily_unavailable"
        assert body["error_description"] == body["detail"]
        assert body["detail"].startswith("too many failed logins; retry in ")
        assert body["title"] == "Resource exhausted"


async def test_too_many_sign_ups_are_429_with_retry_after(db: str) -> None:
    async with stack_on(db) as stack:
        await stack.sign_up()
        await stack.sign_up()
        body = {"email": unique_email(), "name": "Spam", "password": PASSWORD}
        refused = await stack.client.post("/v1/users", json=body)
        assert_too_many(refused, "TOO_MANY_SIGNUPS")


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(db: str) -> None:
    async with stack_on(db, trusted_proxies="127.0.0.0/8") as stack:
        user = await stack.sign_up()
        await lock_out(stack, user["email"], forwarded=ATTACKER)
        # Whatever the attacker writes to the left, the proxy's hop is what counts.
        spoofed = await log_in(stack, user["email"], PASSWORD, f"{OWNER}, {ATTACKER}")
        assert_too_many(spoofed, "TOO_MANY_FAILED_LOGINS")
        owner = await log_in(stack, user["email"], PASSWORD, forwarded=OWNER)
        assert owner.status_code == 200, owner.text


async def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(db: str) -> None:
    async with stack_on(db) as stack:
        user = await stack.sign_up()
        await lock_out(stack, user["email"], forwarded=ATTACKER)
        # Naming another address changes nothing: the peer is what counts.
        other = await log_in(stack, user["email"], PASSWORD, forwarded=OWNER)
        assert_too_many(other, "TOO_MANY_FAILED_LOGINS")


async def test_replicas_sharing_redis_share_the_limits(db: str, redis_prefix: str) -> None:
    shared = {"redis_url": REDIS_URL, "redis_key_prefix": redis_prefix}
    async with stack_on(db, shared) as one, stack_on(db, shared) as two:
        user = await one.sign_up()
        await lock_out(one, user["email"])
        assert_too_many(await log_in(two, user["email"], PASSWORD), "TOO_MANY_FAILED_LOGINS")
        await two.sign_up()
        assert_too_many(
            await one.client.post(
                "/v1/users", json={"email": unique_email(), "name": "X", "password": PASSWORD}
            ),
            "TOO_MANY_SIGNUPS",
        )


async def test_replicas_without_redis_count_alone(db: str) -> None:
    async with stack_on(db) as one, stack_on(db) as two:
        user = await one.sign_up()
        await lock_out(one, user["email"])
        assert_too_many(await log_in(one, user["email"], PASSWORD), "TOO_MANY_FAILED_LOGINS")
        assert (await log_in(two, user["email"], PASSWORD)).status_code == 200


# --- the gateway keeps the users service's refusals until they run out ----------------------


class Admissions:
    """Counts the logins the users service is asked to admit (it runs in this process)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = Throttling.admit_login

        async def counted(limits: Throttling, email_key: str, address: str) -> LoginAttempt:
            self.count += 1
            return await real(limits, email_key, address)

        monkeypatch.setattr(Throttling, "admit_login", counted)


async def test_a_refused_client_is_refused_by_the_gateway_until_its_retry_after(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = Admissions(monkeypatch)
    async with stack_on(db, trusted_proxies="127.0.0.0/8", early_retry_delay_seconds=0) as stack:
        user, other = await stack.sign_up(), await stack.sign_up()
        await lock_out(stack, user["email"], forwarded=ATTACKER)
        first = await log_in(stack, user["email"], PASSWORD, ATTACKER)
        assert_too_many(first, "TOO_MANY_FAILED_LOGINS")
        calls = asked.count
        for _ in range(3):
            again = await log_in(stack, user["email"], PASSWORD, ATTACKER)
            body = assert_too_many(again, "TOO_MANY_FAILED_LOGINS")
            assert body["error"] == "temporarily_unavailable"
            assert int(again.headers["retry-after"]) <= int(first.headers["retry-after"])
        assert asked.count == calls  # answered without the users service
        # The refusal held for that account from that address only (its scope): the
        # users service decides for another account, or another address.
        assert (await log_in(stack, other["email"], PASSWORD, ATTACKER)).status_code == 200
        assert (await log_in(stack, user["email"], PASSWORD, OWNER)).status_code == 200
        assert asked.count == calls + 2


async def test_an_address_wide_refusal_holds_for_every_account_of_the_address(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = Admissions(monkeypatch)
    # The address count (2) is used up before any pair's: the refusal is the address's.
    users = {"login_failures_per_address": 2}
    async with stack_on(db, users, early_retry_delay_seconds=0) as stack:
        one, two = await stack.sign_up(), await stack.sign_up()
        for account in (one, two):
            failed = await log_in(stack, account["email"], "not the password")
            assert failed.json()["reason"] == "BAD_CREDENTIALS"
        assert_too_many(await log_in(stack, one["email"], PASSWORD), "TOO_MANY_FAILED_LOGINS")
        calls = asked.count
        assert_too_many(await log_in(stack, two["email"], PASSWORD), "TOO_MANY_FAILED_LOGINS")
        assert asked.count == calls


async def test_sign_up_refusals_are_kept_for_the_address(db: str) -> None:
    async with stack_on(db, early_retry_delay_seconds=0) as stack:
        await stack.sign_up()
        await stack.sign_up()
        body = {"email": unique_email(), "name": "Spam", "password": PASSWORD}
        assert_too_many(await stack.client.post("/v1/users", json=body), "TOO_MANY_SIGNUPS")
        again = await stack.client.post("/v1/users", json=body)
        assert_too_many(again, "TOO_MANY_SIGNUPS")
        assert again.json()["detail"].startswith("too many attempts from this client; retry in")


async def test_an_early_retry_waits_without_counting_against_the_in_flight_cap(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = asyncio.Event()

    class Sleeps:
        """gateway.refusals' asyncio, telling when an answer is being held back."""

        @staticmethod
        async def sleep(seconds: float) -> None:
            held.set()
            await asyncio.sleep(seconds)

    monkeypatch.setattr(gateway.refusals, "asyncio", Sleeps)
    async with stack_on(db, early_retry_delay_seconds=0.5, max_in_flight=1) as stack:
        user, other = await stack.sign_up(), await stack.sign_up()
        await lock_out(stack, user["email"])
        assert_too_many(await log_in(stack, user["email"], PASSWORD), "TOO_MANY_FAILED_LOGINS")
        started = time.perf_counter()
        early = asyncio.create_task(log_in(stack, user["email"], PASSWORD))
        await held.wait()
        # While the early retry is held back, the cap of 1 still lets another login in.
        served = await log_in(stack, other["email"], PASSWORD)
        assert served.status_code == 200, served.text
        assert_too_many(await early, "TOO_MANY_FAILED_LOGINS")
        assert time.perf_counter() - started >= 0.25  # 50-100 % of the delay


async def test_an_early_retry_whose_refusal_ran_out_meanwhile_is_decided_upstream(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = Admissions(monkeypatch)
    users = {"login_failures_per_address": 1, "login_window_seconds": 2}
    # Held back 2-4 s: at least the refusal's Retry-After (at most the 2 s window).
    async with stack_on(db, users, early_retry_delay_seconds=4) as stack:
        user = await stack.sign_up()
        await window_start(2)
        await log_in(stack, user["email"], "not the password")
        first = await log_in(stack, user["email"], PASSWORD)
        assert_too_many(first, "TOO_MANY_FAILED_LOGINS")
        calls = asked.count
        started = time.perf_counter()
        late = await log_in(stack, user["email"], PASSWORD)
        assert time.perf_counter() - started >= 2
        assert late.status_code == 200, late.text
        assert asked.count == calls + 1
