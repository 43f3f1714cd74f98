"""Async SQLAlchemy engines for the services, on PostgreSQL (asyncpg) or SQLite."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from servicekit import metrics, telemetry
from servicekit.errors import Unavailable
from servicekit.outages import Outage
from servicekit.settings import ServiceSettings

T = TypeVar("T")

log = logging.getLogger("servicekit.database")


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(settings: ServiceSettings, *, application_name: str) -> AsyncEngine:
    """The process's engine, with pool and timeouts from settings."""
    # aiosqlite traces every statement with its parameters (password hashes among
    # them) at DEBUG; no log level of ours may turn that on.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    url = make_url(settings.database_url)
    if is_sqlite(url):
        engine = create_async_engine(
            url,
            pool_pre_ping=settings.db_pool_pre_ping,
            connect_args={"timeout": settings.db_pool_timeout_seconds},
        )
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
    else:
        engine = create_async_engine(
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_seconds,
            pool_pre_ping=settings.db_pool_pre_ping,
            connect_args={
                "timeout": settings.db_connect_timeout_seconds,
                "server_settings": {"application_name": application_name},
            },
        )
    telemetry.instrument_engine(engine)
    return engine


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; synchronous=FULL makes a commit
    # durable before it is acknowledged; busy_timeout makes writers queue, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """An engine, its autocommit twin for reads, and how its failures look to callers.

    `read` and `write` run a repository's synchronous SQLAlchemy code (Core statements
    on a `Connection`) in one greenlet on the async engine - checkout, statement and
    return in a single hop from the event loop, instead of one hop for each, which is
    most of what SQLAlchemy's async layer costs on a one-row lookup.
    """

    def __init__(self, engine: AsyncEngine, *, what: str) -> None:
        self.engine = engine
        self._what = what
        # SQLite takes one writer at a time and makes the others poll with growing
        # sleeps (busy_timeout), which turns a burst of writes into a long tail; taking
        # turns here instead costs nothing. Other processes still meet busy_timeout.
        self._write_turn = asyncio.Lock() if is_sqlite(engine.url) else None
        # A read is one statement: without BEGIN/ROLLBACK around it, it costs one
        # round trip instead of three.
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT").sync_engine
        self._outage = Outage(
            what,
            log=log,
            began="the %s database is unavailable: %s",
            over="the %s database is back after %.1fs (%d calls failed meanwhile)",
        )
        # Each checkout's wait for a connection, while the process records metrics.
        self._waited: Callable[[float], None] | None = None
        if metrics.recording():
            self._waited = metrics.DB_POOL_WAIT.labels(what).observe
            pool: Any = engine.sync_engine.pool
            if hasattr(pool, "checkedout"):  # a QueuePool (SQLite's NullPool has none)
                metrics.gauge_of(metrics.DB_POOL_CONNECTIONS, pool.checkedout, what, "checked_out")
                metrics.gauge_of(metrics.DB_POOL_CONNECTIONS, pool.checkedin, what, "idle")

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work`'s result on an autocommit connection.

        A pooled connection that turns out dead (the database restarted, an admin
        killed it) invalidates the pool and the read is tried once more on a new
        connection: reads are idempotent, so this is what keeps the pool healthy
        without a ping before every checkout.
        """
        try:
            result: T = await greenlet_spawn(_run, self._reader.connect, work, self._waited)
        except Exception as exc:
            # Connecting can fail with the driver's own OSError, unwrapped.
            if not (isinstance(exc, DBAPIError) and exc.connection_invalidated):
                self._raise_if_unavailable(exc)
                raise
        else:
            self._outage.ended()
            return result
        try:
            result = await greenlet_spawn(_run, self._reader.connect, work, self._waited)
        except Exception as exc:
            self._raise_if_unavailable(exc)
            raise
        self._outage.ended()
        return result

    async def write(self, work: Callable[[Connection], T]) -> T:
        """`work`'s result in a transaction, committed when it returns.

        Never retried: after a lost connection nobody knows whether the commit landed.
        """
        try:
            if self._write_turn is None:
                result: T = await greenlet_spawn(
                    _run, self.engine.sync_engine.begin, work, self._waited
                )
            else:
                async with self._write_turn:
                    result = await greenlet_spawn(
                        _run, self.engine.sync_engine.begin, work, self._waited
                    )
        except Exception as exc:
            self._raise_if_unavailable(exc)
            raise
        self._outage.ended()
        return result

    def _raise_if_unavailable(self, exc: Exception) -> None:
        """An unreachable database is Unavailable (retryable), never INTERNAL."""
        if is_unavailable(exc):
            # A full pool or a busy SQLite is load, not an outage.
            if not isinstance(exc, PoolTimeoutError) and not is_sqlite_busy(
                getattr(exc, "orig", None)
            ):
                self._outage.failed(outage_cause(exc))
            raise Unavailable(
                f"the {self._what} database is unavailable; retry shortly", retry_after=1
            ) from exc


def outage_cause(exc: BaseException) -> str:
    """What made the database unreachable, without SQLAlchemy's wrapper text (which
    quotes the statement and its parameters: password hashes, emails)."""
    cause: BaseException = exc
    while isinstance(cause, DBAPIError) and cause.orig is not None:
        cause = cause.orig
    if isinstance(cause, DBAPIError):
        return type(cause).__name__
    text = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _run(
    open_connection: Callable[[], AbstractContextManager[Connection]],
    work: Callable[[Connection], T],
    waited: Callable[[float], None] | None,
) -> T:
    """`work` on a connection from `open_connection` (a checkout, or a transaction
    that commits when `work` returns), recording the wait for it when `waited`."""
    started = time.perf_counter()
    with open_connection() as connection:
        if waited is not None:
            waited(time.perf_counter() - started)
        return work(connection)


def utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime: SQLite hands back naive ones, all stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached right now (retryable)."""
    if isinstance(exc, PoolTimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, InterfaceError):
            return True
        original = exc.orig
        if isinstance(exc, OperationalError) and is_sqlite_busy(original):
            return True
        return _is_connection_error(original) or _is_connection_error(
            getattr(original, "__cause__", None)
        )
    return _is_connection_error(exc)


def is_sqlite_busy(exc: BaseException | None) -> bool:
    return exc is not None and "database is locked" in str(exc)


def _is_connection_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    # asyncpg's connection-level errors, matched by name so that this module does
    # not import asyncpg when the service runs on SQLite.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "PostgresConnectionError",
            "ConnectionDoesNotExistError",
            "CannotConnectNowError",
            "AdminShutdownError",
            "CrashShutdownError",
            "TooManyConnectionsError",
            "ConnectionFailureError",
        }
    )
