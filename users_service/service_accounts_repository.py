"""All SQL of service accounts (SQLAlchemy Core on `service_accounts`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from servicekit.database import Database, utc
from users_service.models import ServiceAccountRow

service_accounts = cast(Table, ServiceAccountRow.__table__)

_GET = select(
    service_accounts.c.name,
    service_accounts.c.scopes,
    service_accounts.c.secret_hash,
    service_accounts.c.create_time,
    service_accounts.c.update_time,
).where(service_accounts.c.name == bindparam("name"))


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    name: str
    scopes: frozenset[str]
    secret_hash: str
    create_time: datetime
    update_time: datetime


class ServiceAccountsRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, name: str) -> ServiceAccount | None:
        row = await self._database.read(lambda c: c.execute(_GET, {"name": name}).first())
        return _account(row) if row is not None else None

    async def put(
        self, name: str, *, scopes: frozenset[str], secret_hash: str, now: datetime
    ) -> bool:
        """Store the account, replacing its scopes and secret if it exists; True if new."""
        values = {"scopes": " ".join(sorted(scopes)), "secret_hash": secret_hash}

        def work(connection: Connection) -> bool:
            replaced = connection.execute(
                update(service_accounts)
                .where(service_accounts.c.name == name)
                .values(**values, update_time=now)
            ).rowcount
            if replaced:
                return False
            connection.execute(
                insert(service_accounts).values(
                    name=name, **values, create_time=now, update_time=now
                )
            )
            return True

        return await self._database.write(work)

    async def delete(self, name: str) -> bool:
        def work(connection: Connection) -> bool:
            statement = delete(service_accounts).where(service_accounts.c.name == name)
            return bool(connection.execute(statement).rowcount)

        return await self._database.write(work)


def _account(row: Row[Any, Any, Any, Any, Any]) -> ServiceAccount:
    return ServiceAccount(
        name=row.name,
        scopes=frozenset(row.scopes.split()),
        secret_hash=row.secret_hash,
        create_time=utc(row.create_time),
        update_time=utc(row.update_time),
    )
