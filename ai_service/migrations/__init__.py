"""The ai service's Alembic migration history."""

from pathlib import Path

from servicekit.migrations import MigrationHistory

MIGRATIONS = MigrationHistory("ai_service", Path(__file__).resolve().parent)
