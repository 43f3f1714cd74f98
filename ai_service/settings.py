"""Settings of the ai service, from `AI_*` environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from servicekit.settings import ServiceSettings


class AiSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AI_", extra="ignore", frozen=True)

    addr: str = "127.0.0.1:50052"
    database_url: str = "sqlite+aiosqlite:///./data/ai.db"
