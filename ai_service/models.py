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
    Integer,
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
    # The provider's tier: "batch" (half price), "standard"; "" offline or unknown.
    service_tier: Mapped[str] = mapped_column(String(16), server_default="")

    __table_args__ = (
        # A user's analyses, newest first, by keyset.
        Index("ix_analyses_user_id_create_time_id", "user_id", "create_time", "id"),
        Index("ix_analyses_cache_key_create_time", "cache_key", "create_time"),
    )


# The request ids of BatchAnalyzeTexts, beside the operations they started.
operation_keys = idempotency_keys_table(metadata, "operation_keys")


class OperationRow(Base):
    """A BatchAnalyzeTexts operation; its progress is in its items."""

    __tablename__ = "operations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    model: Mapped[str] = mapped_column(String(128))
    total: Mapped[int] = mapped_column(Integer)
    # The provider's Message Batch ids, in the order they were created.
    provider_batch_ids: Mapped[list[str]] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean)
    done: Mapped[bool] = mapped_column(Boolean)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The replica working on it, until when: one replica polls a batch at a time, and
    # another takes over once a dead one's lease has run out.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_operations_user_id_create_time_id", "user_id", "create_time", "id"),
        Index("ix_operations_done", "done"),
    )


class OperationItemRow(Base):
    """One text of an operation: pending (text kept), then an analysis or an error."""

    __tablename__ = "operation_items"

    operation_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Kept only until the item is finished: then NULL.
    text: Mapped[str | None] = mapped_column(Text)
    # The provider batch it went into; NULL before it was sent (and offline).
    provider_batch_id: Mapped[str | None] = mapped_column(String(128))
    analysis_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # A google.rpc.Code, its ErrorInfo reason and message, when it failed.
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
