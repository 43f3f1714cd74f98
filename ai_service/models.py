"""The ai service's tables (SQLAlchemy 2), shared by the repository and Alembic."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    MetaData,
    String,
    Text,
    Uuid,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.idempotency_records import idempotency_keys_table

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    metadata = metadata


# The request ids (idempotency keys) of analyses, beside what each made
# (servicekit.idempotency).
analysis_keys = idempotency_keys_table(metadata, "analysis_keys")


class AnalysisRow(Base):
    __tablename__ = "analyses"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    summary: Mapped[str] = mapped_column(Text)
    sentiment: Mapped[str] = mapped_column(String(16))
    key_points: Mapped[list[str]] = mapped_column(JSON)
    confidence: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(128))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger)
    # Hash of (normalised text, model, prompt version) of a produced result, which later
    # identical requests reuse; NULL on the copies that were served from the cache.
    cache_key: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cached: Mapped[bool] = mapped_column(Boolean, server_default=false())

    __table_args__ = (
        # A user's analyses, newest first, by keyset.
        Index("ix_analyses_user_id_create_time_id", "user_id", "create_time", "id"),
        Index("ix_analyses_cache_key_create_time", "cache_key", "create_time"),
    )
