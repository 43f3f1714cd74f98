"""Only analyses that were produced carry a result-cache key; copies served from the
cache do not, so the cache's lifetime counts from when a result was made (a popular
text is not kept fresh for ever by its own hits) and a lookup meets one row per key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("analyses") as batch:
        batch.alter_column("cache_key", existing_type=sa.String(64), nullable=True)
    op.execute("UPDATE analyses SET cache_key = NULL WHERE cached")


def downgrade() -> None:
    # Which key a copy had is not recorded; an empty one keeps copies out of the cache.
    op.execute("UPDATE analyses SET cache_key = '' WHERE cache_key IS NULL")
    with op.batch_alter_table("analyses") as batch:
        batch.alter_column("cache_key", existing_type=sa.String(64), nullable=False)
