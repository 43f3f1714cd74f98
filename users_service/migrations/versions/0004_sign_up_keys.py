"""Idempotency keys of sign-ups: the request ids of CreateUser, beside the accounts made.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sign_up_keys",
        sa.Column("scope", sa.String(100), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "request_id", name="pk_sign_up_keys"),
    )
    op.create_index("ix_sign_up_keys_expire_time", "sign_up_keys", ["expire_time"])


def downgrade() -> None:
    op.drop_index("ix_sign_up_keys_expire_time", table_name="sign_up_keys")
    op.drop_table("sign_up_keys")
