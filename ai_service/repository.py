"""All SQL of the ai service: SQLAlchemy Core statements on the `analyses` table."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, insert, select, tuple_

from ai_service.domain import Analysis, AnalysisResult, Sentiment, Usage
from ai_service.models import AnalysisRow
from servicekit.database import Database, utc

analyses = cast(Table, AnalysisRow.__table__)
_COLUMNS = tuple(c for c in analyses.c if c.name != "cache_key")


class AnalysesRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def insert(self, analysis: Analysis, *, cache_key: str) -> None:
        result = analysis.result
        statement = insert(analyses).values(
            id=analysis.id,
            user_id=analysis.user_id,
            summary=result.summary,
            sentiment=result.sentiment.value,
            key_points=list(result.key_points),
            confidence=result.confidence,
            model=result.model,
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            cache_read_input_tokens=result.usage.cache_read_input_tokens,
            cache_creation_input_tokens=result.usage.cache_creation_input_tokens,
            cache_key=cache_key,
            create_time=analysis.create_time,
            cached=analysis.cached,
        )
        await self._database.write(lambda c: c.execute(statement))

    async def get(self, analysis_id: uuid.UUID) -> Analysis | None:
        statement = select(*_COLUMNS).where(analyses.c.id == analysis_id)
        row = await self._database.read(lambda c: c.execute(statement).first())
        return _analysis(row) if row is not None else None

    async def list_for_user(
        self, user_id: uuid.UUID, *, before: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Analysis]:
        """Up to `limit` of a user's analyses, newest first, older than `before`."""
        statement = (
            select(*_COLUMNS)
            .where(analyses.c.user_id == user_id)
            .order_by(analyses.c.create_time.desc(), analyses.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            statement = statement.where(
                tuple_(analyses.c.create_time, analyses.c.id) < tuple_(*before)
            )
        rows = await self._database.read(lambda c: c.execute(statement).all())
        return [_analysis(row) for row in rows]

    async def find_result(self, cache_key: str, *, since: datetime) -> AnalysisResult | None:
        """The newest stored result for `cache_key` made at or after `since`."""
        statement = (
            select(*_COLUMNS)
            .where(analyses.c.cache_key == cache_key, analyses.c.create_time >= since)
            .order_by(analyses.c.create_time.desc())
            .limit(1)
        )
        row = await self._database.read(lambda c: c.execute(statement).first())
        return _analysis(row).result if row is not None else None


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
            ),
        ),
        create_time=utc(row.create_time),
        cached=row.cached,
    )
