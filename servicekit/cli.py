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
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from servicekit import production, telemetry
from servicekit.errors import StartupError
from servicekit.logs import configure_logging
from servicekit.migrations import MigrationHistory, upgrade_to_head
from servicekit.settings import ServiceSettings, SettingsError, load_settings

S = TypeVar("S", bound=ServiceSettings)

log = logging.getLogger("servicekit.cli")


@dataclass(frozen=True, slots=True)
class Option:
    """An option of a command: `argparse.add_argument(*flags, **settings)`."""

    flags: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Command(Generic[S]):
    """An extra command: `run(settings, *arguments, **options)` gives the exit code."""

    help: str
    arguments: tuple[str, ...]
    run: Callable[..., Coroutine[Any, Any, int]]
    options: tuple[Option, ...] = ()


def run_service(
    argv: Sequence[str] | None,
    *,
    prog: str,
    settings_class: type[S],
    serve: Callable[[S], Coroutine[Any, Any, None]],
    migrations: MigrationHistory,
    commands: Mapping[str, Command[S]] | None = None,
    api_spans: bool = False,
) -> int:
    """`api_spans`: the service makes spans through OpenTelemetry's API itself
    (servicekit.telemetry.configure_tracing)."""
    extra = dict(commands or {})
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    subcommands = parser.add_subparsers(dest="command")
    subcommands.add_parser("serve", help="serve gRPC (the default)")
    subcommands.add_parser("migrate", help="apply the database migrations and exit")
    for name, extra_command in extra.items():
        sub = subcommands.add_parser(name, help=extra_command.help, description=extra_command.help)
        for argument in extra_command.arguments:
            sub.add_argument(argument.lower(), metavar=argument)
        for option in extra_command.options:
            sub.add_argument(*option.flags, **option.settings)
    args = vars(parser.parse_args(argv))
    name = args.pop("command") or "serve"
    try:
        settings = load_settings(settings_class)
    except SettingsError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if name == "migrate":
            revision = upgrade_to_head(migrations, settings.database_url)
            log.info("database is at revision %s", revision)
            return 0
        command = extra.get(name)
        if command is not None:
            positional = [args.pop(argument.lower()) for argument in command.arguments]
            return _run(command.run(settings, *positional, **args))
        production.check(settings.production_problems())
        stop_tracing = telemetry.configure_tracing(
            f"tandem-{prog.removesuffix('_service')}", api_spans=api_spans
        )
        try:
            _run(serve(settings))
        finally:
            if stop_tracing is not None:
                stop_tracing()  # exports the spans still buffered
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
