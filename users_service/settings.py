"""Settings of the users service, from `USERS_*` environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from servicekit.settings import ServiceSettings


class UsersSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="USERS_", extra="ignore", frozen=True)

    addr: str = "127.0.0.1:50051"
    database_url: str = "sqlite+aiosqlite:///./data/users.db"
