"""The users benchmark's settings (from its command line) and what every part shares."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

# Children are forked (for PR_SET_PDEATHSIG) and exec at once, so grpc's fork handlers
# have nothing to do, yet with grpc threads running they log a line on every fork. grpc
# reads this as it is imported: _phases, the one module of this process that imports
# grpc, imports this one (through _procs) first. Children do not inherit it.
_FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"
OWN_ENVIRONMENT = () if _FORK_SUPPORT in os.environ else (_FORK_SUPPORT,)
os.environ.setdefault(_FORK_SUPPORT, "false")

# Every seeded account has this password (one argon2id hash made up front serves all).
PASSWORD = "correct horse battery staple"
PAGE_SIZE = 50
WALK_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Config:
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


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()
