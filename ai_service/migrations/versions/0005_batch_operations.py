"""Batch operations: BatchAnalyzeTexts' long-running operations, their texts, their
request ids, and the provider tier of each analysis.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("analyses") as batch:
        batch.add_column(
            sa.Column("service_tier", sa.String(16), nullable=False, server_default="")
        )
    op.create_table(
        "operations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("provider_batch_ids", sa.JSON(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expire_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_operations"),
    )
    op.create_index(
        "ix_operations_user_id_create_time_id", "operations", ["user_id", "create_time", "id"]
    )
    op.create_index("ix_operations_done", "operations", ["done"])
    op.create_table(
        "operation_items",
        sa.Column("operation_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("provider_batch_id", sa.String(128), nullable=True),
        sa.Column("analysis_id", sa.Uuid(), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_reason", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("operation_id", "position", name="pk_operation_items"),
    )
    op.create_table(
        "operation_keys",
        sa.Column("scope", sa.String(100), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "request_id", name="pk_operation_keys"),
    )
    op.create_index("ix_operation_keys_expire_time", "operation_keys", ["expire_time"])


def downgrade() -> None:
    op.drop_index("ix_operation_keys_expire_time", table_name="operation_keys")
    op.drop_table("operation_keys")
    op.drop_table("operation_items")
    op.drop_index("ix_operations_done", table_name="operations")
    op.drop_index("ix_operations_user_id_create_time_id", table_name="operations")
    op.drop_table("operations")
    with op.batch_alter_table("analyses") as batch:
        batch.drop_column("service_tier")
