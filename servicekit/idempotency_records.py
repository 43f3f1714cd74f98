"""The SQL of a service's table of idempotency keys (servicekit.idempotency).

Each service has the table in its own database, declared on its own metadata by
`idempotency_keys_table` under a name of its own (two services may share a database),
so that a key is written in the same transaction as what its request made
(`KeyRecords.insert`, inside the repository's write).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Uuid,
    bindparam,
    delete,
    insert,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from servicekit.database import Database, utc
from servicekit.idempotency import KeyRecord


def idempotency_keys_table(metadata: MetaData, name: str) -> Table:
    return Table(
        name,
        metadata,
        # `user:<uuid>` or `service:<name>` (servicekit.idempotency.scope_of).
        Column("scope", String(100), primary_key=True),
        Column("request_id", Uuid, primary_key=True),
        # SHA-256 hex of the request's fields, never the request itself.
        Column("fingerprint", String(64), nullable=False),
        # What the request made: the account, the analysis.
        Column("resource_id", Uuid, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("expire_time", DateTime(timezone=True), nullable=False),
        # Pruning walks the expired ones.
        Index(f"ix_{name}_expire_time", "expire_time"),
    )


class KeyRecords:
    def __init__(self, table: Table, database: Database) -> None:
        self._table = table
        self._database = database
        self._insert = insert(table)
        self._find = select(table).where(
            table.c.scope == bindparam("scope"), table.c.request_id == bindparam("request_id")
        )
        self._prune = delete(table).where(table.c.expire_time <= bindparam("now"))

    def insert(self, connection: Connection, records: Sequence[KeyRecord]) -> None:
        """Record keys, in the caller's transaction: put it before the write's own
        statements, so that a key taken meanwhile fails the write before it does more."""
        connection.execute(self._insert, [asdict(record) for record in records])

    def taken(self, exc: IntegrityError) -> bool:
        """Whether a write failed on a key already recorded (the table's primary key):
        PostgreSQL names the constraint (`pk_<table>`), SQLite the table's columns."""
        return self._table.name in str(exc.orig)

    async def find(self, scope: str, request_id: uuid.UUID) -> KeyRecord | None:
        parameters = {"scope": scope, "request_id": request_id}
        row = await self._database.read(lambda c: c.execute(self._find, parameters).first())
        if row is None:
            return None
        return KeyRecord(
            scope=row.scope,
            request_id=row.request_id,
            fingerprint=row.fingerprint,
            resource_id=row.resource_id,
            create_time=utc(row.create_time),
            expire_time=utc(row.expire_time),
        )

    async def prune(self, now: datetime) -> int:
        """Delete every key expired at `now`; how many there were."""
        return int(
            await self._database.write(lambda c: c.execute(self._prune, {"now": now}).rowcount)
        )
