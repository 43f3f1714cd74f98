"""Facts a report needs besides the phases: the machine, the versions, argon2id's cost."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

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


def measure_argon2(params: Argon2Params, samples: int) -> dict[str, Any]:
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
        **asdict(params),
        "samples": samples,
        "hash_ms_median": statistics.median(hashes) * 1000,
        "hash_ms_min": fastest_ms,
        "verify_ms_median": statistics.median(verifies) * 1000,
        # Hashes run on `workers` threads (never faster than the fastest hash here);
        # more threads than free cores would not help.
        "ceiling_per_s": params.workers * 1000 / fastest_ms,
    }


def machine_facts() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "sqlalchemy": version("sqlalchemy"),
        "asyncpg": version("asyncpg"),
        "uvloop": version("uvloop"),
        "protobuf": version("protobuf"),
        "argon2_cffi": version("argon2-cffi"),
        "load_avg_at_start": os.getloadavg(),
    }
