"""The command line every service shares: `python -m <service> [serve|migrate|…]`.

A service may add commands of its own (`Command`): each gets the loaded settings and
its arguments, runs on the event loop, and returns the process's exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from servicekit.errors import StartupError
from servicekit.logs import configure_logging
from servicekit.migrations import MigrationHistory, upgrade_to_head
from servicekit.settings import ServiceSettings, SettingsError, load_settings

S = TypeVar("S", bound=ServiceSettings)

log = logging.getLogger("servicekit.cli")


@dataclass(frozen=True, slots=True)
class Command(Generic[S]):
    """An extra command: `run(settings, *arguments)` gives the exit code."""

    help: str
    arguments: tuple[str, ...]
    run: Callable[..., Coroutine[Any, Any, int]]


def run_service(
    argv: Sequence[str] | None,
    *,
    prog: str,
    settings_class: type[S],
    serve: Callable[[S], Coroutine[Any, Any, None]],
    migrations: MigrationHistory,
    commands: Mapping[str, Command[S]] | None = None,
) -> int:
    extra = dict(commands or {})
    epilog = "\n".join(f"  {name} {' '.join(c.arguments)}: {c.help}" for name, c in extra.items())
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}",
        epilog=f"other commands:\n{epilog}" if extra else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "migrate", *extra),
        help="serve gRPC (the default), apply the database migrations and exit, or another",
    )
    parser.add_argument("arguments", nargs="*", help="the command's arguments")
    args = parser.parse_args(argv)
    command = extra.get(args.command)
    wanted = command.arguments if command is not None else ()
    if len(args.arguments) != len(wanted):
        parser.error(f"{args.command} takes {' '.join(wanted) or 'no arguments'}")
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
        if command is not None:
            return _run(command.run(settings, *args.arguments))
        _run(serve(settings))
    except StartupError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    return 0


T = TypeVar("T")


def _run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop  # noqa: PLC0415 - optional: absent on Windows
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
