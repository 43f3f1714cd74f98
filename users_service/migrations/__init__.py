"""The users service's Alembic migration history."""

from pathlib import Path

from servicekit.migrations import MigrationHistory

MIGRATIONS = MigrationHistory("users_service", Path(__file__).resolve().parent)
