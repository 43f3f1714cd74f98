"""users_service.throttling: the rules of logins, sign-ups and client grants, in process."""

from __future__ import annotations

import asyncio

import pytest

from servicekit.errors import ResourceExhausted, Unavailable
from servicekit.settings import ThrottleSettings, load_settings
from servicekit.throttle import Throttle
from tests.support.gateway import closed_port
from users_service.settings import UsersSettings
from users_service.throttling import LoginRules, Throttling

RULES = LoginRules(
    window_seconds=60,
    failures_per_pair=5,
    failures_per_address=8,
    failures_per_account=12,
    free_failures=2,
    delay_seconds=0.1,
    max_delay_seconds=0.3,
    signups_per_address=2,
    signup_window_seconds=60,
)
ATTACKER, OWNER = "203.0.113.9", "198.51.100.7"


class Sleeps:
    """Records the delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def limits(sleeps: Sleeps) -> Throttling:
    return Throttling(Throttle.in_process(), RULES, sleep=sleeps)


async def fail(limits: Throttling, account: str, address: str, times: int = 1) -> None:
    for _ in range(times):
        attempt = await limits.admit_login(account, address)
        await attempt.failed()


async def refusal(limits: Throttling, account: str, address: str) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        await limits.admit_login(account, address)
    return caught.value


def test_the_delay_doubles_past_the_free_failures_up_to_its_maximum() -> None:
    assert [RULES.delay(n) for n in range(7)] == [0, 0, 0.1, 0.2, 0.3, 0.3, 0.3]
    defaults = LoginRules()
    assert [defaults.delay(n) for n in range(3, 7)] == [0.5, 1.0, 2.0, 2.0]


async def test_failures_of_a_pair_grow_its_delay_then_lock_it(
    limits: Throttling, sleeps: Sleeps
) -> None:
    await fail(limits, "ada", ATTACKER, times=5)
    assert sleeps.delays == [0.1, 0.2, 0.3]
    refused = await refusal(limits, "ada", ATTACKER)
    assert refused.reason == "TOO_MANY_FAILED_LOGINS"
    assert refused.retry_after is not None
    assert 1 <= refused.retry_after <= RULES.window_seconds
    assert "too many failed logins; retry in" in refused.message
    # Refused attempts wait for nothing and count nothing.
    assert sleeps.delays == [0.1, 0.2, 0.3]


async def test_the_owners_address_still_logs_in_while_the_attackers_is_locked(
    limits: Throttling, sleeps: Sleeps
) -> None:
    await fail(limits, "ada", ATTACKER, times=5)
    await refusal(limits, "ada", ATTACKER)
    owner = await limits.admit_login("ada", OWNER)
    await owner.succeeded()
    assert sleeps.delays == [0.1, 0.2, 0.3]  # and no delay for the owner


async def test_a_success_clears_only_its_own_pair(limits: Throttling, sleeps: Sleeps) -> None:
    await fail(limits, "ada", ATTACKER, times=5)
    await fail(limits, "ada", OWNER, times=3)
    owner = await limits.admit_login("ada", OWNER)
    await owner.succeeded()
    # The attacker's pair is still locked; the owner's starts again without delays.
    await refusal(limits, "ada", ATTACKER)
    sleeps.delays.clear()
    await limits.admit_login("ada", OWNER)
    assert sleeps.delays == []


async def test_an_address_is_locked_across_accounts(limits: Throttling) -> None:
    for account in ("a1", "a2", "a3", "a4"):
        await fail(limits, account, ATTACKER, times=2)
    refused = await refusal(limits, "a5", ATTACKER)
    assert refused.reason == "TOO_MANY_FAILED_LOGINS"
    await limits.admit_login("a5", OWNER)


async def test_an_account_is_locked_across_addresses(limits: Throttling) -> None:
    for n in range(4):
        await fail(limits, "ada", f"203.0.113.{n}", times=3)
    refused = await refusal(limits, "ada", OWNER)
    assert refused.reason == "TOO_MANY_FAILED_LOGINS"
    await limits.admit_login("bob", OWNER)


async def test_a_success_does_not_take_back_the_account_count(limits: Throttling) -> None:
    for n in range(4):
        await fail(limits, "ada", f"203.0.113.{n}", times=3)
    await refusal(limits, "ada", OWNER)
    await refusal(limits, "ada", "203.0.113.0")


async def test_an_address_holds_only_so_many_logins_in_progress(limits: Throttling) -> None:
    held = [await limits.admit_login(f"a{n}", ATTACKER) for n in range(4)]
    refused = await refusal(limits, "a5", ATTACKER)
    assert refused.reason == "TOO_MANY_LOGINS_IN_PROGRESS"
    assert refused.retry_after == 1.0
    # Another address finds room at once, and one ended attempt frees one place.
    await (await limits.admit_login("ada", OWNER)).succeeded()
    await held[0].failed()
    with await limits.admit_login("a5", ATTACKER):
        await refusal(limits, "a6", ATTACKER)
    assert limits.in_progress(ATTACKER) == 3
    for attempt in held:
        attempt.end()
    assert limits.in_progress(ATTACKER) == 0


async def test_an_attempt_refused_or_cancelled_gives_its_place_back(sleeps: Sleeps) -> None:
    rules = LoginRules(failures_per_pair=2, free_failures=1, in_progress_per_address=1)

    delaying = asyncio.Event()

    async def never(_seconds: float) -> None:
        delaying.set()
        await asyncio.Event().wait()

    waiting = Throttling(Throttle.in_process(), rules, sleep=never)
    await (await waiting.admit_login("ada", ATTACKER)).failed()
    delayed = asyncio.create_task(waiting.admit_login("ada", ATTACKER))
    await delaying.wait()
    assert waiting.in_progress(ATTACKER) == 1
    delayed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await delayed
    assert waiting.in_progress(ATTACKER) == 0
    limits = Throttling(Throttle.in_process(), rules, sleep=sleeps)
    await fail(limits, "ada", ATTACKER, times=2)
    assert (await refusal(limits, "ada", ATTACKER)).reason == "TOO_MANY_FAILED_LOGINS"
    assert limits.in_progress(ATTACKER) == 0


async def test_sign_ups_are_counted_per_address(limits: Throttling) -> None:
    await limits.admit_signup(ATTACKER)
    await limits.admit_signup(ATTACKER)
    with pytest.raises(ResourceExhausted) as caught:
        await limits.admit_signup(ATTACKER)
    assert caught.value.reason == "TOO_MANY_SIGNUPS"
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1
    await limits.admit_signup(OWNER)


async def test_failed_client_grants_lock_the_client_id_at_that_address(
    limits: Throttling,
) -> None:
    for _ in range(RULES.failures_per_pair):
        attempt = await limits.admit_client("gateway", ATTACKER)
        await attempt.failed()
    with pytest.raises(ResourceExhausted) as caught:
        await limits.admit_client("gateway", ATTACKER)
    assert caught.value.reason == "TOO_MANY_FAILED_GRANTS"
    # The real gateway, from its own address, still gets its token.
    attempt = await limits.admit_client("gateway", OWNER)
    await attempt.succeeded()


async def test_a_successful_client_grant_clears_its_failures(limits: Throttling) -> None:
    for _ in range(RULES.failures_per_pair - 1):
        await (await limits.admit_client("gateway", OWNER)).failed()
    await (await limits.admit_client("gateway", OWNER)).succeeded()
    for _ in range(RULES.failures_per_pair - 1):
        await (await limits.admit_client("gateway", OWNER)).failed()
    await limits.admit_client("gateway", OWNER)


async def test_an_unreachable_store_pauses_logins_but_not_sign_ups_or_grants() -> None:
    settings = ThrottleSettings(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    throttle = Throttle.from_settings(settings)
    limits = Throttling(throttle, RULES, sleep=Sleeps())
    try:
        with pytest.raises(Unavailable) as caught:
            await limits.admit_login("ada", OWNER)
        assert caught.value.reason == "THROTTLE_UNAVAILABLE"
        assert caught.value.retry_after == 1.0
        for _ in range(RULES.signups_per_address + 1):
            await limits.admit_signup(OWNER)
        attempt = await limits.admit_client("gateway", OWNER)
        await attempt.failed()
        await attempt.succeeded()
    finally:
        await throttle.close()


def test_the_settings_default_to_the_rules_and_read_redis_from_users_redis_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("USERS_REDIS_URL", "USERS_LOGIN_FAILURES_PER_PAIR", "USERS_REDIS_KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    assert UsersSettings().login_rules() == LoginRules()
    assert UsersSettings().redis_url is None
    monkeypatch.setenv("USERS_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("USERS_REDIS_KEY_PREFIX", "staging")
    monkeypatch.setenv("USERS_LOGIN_FAILURES_PER_PAIR", "5")
    settings = load_settings(UsersSettings)
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == "redis://cache:6379/1"
    assert settings.redis_key_prefix == "staging"
    assert settings.login_rules().failures_per_pair == 5
