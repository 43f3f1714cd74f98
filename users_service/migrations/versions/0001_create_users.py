"""Create the users table.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("email_key", sa.String(254), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
    )
    op.create_index(
        "uq_users_email_key_live",
        "users",
        ["email_key"],
        unique=True,
        postgresql_where=sa.text("delete_time IS NULL"),
        sqlite_where=sa.text("delete_time IS NULL"),
    )
    op.create_index("ix_users_create_time_id", "users", ["create_time", "id"])


def downgrade() -> None:
    op.drop_index("ix_users_create_time_id", table_name="users")
    op.drop_index("uq_users_email_key_live", table_name="users")
    op.drop_table("users")
