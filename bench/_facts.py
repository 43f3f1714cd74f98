"""Facts a report needs besides the phases: the machine, the versions, argon2id's cost."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import NotRequired, TypedDict

from _config import PASSWORD
from argon2 import PasswordHasher, Type

from users_service.settings import UsersSettings


@dataclass(frozen=True)
class Argon2Params:
    memory_kib: int
    time_cost: int
    parallelism: int
    workers: int

    def hasher(self) -> PasswordHasher:
        # Built exactly as users_service.passwords builds it.
        return PasswordHasher(
            time_cost=self.time_cost,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
            type=Type.ID,
        )


def service_setting(name: str, service_env: dict[str, str]) -> int:
    """A numeric setting of the users service: --service-env's value, else its default."""
    raw = service_env.get(UsersSettings.variable(name))
    if raw is not None:
        return int(raw)
    field = UsersSettings.model_fields[name]
    default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    return int(default)


def argon2_params(service_env: dict[str, str]) -> Argon2Params:
    """The service's argon2 parameters: its defaults, unless --service-env overrides them."""
    return Argon2Params(
        memory_kib=service_setting("argon2_memory_kib", service_env),
        time_cost=service_setting("argon2_time_cost", service_env),
        parallelism=service_setting("argon2_parallelism", service_env),
        workers=service_setting("password_hash_workers", service_env),
    )


class Argon2Cost(TypedDict):
    """What one argon2id hash costs at the service's parameters, and the ceiling it sets."""

    memory_kib: int
    time_cost: int
    parallelism: int
    workers: int
    samples: int
    hash_ms_median: float
    hash_ms_min: float
    verify_ms_median: float
    ceiling_per_s: float


def measure_argon2(params: Argon2Params, samples: int) -> Argon2Cost:
    hasher = params.hasher()
    hashes, verifies = [], []
    for _ in range(samples):
        started = time.perf_counter()
        hashed = hasher.hash(PASSWORD)
        hashes.append(time.perf_counter() - started)
        started = time.perf_counter()
        hasher.verify(hashed, PASSWORD)
        verifies.append(time.perf_counter() - started)
    fastest_ms = min(hashes) * 1000
    return {
        "memory_kib": params.memory_kib,
        "time_cost": params.time_cost,
        "parallelism": params.parallelism,
        "workers": params.workers,
        "samples": samples,
        "hash_ms_median": statistics.median(hashes) * 1000,
        "hash_ms_min": fastest_ms,
        "verify_ms_median": statistics.median(verifies) * 1000,
        # Hashes run on `workers` threads (never faster than the fastest hash here);
        # more threads than free cores would not help.
        "ceiling_per_s": params.workers * 1000 / fastest_ms,
    }


class Machine(TypedDict):
    cores: int | None
    cpu_model: str
    kernel: str
    python: str
    load_avg_at_start: tuple[float, float, float]
    # What ran the benchmark, by the name a report prints: packages, PostgreSQL, wrk.
    versions: dict[str, str]
    # Cores the machine kept busy before the benchmark started anything (gateway).
    busy_cores_before: NotRequired[float]


# The packages every report names, by the name it prints them with.
PACKAGES = {
    "grpcio": "grpcio",
    "SQLAlchemy": "sqlalchemy",
    "asyncpg": "asyncpg",
    "uvloop": "uvloop",
    "protobuf": "protobuf",
    "argon2-cffi": "argon2-cffi",
}


def package_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "-"


def machine_facts(packages: Mapping[str, str] = PACKAGES) -> Machine:
    """The machine, and the versions of `packages` (printed name -> distribution)."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
        "versions": {name: package_version(dist) for name, dist in packages.items()},
    }
