"""servicekit.throttle: limits counted in process and in Redis, and a Redis that goes away."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from servicekit.settings import ThrottleSettings
from servicekit.throttle import Limit, Throttle
from tests.support.gateway import closed_port
from tests.support.redis import REDIS_URL, key_ttls, redis_prefix
from tests.support.tcp_proxy import TcpProxy

__all__ = ["redis_prefix"]  # a fixture the tests here use

LOGINS = Limit("logins", amount=3, window_seconds=60, fail_open=False)
READS = Limit("reads", amount=3, window_seconds=60, fail_open=True)


def redis_throttle(
    url: str,
    prefix: str,
    *,
    retry_seconds: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> Throttle:
    settings = ThrottleSettings(redis_url=url, redis_key_prefix=prefix)
    return Throttle.from_settings(settings, retry_seconds=retry_seconds, clock=clock)


@pytest.fixture(params=["in process", "redis"])
async def throttle(request: pytest.FixtureRequest) -> AsyncIterator[Throttle]:
    if request.param == "in process":
        built = Throttle.in_process()
    else:
        prefix = request.getfixturevalue("redis_prefix")
        built = redis_throttle(REDIS_URL, prefix)
    try:
        yield built
    finally:
        await built.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- counting ---------------------------------------------------------------------------


async def test_hits_fit_until_the_limit_then_are_refused(throttle: Throttle) -> None:
    assert [await throttle.hit(LOGINS, "ada") for _ in range(5)] == [True] * 3 + [False] * 2
    usage = await throttle.usage(LOGINS, "ada")
    assert (usage.used, usage.remaining, usage.exhausted, usage.counted) == (3, 0, True, True)
    assert 1 <= usage.retry_after <= 60


async def test_keys_and_limits_count_apart(throttle: Throttle) -> None:
    for _ in range(3):
        await throttle.hit(LOGINS, "ada", "10.0.0.1")
    assert (await throttle.usage(LOGINS, "ada", "10.0.0.1")).exhausted
    assert (await throttle.usage(LOGINS, "ada", "10.0.0.2")).used == 0
    assert (await throttle.usage(LOGINS, "bob", "10.0.0.1")).used == 0
    assert (await throttle.usage(READS, "ada", "10.0.0.1")).used == 0


async def test_usage_counts_nothing_and_an_unused_key_has_all_of_it(throttle: Throttle) -> None:
    for _ in range(5):
        usage = await throttle.usage(LOGINS, "nobody")
    assert (usage.used, usage.remaining, usage.retry_after) == (0, 3, 0.0)


async def test_a_cost_counts_as_that_many_hits(throttle: Throttle) -> None:
    assert await throttle.hit(LOGINS, "ada", cost=2)
    assert not await throttle.hit(LOGINS, "ada", cost=2)
    assert (await throttle.usage(LOGINS, "ada")).used == 2


async def test_clear_forgets_one_key(throttle: Throttle) -> None:
    for _ in range(3):
        await throttle.hit(LOGINS, "ada")
        await throttle.hit(LOGINS, "bob")
    await throttle.clear(LOGINS, "ada")
    assert (await throttle.usage(LOGINS, "ada")).used == 0
    assert (await throttle.usage(LOGINS, "bob")).exhausted


async def test_throttles_sharing_redis_share_counts(redis_prefix: str) -> None:
    one, two = redis_throttle(REDIS_URL, redis_prefix), redis_throttle(REDIS_URL, redis_prefix)
    other = redis_throttle(REDIS_URL, redis_prefix + "-other")
    try:
        assert await one.hit(LOGINS, "ada")
        assert await two.hit(LOGINS, "ada", cost=2)
        assert not await one.hit(LOGINS, "ada")
        assert (await two.usage(LOGINS, "ada")).exhausted
        assert (await other.usage(LOGINS, "ada")).used == 0
    finally:
        for throttle in (one, two, other):
            await throttle.close()


async def test_redis_keys_carry_the_prefix_and_expire(redis_prefix: str) -> None:
    throttle = redis_throttle(REDIS_URL, redis_prefix)
    try:
        await throttle.hit(LOGINS, "ada")
        ttls = await key_ttls(redis_prefix)
    finally:
        await throttle.close()
    assert ttls
    assert all(b"ada" in key and b"logins" in key for key in ttls)
    # This window and the next: the counter weighs in the one after it.
    assert all(0 < ttl <= 2 * LOGINS.window_seconds for ttl in ttls.values())


# --- a Redis that is not there ----------------------------------------------------------


async def test_an_unreachable_redis_fails_open_or_closed_as_each_limit_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="servicekit.throttle")
    # Tried again at every call: the warning still comes once.
    throttle = redis_throttle(f"redis://127.0.0.1:{closed_port()}/0", "t", retry_seconds=0.0)
    try:
        for _ in range(5):
            assert await throttle.hit(READS, "ada")
            assert not await throttle.hit(LOGINS, "ada")
            await throttle.clear(LOGINS, "ada")
        reads, logins = await throttle.usage(READS, "ada"), await throttle.usage(LOGINS, "ada")
    finally:
        await throttle.close()
    assert (reads.exhausted, reads.counted) == (False, False)
    assert (logins.exhausted, logins.counted, logins.retry_after) == (True, False, 0.0)
    warnings = [r for r in caplog.records if r.name == "servicekit.throttle"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "unreachable" in message
    assert "ConnectionError" in message


async def test_during_an_outage_redis_is_tried_again_only_after_retry_seconds() -> None:
    clock = Clock()
    throttle = redis_throttle(
        f"redis://127.0.0.1:{closed_port()}/0", "t", retry_seconds=5.0, clock=clock
    )
    tried: list[str] = []
    real = throttle._limiter.hit

    async def counted(*args: object, **kwargs: object) -> bool:
        tried.append("hit")
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    throttle._limiter.hit = counted  # type: ignore[method-assign]
    try:
        for _ in range(3):
            await throttle.hit(READS, "ada")
        clock.now += 5.0
        await throttle.hit(READS, "ada")
    finally:
        await throttle.close()
    assert tried == ["hit", "hit"]


async def test_redis_going_away_and_back_is_logged_once_each_way(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="servicekit.throttle")
    host, port = "127.0.0.1", int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(host, port)
    proxied = await proxy.up()
    throttle = redis_throttle(f"redis://{host}:{proxied}/0", redis_prefix, retry_seconds=0.0)
    try:
        assert await throttle.hit(LOGINS, "ada")
        await proxy.down()
        for _ in range(3):
            assert not await throttle.hit(LOGINS, "ada")
        await proxy.up()
        assert await throttle.hit(LOGINS, "ada")
        assert await throttle.hit(LOGINS, "ada")
        assert (await throttle.usage(LOGINS, "ada")).used == 3
    finally:
        await throttle.close()
        await proxy.down()
    messages = [r.getMessage() for r in caplog.records if r.name == "servicekit.throttle"]
    assert len(messages) == 2, messages
    assert "unreachable" in messages[0]
    assert "is back after" in messages[1]
    assert "3 checks were answered without it" in messages[1]
    assert f"redis://{host}:{proxied}/0" in messages[0]


def test_the_log_names_redis_without_its_password() -> None:
    settings = ThrottleSettings(redis_url="redis://user:s3cret@cache.internal:6380/2")
    throttle = Throttle.from_settings(settings)
    assert throttle.where == "Redis at redis://cache.internal:6380/2"
    assert "s3cret" not in repr(settings)


# --- settings -------------------------------------------------------------------------------


def test_a_blank_redis_url_counts_in_process() -> None:
    assert ThrottleSettings(redis_url="  ").redis_url is None
    assert Throttle.from_settings(ThrottleSettings()).where == "this process"


@pytest.mark.parametrize("url", ["http://cache:6379", "cache:6379", "memcached://x"])
def test_a_redis_url_must_be_one(url: str) -> None:
    with pytest.raises(ValueError, match=r"redis:// or rediss://"):
        ThrottleSettings(redis_url=url)


def test_a_limit_needs_an_amount_and_a_window() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Limit("x", amount=0, window_seconds=60, fail_open=True)
    with pytest.raises(ValueError, match="at least 1"):
        Limit("x", amount=1, window_seconds=0, fail_open=True)
