"""The benchmark's own PostgreSQL database: create, migrate, seed, drop, clean up.

Each run creates `tandem_bench_users_<pid>_<hex>` on the admin server, applies the
users service's real migrations with `python -m users_service migrate`, fills the
`users` table with COPY, and drops the database at the end. A run that was killed
leaves its database behind; the next run drops it once its pid is gone.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from _config import log
from sqlalchemy.engine import URL

from tests.support.harness import run
from tests.support.postgres import ThrowawayDatabases, dsn

PREFIX = "tandem_bench_users_"
ROOT = Path(__file__).resolve().parent.parent

COLUMNS = (
    "id",
    "email",
    "email_key",
    "name",
    "password_hash",
    "create_time",
    "update_time",
    "delete_time",
    "revision",
)
# fmt: off
_FIRST = (
    "ada", "alan", "anna", "aiko", "bruno", "carla", "chen", "david", "elena", "emma",
    "farid", "fatima", "george", "hana", "ivan", "jamal", "jana", "jose", "kai", "karin",
    "lars", "lea", "liam", "lucia", "mario", "maya", "mehmet", "mia", "noah", "olga",
    "omar", "paula", "pedro", "priya", "rahul", "rosa", "sam", "sara", "sofia", "tariq",
    "tom", "uma", "victor", "wei", "yara", "yusuf", "zoe",
)
_LAST = (
    "abe", "alvarez", "bauer", "becker", "chen", "costa", "dubois", "eriksen", "fischer",
    "garcia", "gupta", "haddad", "hansen", "ito", "jensen", "kim", "kowalski", "kumar",
    "lee", "lopez", "martin", "meyer", "moreau", "muller", "nakamura", "nguyen", "novak",
    "okafor", "olsen", "park", "patel", "perez", "rossi", "santos", "schmidt", "silva",
    "smith", "tanaka", "wagner", "wang", "weber", "wilson", "yamamoto", "young", "zhang",
)
_DOMAINS = (
    "example.com", "example.org", "example.net", "mail.example.com", "corp.example.org",
    "uni.example.edu", "example.de", "example.fr", "example.co.uk", "example.io",
)
# fmt: on
_CHUNK = 50_000
# One row of `users`, in COLUMNS' order.
Row = tuple[uuid.UUID, str, str, str, str, datetime, datetime, datetime | None, int]


def databases(admin: URL) -> ThrowawayDatabases:
    """The users benchmark's databases on `admin`'s server."""
    return ThrowawayDatabases(PREFIX, admin)


async def drop_stale_databases(admin: URL) -> list[str]:
    """Drop the databases of benchmark runs whose process is gone (killed runs)."""
    return await databases(admin).drop_stale()


async def create_database(admin: URL) -> URL:
    """A new empty database named after this process; its plain (libpq-style) URL."""
    return await databases(admin).create()


@asynccontextmanager
async def own_database(admin: URL, *, keep: bool = False) -> AsyncIterator[URL]:
    """A new database for the run, once those of killed runs are dropped; dropped when
    the run ends however it ends, or with `keep` renamed out of the way and kept."""
    dropped = await drop_stale_databases(admin)
    if dropped:
        log(f"dropped databases of earlier runs that were killed: {', '.join(dropped)}")
    database = await create_database(admin)
    log(f"database {database.database}")
    try:
        yield database
    finally:
        if keep:
            kept = await keep_database(admin, database)
            log(f'kept the database as {kept} (--keep-db); drop it with DROP DATABASE "{kept}"')
        else:
            await drop_database(admin, database)
            log(f"dropped database {database.database}")


async def drop_database(admin: URL, database: URL) -> None:
    await databases(admin).drop(database.database)


async def keep_database(admin: URL, database: URL) -> str:
    """Rename the run's database out of the pattern that later runs clean up; its new name."""
    name = database.database
    assert name is not None
    assert name.startswith(PREFIX), name
    kept = f"{PREFIX}kept_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:4]}"
    connection = await asyncpg.connect(dsn(admin), timeout=10)
    try:
        # A database with sessions cannot be renamed; the servers are stopped by now.
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await connection.execute(f'ALTER DATABASE "{name}" RENAME TO "{kept}"')
    finally:
        await connection.close()
    return kept


def sqlalchemy_url(database: URL) -> str:
    return dsn(database.set(drivername="postgresql+asyncpg"))


async def migrate(database: URL, env: Mapping[str, str]) -> None:
    """Apply the users service's migrations through its own command line."""
    code, output = await run(
        [sys.executable, "-m", "users_service", "migrate"],
        {**env, "USERS_DATABASE_URL": sqlalchemy_url(database)},
        cwd=ROOT,
        timeout=300,
    )
    if code != 0:
        raise RuntimeError(f"migrate failed ({code}):\n{output}")


@dataclass(slots=True)
class Seeded:
    """What the load generators need to know about the seeded rows."""

    users: int
    sample_ids: list[str]
    sample_emails: list[str]
    timings: dict[str, float] = field(default_factory=dict)


def _rows(
    count: int, password_hash: str, rng: random.Random, sampled: set[int], seeded: Seeded
) -> Iterator[list[Row]]:
    # Accounts were created over three years, in order; the heap is then in
    # create_time order, as it is in a table that only ever appended sign-ups.
    end = datetime.now(UTC) - timedelta(days=1)
    span = timedelta(days=3 * 365).total_seconds()
    start = end - timedelta(seconds=span)
    slot = span / count
    chunk: list[Row] = []
    for i in range(count):
        first = rng.choice(_FIRST)
        last = rng.choice(_LAST)
        email = f"{first}.{last}{i}@{rng.choice(_DOMAINS)}"
        created = start + timedelta(seconds=i * slot + rng.random() * slot)
        user_id = uuid.uuid4()
        chunk.append(
            (
                user_id,
                email,
                email.casefold(),
                f"{first.title()} {last.title()}",
                password_hash,
                created,
                created,
                None,
                1,
            )
        )
        if i in sampled:
            seeded.sample_ids.append(str(user_id))
            seeded.sample_emails.append(email)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def seed(
    database: URL, *, users: int, password_hash: str, sample: int, rng: random.Random
) -> Seeded:
    """Fill `users` with COPY; indexes are dropped first and rebuilt after (far faster).

    The index and constraint definitions are read back from the migrated schema and
    replayed verbatim, so the benchmark runs on exactly the schema the migrations make.
    """
    seeded = Seeded(users=users, sample_ids=[], sample_emails=[])
    sampled = set(rng.sample(range(users), min(sample, users)))
    connection = await asyncpg.connect(dsn(database), timeout=10)
    try:
        await connection.execute("SET maintenance_work_mem = '256MB'; SET synchronous_commit = off")
        primary = await connection.fetchrow(
            "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
            "WHERE conrelid = 'users'::regclass AND contype = 'p'"
        )
        assert primary is not None
        indexes = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'users' AND indexname <> $1 ORDER BY indexname",
            primary["conname"],
        )
        for index in indexes:
            await connection.execute(f'DROP INDEX "{index["indexname"]}"')
        await connection.execute(f'ALTER TABLE users DROP CONSTRAINT "{primary["conname"]}"')

        started = time.perf_counter()
        for chunk in _rows(users, password_hash, rng, sampled, seeded):
            await connection.copy_records_to_table("users", records=chunk, columns=COLUMNS)
        seeded.timings["copy_s"] = time.perf_counter() - started

        started = time.perf_counter()
        await connection.execute(
            f'ALTER TABLE users ADD CONSTRAINT "{primary["conname"]}" {primary["definition"]}'
        )
        for index in indexes:
            await connection.execute(index["indexdef"])
        seeded.timings["index_s"] = time.perf_counter() - started

        started = time.perf_counter()
        # Sets hint bits and the visibility map and gathers statistics, as autovacuum
        # would have long done on a real table; the first reads then write nothing.
        await connection.execute("VACUUM (ANALYZE) users")
        seeded.timings["vacuum_s"] = time.perf_counter() - started
        after = await connection.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'users' ORDER BY indexname"
        )
        expected = {i["indexdef"] for i in indexes}
        found = {i["indexdef"] for i in after}
        assert expected <= found, (expected, found)
        assert len(found) == len(expected) + 1, (expected, found)
    finally:
        await connection.close()
    # The sample was collected in table order; shuffle so callers do not walk it in order.
    order = list(range(len(seeded.sample_ids)))
    rng.shuffle(order)
    seeded.sample_ids = [seeded.sample_ids[i] for i in order]
    seeded.sample_emails = [seeded.sample_emails[i] for i in order]
    return seeded


async def backend_pids(admin: URL, database: URL) -> list[int]:
    """Server processes serving `database` (for CPU accounting)."""
    connection = await asyncpg.connect(dsn(admin), timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database.database,
        )
    finally:
        await connection.close()
    return [int(r["pid"]) for r in rows]


async def server_version(admin: URL) -> str:
    connection = await asyncpg.connect(dsn(admin), timeout=5)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()
