"""Settings shared by the gRPC services, read from the environment (pydantic-settings).

Each service subclasses `ServiceSettings` with its own prefix (`USERS_`, `AI_`), so
`USERS_ADDR` and `AI_ADDR` never collide. `load_settings` turns a validation error
into one line naming the environment variable, instead of a pydantic traceback.
"""

from __future__ import annotations

import re
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+|):(\d{1,5})$")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ServiceSettings(BaseSettings):
    """What every gRPC service needs: where to listen, how to stop, its database."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    addr: str = Field(description="host:port to listen on; port 0 picks a free port")
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="how long in-flight calls may run after SIGTERM"
    )
    log_level: LogLevel = "INFO"
    access_log: bool = Field(default=True, description="log one line per call")
    database_url: str
    db_pool_size: int = Field(default=10, ge=1)
    # Overflow connections are opened and closed under load, which costs more than
    # waiting for a pooled one: size the pool for the load instead.
    db_max_overflow: int = Field(default=0, ge=0)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # A ping before each checkout costs a round trip per call; reads instead retry
    # once on a dead connection (see servicekit.database.Database.read).
    db_pool_pre_ping: bool = False
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # Signs page tokens; every replica needs the same one. Unset: a random one per
    # process (tokens then do not survive a restart or cross replicas).
    page_token_secret: SecretStr | None = Field(default=None, min_length=16)

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable that sets `field`."""
        return _variable(cls, field)

    @field_validator("addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        match = _ADDRESS.match(value)
        if match is None or int(match.group(2)) > 65535:
            raise ValueError("expected host:port, e.g. 127.0.0.1:50051")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL") from None
        if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError("use a sqlite+aiosqlite:/// or postgresql+asyncpg:// URL")
        return value


class SettingsError(Exception):
    """Settings that cannot be used; the message is one line naming the variables."""


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Read `cls` from the environment; raise SettingsError with a one-line message."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:
                # A rule across several settings (a model validator) names them itself.
                problems.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            name = _variable(cls, "_".join(str(part) for part in error["loc"]))
            if error["type"] == "missing":
                problems.append(f"{name} is not set")
            else:
                # The value itself is left out: it may be a secret.
                problems.append(f"{name} is invalid: {error['msg']}")
        raise SettingsError("; ".join(problems)) from None


def _variable(cls: type[BaseSettings], field: str) -> str:
    return (str(cls.model_config.get("env_prefix", "")) + field).upper()
