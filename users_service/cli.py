"""The users service's command line."""

from __future__ import annotations

from collections.abc import Sequence

from servicekit.cli import run_service
from users_service.migrations import MIGRATIONS
from users_service.server import serve
from users_service.settings import UsersSettings


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        argv,
        prog="users_service",
        settings_class=UsersSettings,
        serve=serve,
        migrations=MIGRATIONS,
    )
