"""The command line every service shares: `python -m <service> [serve|migrate]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from servicekit.errors import StartupError
from servicekit.logs import configure_logging
from servicekit.migrations import MigrationHistory, upgrade_to_head
from servicekit.settings import ServiceSettings, SettingsError, load_settings

S = TypeVar("S", bound=ServiceSettings)

log = logging.getLogger("servicekit.cli")


def run_service(
    argv: Sequence[str] | None,
    *,
    prog: str,
    settings_class: type[S],
    serve: Callable[[S], Coroutine[Any, Any, None]],
    migrations: MigrationHistory,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "migrate"),
        help="serve gRPC (the default), or apply the database migrations and exit",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(settings_class)
    except SettingsError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "migrate":
            revision = upgrade_to_head(migrations, settings.database_url)
            log.info("database is at revision %s", revision)
            return 0
        _run(serve(settings))
    except StartupError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional: absent on Windows
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
