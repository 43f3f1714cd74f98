"""Settings of the users service, from `USERS_*` environment variables."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from servicekit.settings import ServiceSettings


class UsersSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="USERS_", extra="ignore", frozen=True)

    addr: str = "127.0.0.1:50051"
    database_url: str = "sqlite+aiosqlite:///./data/users.db"

    # argon2id cost (OWASP's second recommendation: 19 MiB, 2 passes, 1 lane). Raising
    # them upgrades each stored hash at its owner's next successful login.
    argon2_memory_kib: int = Field(default=19_456, ge=8 * 1024)
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)
    # Threads that hash passwords, off the event loop. Fewer threads than cores keeps a
    # burst of logins from starving the loop that serves every other call.
    password_hash_workers: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 2) - 1), ge=1
    )
