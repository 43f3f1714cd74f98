"""The ai service's Alembic migration history."""

from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent
