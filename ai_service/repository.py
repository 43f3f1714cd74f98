"""All SQL of the ai service: SQLAlchemy Core statements on the `analyses` table.

The two statements every AnalyzeText makes - the result-cache lookup before the call
and the insert after it - go through batchers: under load, concurrent calls share one
`IN` query and one transaction (group commit) instead of a round trip each. An
analysis made with a request id is stored in the same transaction as its key
(servicekit.idempotency).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Select, Table, bindparam, insert, select, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ai_service.domain import Analysis, AnalysisResult, Sentiment, Usage
from ai_service.models import AnalysisRow, analysis_keys
from servicekit.batching import Batcher
from servicekit.database import Database, utc
from servicekit.errors import Unavailable
from servicekit.idempotency import KeyRecord, KeyTaken
from servicekit.idempotency_records import KeyRecords
from servicekit.pagination import TimeKey

analyses = cast(Table, AnalysisRow.__table__)
_COLUMNS = tuple(c for c in analyses.c if c.name != "cache_key")

# Built once: SQLAlchemy then finds their compiled form in its cache without rebuilding
# the statement and its cache key on every call.
_INSERT = insert(analyses)
_GET = select(*_COLUMNS).where(analyses.c.id == bindparam("id"))
_GET_MANY = select(*_COLUMNS).where(analyses.c.id.in_(bindparam("ids", expanding=True)))
_FIND_RESULTS = select(*_COLUMNS, analyses.c.cache_key).where(
    analyses.c.cache_key.in_(bindparam("keys", expanding=True)),
    analyses.c.create_time >= bindparam("since"),
)


@dataclass(frozen=True, slots=True)
class _Lookup:
    cache_key: str
    since: datetime


@dataclass(frozen=True, slots=True)
class _Insert:
    row: dict[str, Any]
    key: KeyRecord | None


class AnalysesRepository:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._inserts = Batcher(self._insert_rows, name="ai.analysis_inserts")
        self._lookups = Batcher(self._find_results, name="ai.result_lookups")
        # The request ids of analyses (servicekit.idempotency).
        self.keys = KeyRecords(analysis_keys, database)

    async def insert(
        self, analysis: Analysis, *, cache_key: str | None, key: KeyRecord | None = None
    ) -> None:
        """Stores `analysis`, and with it the key of the request that made it; returns
        once it is committed. KeyTaken when the key is recorded already (an analysis
        elsewhere with the same request id committed first): nothing was stored.

        `cache_key` files a produced result for reuse; a copy served from the cache
        has none, so the cache's lifetime counts from when the result was made.
        """
        await self._inserts.submit(_Insert(analysis_row(analysis, cache_key), key))

    async def get(self, analysis_id: uuid.UUID) -> Analysis | None:
        row = await self._database.read(lambda c: c.execute(_GET, {"id": analysis_id}).first())
        return _analysis(row) if row is not None else None

    async def get_many(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Analysis]:
        """The stored analyses among `ids`, by id."""
        if not ids:
            return {}
        rows = await self._database.read(lambda c: c.execute(_GET_MANY, {"ids": list(ids)}).all())
        return {row.id: _analysis(row) for row in rows}

    async def list_for_user(
        self, user_id: uuid.UUID, *, before: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Analysis]:
        """Up to `limit` of a user's analyses, newest first, older than `before`."""
        statement = newest_first(
            select(*_COLUMNS).where(analyses.c.user_id == user_id), analyses, before, limit
        )
        rows = await self._database.read(lambda c: c.execute(statement).all())
        return [_analysis(row) for row in rows]

    async def find_result(self, cache_key: str, *, since: datetime) -> AnalysisResult | None:
        """The newest result produced under `cache_key` at or after `since`."""
        return await self._lookups.submit(_Lookup(cache_key, since))

    async def _insert_rows(self, inserts: list[_Insert]) -> list[Exception | None]:
        try:
            await self._write(inserts)
        except Unavailable:
            # Whether the commit landed is unknown: never written again blind.
            raise
        except Exception:
            if len(inserts) == 1:
                raise
            # The transaction failed as a whole, so nothing was stored; one bad row (or
            # a key taken meanwhile) must not fail the others, so each goes again alone.
            return [await self._insert_alone(one) for one in inserts]
        return [None] * len(inserts)

    async def _insert_alone(self, one: _Insert) -> Exception | None:
        try:
            await self._write([one])
        except Exception as exc:  # noqa: BLE001 - raised to this row's caller
            return exc
        return None

    async def _write(self, inserts: list[_Insert]) -> None:
        keys = [one.key for one in inserts if one.key is not None]

        def work(connection: Connection) -> None:
            if keys:
                self.keys.insert(connection, keys)
            connection.execute(_INSERT, [one.row for one in inserts])

        try:
            await self._database.write(work)
        except IntegrityError as exc:
            if self.keys.taken(exc):
                raise KeyTaken from exc
            raise

    async def _find_results(self, lookups: list[_Lookup]) -> list[AnalysisResult | None]:
        parameters = {
            "keys": sorted({lookup.cache_key for lookup in lookups}),
            "since": min(lookup.since for lookup in lookups),
        }
        rows = await self._database.read(lambda c: c.execute(_FIND_RESULTS, parameters).all())
        newest: dict[str, Row[*tuple[Any, ...]]] = {}
        for row in rows:
            best = newest.get(row.cache_key)
            if best is None or row.create_time > best.create_time:
                newest[row.cache_key] = row
        return [_result_since(newest.get(lookup.cache_key), lookup.since) for lookup in lookups]


def newest_first(
    statement: Select[Any], table: Table, before: TimeKey | None, limit: int
) -> Select[Any]:
    """Up to `limit` of `statement`'s rows, newest first by (create_time, id), older than
    `before`: a page of servicekit.pagination.keyset_page."""
    statement = statement.order_by(table.c.create_time.desc(), table.c.id.desc()).limit(limit)
    if before is not None:
        statement = statement.where(tuple_(table.c.create_time, table.c.id) < tuple_(*before))
    return statement


def analysis_row(analysis: Analysis, cache_key: str | None) -> dict[str, Any]:
    """The `analyses` row of `analysis`; `cache_key` files a produced result for reuse."""
    result = analysis.result
    return {
        "id": analysis.id,
        "user_id": analysis.user_id,
        "summary": result.summary,
        "sentiment": result.sentiment.value,
        "key_points": list(result.key_points),
        "confidence": result.confidence,
        "model": result.model,
        "input_tokens": result.usage.input_tokens,
        "output_tokens": result.usage.output_tokens,
        "cache_read_input_tokens": result.usage.cache_read_input_tokens,
        "cache_creation_input_tokens": result.usage.cache_creation_input_tokens,
        "service_tier": result.usage.service_tier,
        "cache_key": cache_key,
        "create_time": analysis.create_time,
        "cached": analysis.cached,
    }


def _result_since(row: Row[*tuple[Any, ...]] | None, since: datetime) -> AnalysisResult | None:
    if row is None or utc(row.create_time) < since:
        return None
    return _analysis(row).result


def _analysis(row: Row[*tuple[Any, ...]]) -> Analysis:
    return Analysis(
        id=row.id,
        user_id=row.user_id,
        result=AnalysisResult(
            summary=row.summary,
            sentiment=Sentiment(row.sentiment),
            key_points=tuple(row.key_points),
            confidence=row.confidence,
            model=row.model,
            usage=Usage(
                input_tokens=row.input_tokens,
                output_tokens=row.output_tokens,
                cache_read_input_tokens=row.cache_read_input_tokens,
                cache_creation_input_tokens=row.cache_creation_input_tokens,
                service_tier=row.service_tier,
            ),
        ),
        create_time=utc(row.create_time),
        cached=row.cached,
    )
