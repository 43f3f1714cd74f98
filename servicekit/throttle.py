"""Rate limits, counted alike by every service: the `limits` library's asyncio API.

    throttle = Throttle.from_settings(settings)   # Redis when <PREFIX>REDIS_URL is set
    PER_PAIR = Limit("login-pair", amount=10, window_seconds=900, fail_open=False)
    usage = await throttle.usage(PER_PAIR, account, address)
    if usage.exhausted:
        raise ResourceExhausted("...", retry_after=usage.retry_after)
    await throttle.hit(PER_PAIR, account, address)

Where it counts: in Redis when `<PREFIX>REDIS_URL` is set, shared by every replica; in
this process otherwise (`make run` needs nothing), where each replica counts on its own,
so N replicas let up to N times a limit through.

The strategy is the sliding window counter: two counters per key (this window and the
last, the last one weighted by how much of it still overlaps), updated atomically (a
Lua script in Redis). The fixed window lets twice the limit through across a window
edge; the moving window is exact but stores one entry per unit counted (a quota of
provider tokens would store each token) and, in process, sweeps its entries with a
thread hop per key. The counter's approximation errs by at most the last window's
share, which is fine for limits that stop abuse.

When the store cannot be reached, each `Limit` says what to do: fail open (count
nothing, let the call through: reads, and anything an outage must not stop) or fail
closed (refuse: logins, where an outage must not mean unlimited guesses). The outage is
logged once at WARNING when it begins and once when the store answers again, never per
call; meanwhile the store is tried again at most every `retry_seconds`, so calls during
an outage do not each wait out a connect timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from servicekit.outages import Outage

if TYPE_CHECKING:
    from servicekit.settings import ThrottleSettings

__all__ = ["ACCOUNT_ADDRESS", "ADDRESS", "SCOPE", "Limit", "Throttle", "Usage"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# How soon, during an outage, the store is tried again.
RETRY_SECONDS = 1.0
# How often, at most, the in-process store drops expired keys.
SWEEP_SECONDS = 1.0

# The ErrorInfo metadata of a RESOURCE_EXHAUSTED refusal that says what it holds for,
# until its RetryInfo runs out: every attempt of the client's address (ADDRESS), or only
# those for the same account (or client id) from that address (ACCOUNT_ADDRESS). The
# users service sets it (users_service.throttling); the gateway honours it without
# asking again (gateway.refusals).
SCOPE = "scope"
ADDRESS = "address"
ACCOUNT_ADDRESS = "account_address"


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `amount` per `window_seconds`, counted per key under `name`."""

    name: str
    amount: int
    window_seconds: int
    # When the store is unreachable: let the call through (True) or refuse it (False).
    fail_open: bool
    item: RateLimitItem = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.amount < 1 or self.window_seconds < 1:
            raise ValueError(f"limit {self.name}: amount and window must be at least 1")
        item = RateLimitItemPerSecond(self.amount, self.window_seconds, namespace=self.name)
        object.__setattr__(self, "item", item)


@dataclass(frozen=True, slots=True)
class Usage:
    """How much of a limit one key has used."""

    used: int
    remaining: int
    # Seconds until one more fits; 0 while one fits now.
    retry_after: float
    # False: the store was unreachable, and the limit's fail mode made this answer up.
    counted: bool = True

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0


class Throttle:
    """Counts `Limit`s in one store; shared by everything in a process that limits."""

    def __init__(
        self,
        storage: Storage,
        *,
        where: str = "this process",
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        pool: ConnectionPool | None = None,
    ) -> None:
        """`where` names the store in the log ("Redis at redis://host:6379/0", never
        with a password); `pool` is the Redis connection pool to close with it."""
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._storage = storage
        self._where = where
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._pool = pool
        # In process there is nothing to lose; a ValueError there would be a bug.
        base = () if isinstance(storage, MemoryStorage) else storage.base_exceptions
        self._errors: tuple[type[Exception], ...] = (
            StorageError,
            *(base if isinstance(base, tuple) else (base,)),
        )
        self._outage = Outage(
            where,
            log=log,
            began="rate limits: %s is unreachable (%s); until it is back, limits that fail "
            "open let calls through uncounted and the others refuse them",
            over="rate limits: %s is back after %.1f s; %d checks were answered without it",
            clock=clock,
        )
        self._retry_at = 0.0

    @classmethod
    def in_process(cls) -> Throttle:
        return cls(_SweptMemoryStorage())

    @classmethod
    def from_settings(
        cls,
        settings: ThrottleSettings,
        *,
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> Throttle:
        """Redis when the settings name one, else this process."""
        if settings.redis_url is None:
            return cls.in_process()
        url = settings.redis_url.get_secret_value()
        timeout = settings.redis_timeout_seconds
        # One quick retry on a fresh connection (the pooled one may predate a Redis
        # restart); redis-py's default backs off for seconds, while a login waits.
        pool = ConnectionPool.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        options: dict[str, Any] = {"connection_pool": pool}
        storage = RedisStorage(
            url, implementation="redispy", key_prefix=settings.redis_key_prefix, **options
        )
        where = f"Redis at {_redacted(url)}"
        return cls(storage, where=where, retry_seconds=retry_seconds, clock=clock, pool=pool)

    @property
    def where(self) -> str:
        return self._where

    async def usage(self, limit: Limit, *key: str) -> Usage:
        """The key's use of `limit`, without counting anything."""
        stats = await self._ask(lambda: self._limiter.get_window_stats(limit.item, *key))
        if stats is None:
            if limit.fail_open:
                return Usage(0, limit.amount, 0.0, counted=False)
            return Usage(limit.amount, 0, self._retry_seconds, counted=False)
        remaining = max(0, stats.remaining)
        # Whole seconds, as a window is: Retry-After is in seconds anyway.
        retry_after = max(1.0, stats.reset_time - time.time()) if remaining == 0 else 0.0
        return Usage(limit.amount - remaining, remaining, retry_after)

    async def hit(self, limit: Limit, *key: str, cost: int = 1) -> bool:
        """Count `cost` against the key; False (and nothing counted) if it does not fit."""
        fits = await self._ask(lambda: self._limiter.hit(limit.item, *key, cost=cost))
        return limit.fail_open if fits is None else fits

    async def clear(self, limit: Limit, *key: str) -> None:
        """Forget what the key used of `limit`."""
        await self._ask(lambda: self._limiter.clear(limit.item, *key))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    async def _ask(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """The store's answer; None while it cannot be reached."""
        if self._outage.ongoing and self._clock() < self._retry_at:
            self._outage.passed()
            return None
        try:
            answer = await call()
        except self._errors as exc:
            self._retry_at = self._clock() + self._retry_seconds
            cause = exc.storage_error if isinstance(exc, StorageError) else exc
            self._outage.failed(f"{type(cause).__name__}: {cause}")
            return None
        self._outage.ended()
        return answer


class _SweptMemoryStorage(MemoryStorage):
    """The library's in-process storage, sweeping expired keys at most every
    SWEEP_SECONDS. Its own sweep is started after every count that finds the last one
    done, and walks every key on the event loop: with 60,000 keys (a spray of failed
    logins) that added about 170 µs to every call. Expired keys are also dropped when
    read, so a slower sweep only lets forgotten ones linger a little longer."""

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - overrides it
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_SECONDS
        await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def _redacted(url: str) -> str:
    """The URL without its credentials, for the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
