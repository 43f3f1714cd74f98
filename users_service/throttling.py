"""How often a client may guess passwords or sign up: the users service's limits.

**Logins** (the password grant of `IssueToken`, and `AuthenticateUser`). Failures are
counted, never successes, under three keys, each over `USERS_LOGIN_WINDOW_SECONDS`
(15 minutes by default):

    key                   default limit     what it stops
    (account, address)    10 failures       guessing one account's password from one address
    address               50 failures       one address trying many accounts (stuffing, spraying)
    account               100 failures      many addresses guessing one account

The account is the login's normalised email, hashed (the store never holds emails), and
counted whether or not an account has it, so a refusal tells nothing about which emails
exist. The address is the client's IP (an IPv6 one as its /64: one host holds a whole
/64); see users_service.client_address for whose word it is.

Every attempt is checked before the account is read and the password hashed: if any of
the three is used up, RESOURCE_EXHAUSTED (reason TOO_MANY_FAILED_LOGINS) with RetryInfo
saying when the last of them frees a place. A refused attempt costs no argon2 and
counts nothing. Past `USERS_LOGIN_FREE_FAILURES` (3) failures of its pair, an attempt
first waits `USERS_LOGIN_DELAY_SECONDS` (0.5) doubled for each failure beyond them, at
most `USERS_LOGIN_MAX_DELAY_SECONDS` (2): so 0.5, 1, 2, 2, ... s, then the refusal.

A success clears its own pair's count, and only that: the owner logging in from their
address does not unlock the attacker's address (its pair, nor the address count), nor
take back the failures many addresses added to the account count. The owner's address
is refused only by its own pair and address counts, or once the account count is used
up, which is the price of stopping a distributed guess: it takes failures from at least
account / pair (10) addresses, and lasts at most a window.

**Logins in progress** per address: at most `USERS_LOGINS_IN_PROGRESS_PER_ADDRESS` (4)
attempts of one address may be admitted and not yet answered (waiting out a delay,
reading the account, hashing) in this process; past that, RESOURCE_EXHAUSTED (reason
TOO_MANY_LOGINS_IN_PROGRESS, retry after a second) at once, before anything is counted
or read. The counts above are read before the hash and added to after it, so without
this a burst of guesses sent at once would all pass them and fill the password-hash
queue (workers + `USERS_PASSWORD_HASH_QUEUE`), which every address shares: the owner's
login behind them would wait, or be refused PASSWORD_HASH_QUEUE_FULL. With it one
address holds at most a few places of that queue, and any other address finds room.
It is counted in each process (a replica protects its own hash queue), not in Redis.

**Sign-ups**: a service's `CreateUser` (the sign-up path: the gateway's) counts per
address before the hash, `USERS_SIGNUPS_PER_ADDRESS` (20) per
`USERS_SIGNUP_WINDOW_SECONDS` (an hour); past it TOO_MANY_SIGNUPS. An admin making an
account is not a sign-up and is not counted.

**Client credentials**: failed grants count per (client id, address) under the pair
limit, and TOO_MANY_FAILED_GRANTS refuses past it; a success clears the pair. The
refresh-token grant is not limited: its tokens are 256 random bits, nothing to guess.

Every refusal above carries ErrorInfo metadata `scope`: `address` when it holds for every
attempt of the address until its RetryInfo runs out (logins in progress, the address
count, sign-ups), `account_address` when only for the same account or client id from
that address. The gateway answers a client's retries within that time itself.

**When the store is unreachable** (Redis, when configured): logins fail closed, with
UNAVAILABLE (THROTTLE_UNAVAILABLE) and a short retry delay - an outage must not mean
unlimited guesses; sign-ups and client credentials fail open - a client secret is 256
random bits, and an outage must not stop every service renewing its token.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from servicekit.errors import ResourceExhausted, Unavailable, retry_seconds
from servicekit.throttle import ACCOUNT_ADDRESS, ADDRESS, SCOPE, Limit, Throttle, Usage

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LoginRules:
    """The numbers of the rules above (UsersSettings holds their defaults)."""

    window_seconds: int = 900
    failures_per_pair: int = 10
    failures_per_address: int = 50
    failures_per_account: int = 100
    free_failures: int = 3
    delay_seconds: float = 0.5
    max_delay_seconds: float = 2.0
    signups_per_address: int = 20
    signup_window_seconds: int = 3600
    in_progress_per_address: int = 4

    def delay(self, failures: int) -> float:
        """How long an attempt waits after its pair's `failures`."""
        beyond = failures - self.free_failures
        if beyond < 0:
            return 0.0
        return min(self.delay_seconds * 2.0**beyond, self.max_delay_seconds)


# What an address over its logins in progress is told to wait: an attempt takes a hash
# (tens of milliseconds), or at most the longest delay.
IN_PROGRESS_RETRY_SECONDS = 1.0


class LoginAttempt:
    """One admitted password check, holding one of its address's places in progress;
    tell it how it ended. `with` it, so that the place is given back however it ends."""

    def __init__(self, throttling: Throttling, account: str, address: str, failures: int):
        self._throttling = throttling
        self._account = account
        self._address = address
        self._failures = failures
        self._ended = False

    async def failed(self) -> None:
        self.end()
        await self._throttling.count_login_failure(self._account, self._address)

    async def succeeded(self) -> None:
        self.end()
        if self._failures:
            await self._throttling.clear_pair(self._account, self._address)

    def end(self) -> None:
        """Give the address's place back (once)."""
        if not self._ended:
            self._ended = True
            self._throttling.release(self._address)

    def __enter__(self) -> LoginAttempt:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.end()


class ClientAttempt:
    """One admitted client-credentials grant; tell it how it ended."""

    def __init__(self, throttle: Throttle, limit: Limit, key: tuple[str, str], failures: int):
        self._throttle = throttle
        self._limit = limit
        self._key = key
        self._failures = failures

    async def failed(self) -> None:
        await self._throttle.hit(self._limit, *self._key)

    async def succeeded(self) -> None:
        if self._failures:
            await self._throttle.clear(self._limit, *self._key)


class Throttling:
    def __init__(
        self, throttle: Throttle, rules: LoginRules, *, sleep: Sleep = asyncio.sleep
    ) -> None:
        """`sleep` waits out an attempt's delay (tests record it instead)."""
        self._throttle = throttle
        self.rules = rules
        self._sleep = sleep
        window = rules.window_seconds
        # Logins fail closed; the others open (see the module's docstring).
        self._pair = Limit("login-pair", rules.failures_per_pair, window, fail_open=False)
        self._address = Limit("login-address", rules.failures_per_address, window, fail_open=False)
        self._account = Limit("login-account", rules.failures_per_account, window, fail_open=False)
        self._signups = Limit(
            "signup-address", rules.signups_per_address, rules.signup_window_seconds, fail_open=True
        )
        self._clients = Limit("client-grant", rules.failures_per_pair, window, fail_open=True)
        # Attempts admitted and not yet ended, per address (only addresses with some).
        self._in_progress: dict[str, int] = {}

    async def admit_login(self, email_key: str, address: str) -> LoginAttempt:
        """Let a password check go ahead, after its delay; refuse it if its address has
        too many in progress or a limit is used up (ResourceExhausted), or if the counts
        cannot be read (Unavailable). The attempt holds a place until it ends."""
        self._take(address)
        try:
            account = _hashed(email_key)
            pair, per_address, per_account = await asyncio.gather(
                self._throttle.usage(self._pair, account, address),
                self._throttle.usage(self._address, address),
                self._throttle.usage(self._account, account),
            )
            _refuse_if_used_up(
                (pair, per_address, per_account),
                reason="TOO_MANY_FAILED_LOGINS",
                what="too many failed logins",
                scope=_scope(per_address, (pair, per_account)),
            )
            delay = self.rules.delay(pair.used)
            if delay:
                await self._sleep(delay)
        except BaseException:
            self.release(address)
            raise
        return LoginAttempt(self, account, address, pair.used)

    def in_progress(self, address: str) -> int:
        """The address's attempts admitted and not yet ended."""
        return self._in_progress.get(address, 0)

    def _take(self, address: str) -> None:
        held = self._in_progress.get(address, 0)
        if held >= self.rules.in_progress_per_address:
            raise ResourceExhausted(
                "too many logins from this address are in progress; retry in "
                f"{retry_seconds(IN_PROGRESS_RETRY_SECONDS)} s",
                reason="TOO_MANY_LOGINS_IN_PROGRESS",
                retry_after=IN_PROGRESS_RETRY_SECONDS,
                metadata={SCOPE: ADDRESS},
            )
        self._in_progress[address] = held + 1

    def release(self, address: str) -> None:
        held = self._in_progress.get(address, 0) - 1
        if held > 0:
            self._in_progress[address] = held
        else:
            self._in_progress.pop(address, None)

    async def count_login_failure(self, account: str, address: str) -> None:
        await asyncio.gather(
            self._throttle.hit(self._pair, account, address),
            self._throttle.hit(self._address, address),
            self._throttle.hit(self._account, account),
        )

    async def clear_pair(self, account: str, address: str) -> None:
        await self._throttle.clear(self._pair, account, address)

    async def admit_signup(self, address: str) -> None:
        """Count a sign-up from `address`; ResourceExhausted past the limit."""
        if await self._throttle.hit(self._signups, address):
            return
        usage = await self._throttle.usage(self._signups, address)
        _refuse_if_used_up(
            (usage,),
            reason="TOO_MANY_SIGNUPS",
            what="too many sign-ups from this address",
            scope=ADDRESS,
        )

    async def admit_client(self, client_id: str, address: str) -> ClientAttempt:
        """Let a client-credentials grant go ahead; ResourceExhausted after too many
        failures of this client id from this address."""
        key = (client_id, address)
        usage = await self._throttle.usage(self._clients, *key)
        _refuse_if_used_up(
            (usage,),
            reason="TOO_MANY_FAILED_GRANTS",
            what="too many failed client grants",
            scope=ACCOUNT_ADDRESS,
        )
        return ClientAttempt(self._throttle, self._clients, key, usage.used)


def _scope(per_address: Usage, others: tuple[Usage, ...]) -> str:
    """What a refusal holds for: the whole address when its own count is what refuses
    longest, else the account from that address."""
    longest = max((u.retry_after for u in others if u.exhausted), default=0.0)
    if per_address.exhausted and per_address.retry_after >= longest:
        return ADDRESS
    return ACCOUNT_ADDRESS


def _refuse_if_used_up(usages: tuple[Usage, ...], *, reason: str, what: str, scope: str) -> None:
    used_up = [u for u in usages if u.exhausted]
    if not used_up:
        return
    retry_after = max(u.retry_after for u in used_up)
    if not all(u.counted for u in used_up):
        raise Unavailable(
            "logins are paused: their limits cannot be checked; retry shortly",
            reason="THROTTLE_UNAVAILABLE",
            retry_after=retry_after,
        )
    raise ResourceExhausted(
        f"{what}; retry in {retry_seconds(retry_after)} s",
        reason=reason,
        retry_after=retry_after,
        metadata={SCOPE: scope},
    )


def _hashed(email_key: str) -> str:
    # Keys are looked up, never read back: 128 bits tell accounts apart.
    return hashlib.sha256(email_key.encode()).hexdigest()[:32]
