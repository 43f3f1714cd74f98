"""What the benchmarks share besides their reports: the users benchmark's settings (from
its command line), the seeded password, the log, and options that set a server's env."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# Every seeded account has this password (one argon2id hash made up front serves all).
PASSWORD = "correct horse battery staple"
PAGE_SIZE = 50
WALK_PAGE_SIZE = 1000


@dataclass(frozen=True)
class UsersConfig:
    users: int
    duration: float
    warmup: float
    concurrency: tuple[int, ...]
    rounds: int
    deep_page: int
    login_callers: int
    interference_callers: int
    create_callers: int
    sample_ids: int
    argon2_samples: int
    channels: int
    pin: bool
    profile: bool
    profile_raw: str | None
    keep_db: bool
    json_path: str | None
    admin_url: str | None
    service_env: dict[str, str]
    seed: int
    quick: bool


@dataclass(frozen=True)
class GatewayConfig:
    users: int
    duration: int
    warmup: int
    rounds: int
    connections: int
    sample_ids: int
    profile: bool | None  # None: only when a target is missed
    profile_dir: str | None
    json_path: str | None
    admin_url: str | None
    monolith_env: dict[str, str] = field(default_factory=dict)
    gateway_env: dict[str, str] = field(default_factory=dict)
    seed: int = 1
    quick: bool = False
    # How the gateway reaches the users service: plaintext, tls or mtls.
    transport: str = "mtls"
    # Also measure what metrics and traces cost (bench/_gwobserve.py).
    observability: bool = True


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--json and --admin-url, which every benchmark with a database of its own takes."""
    parser.add_argument("--json", dest="json_path", help="write the results to this file")
    parser.add_argument(
        "--admin-url", help="PostgreSQL server (default $TEST_DATABASE_URL or local postgres)"
    )


def add_env_option(
    parser: argparse.ArgumentParser, option: str, prefix: str, *, server: str, example: str
) -> None:
    """`option`, repeatable: one NAME=VALUE setting for `server` each (see env_pairs)."""
    parser.add_argument(
        option,
        action="append",
        default=[],
        metavar=f"{prefix}X=VALUE",
        help=f"extra setting for {server} (repeatable), e.g. {example}",
    )


def env_pairs(
    parser: argparse.ArgumentParser, option: str, pairs: Sequence[str], prefix: str
) -> dict[str, str]:
    """`option`'s NAME=VALUE pairs as a dict; every NAME must start with `prefix`."""
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith(prefix):
            parser.error(f"{option} wants {prefix}NAME=VALUE, not {pair!r}")
        found[key] = value
    return found


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()
