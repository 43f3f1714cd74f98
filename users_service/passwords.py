"""argon2id password hashing, run off the event loop on a small thread pool.

argon2-cffi releases the GIL while it hashes, so the loop keeps serving other calls;
the pool's size bounds how many cores (and how much memory) logins may take at once.

The queue in front of the pool is bounded too: at most `max_waiting` hashes wait for a
thread. Past that a call is refused at once (RESOURCE_EXHAUSTED, reason
PASSWORD_HASH_QUEUE_FULL, retry after a second) instead of queueing into its deadline:
a flood of logins then costs its senders refusals, not everyone's logins timeouts.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Gauge

from servicekit.errors import ResourceExhausted
from servicekit.metrics import REGISTRY

# The queue in front of the hashing threads, read at each scrape (users_service.server).
PASSWORD_HASH_PENDING = Gauge(
    "tandem_password_hash_pending",
    "Password hashes running or waiting for a thread (refused past workers + queue).",
    registry=REGISTRY,
)

T = TypeVar("T")

# Hashes that may wait for a thread beyond those hashing (USERS_PASSWORD_HASH_QUEUE).
MAX_WAITING = 32
# What a refused call is told to wait: a hash takes tens of milliseconds.
QUEUE_FULL_RETRY_SECONDS = 1.0


class PasswordHasher:
    def __init__(
        self,
        *,
        memory_kib: int,
        time_cost: int,
        parallelism: int,
        workers: int,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._argon2 = _Argon2(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        # Hashes submitted and not yet finished (running or waiting). Released by the
        # future itself, on a worker thread, once the hash really ends: a caller that
        # gave up (its deadline) frees no place while its hash still runs.
        self._capacity = workers + max_waiting
        self._pending = 0
        self._lock = threading.Lock()
        # Verified against when there is no account, so that an unknown email costs
        # the same time as a wrong password.
        self._decoy = self._argon2.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await self._run(self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; with no hash, spends the time of a real check."""
        return await self._run(self._verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the current ones."""
        return self._argon2.check_needs_rehash(password_hash)

    @property
    def pending(self) -> int:
        """Hashes running or waiting for a thread."""
        return self._pending

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash or self._decoy, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._pending >= self._capacity:
                raise ResourceExhausted(
                    "too many passwords are being checked at once; retry shortly",
                    reason="PASSWORD_HASH_QUEUE_FULL",
                    retry_after=QUEUE_FULL_RETRY_SECONDS,
                )
            self._pending += 1
        try:
            future = self._executor.submit(function, *args)
        except RuntimeError:  # closed: shutting down
            self._release(None)
            raise
        future.add_done_callback(self._release)
        # Cancelling the wait (a deadline) cancels a hash that has not started yet.
        return await asyncio.wrap_future(future)

    def _release(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._pending -= 1
