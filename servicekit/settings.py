"""Settings shared by the processes, read from the environment (pydantic-settings).

Each process's settings derive from `ProcessSettings` with their own prefix (`USERS_`,
`AI_`, `GATEWAY_`), so `USERS_ADDR` and `GATEWAY_ADDR` never collide; the services' from
`ServiceSettings`, which adds what a gRPC service needs. `load_settings` turns a validation error
into one line naming the environment variable, instead of a pydantic traceback.

A service serves plaintext unless `<PREFIX>TLS_CERT_FILE` and `<PREFIX>TLS_KEY_FILE`
are set; `<PREFIX>TLS_CLIENT_CA_FILE` on top turns on mTLS (see servicekit.tls).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from servicekit import production
from servicekit.logs import LogFormat
from servicekit.tls import ServerTls
from tandem_client import ClientTls

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+|):(\d{1,5})$")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def _blank_is_none(value: object) -> object:
    # `USERS_TLS_CERT_FILE=` (as compose passes a variable unset in the shell) means none.
    return None if isinstance(value, str) and not value.strip() else value


# Optional settings where an empty value means unset.
OptionalPath = Annotated[Path | None, BeforeValidator(_blank_is_none)]
OptionalStr = Annotated[str | None, BeforeValidator(_blank_is_none)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_blank_is_none)]

_REDIS_SCHEMES = ("redis://", "rediss://")


class ProcessSettings(BaseSettings):
    """What every process reads, the gateway and each service alike: where it listens,
    what it logs, how long work in flight may finish after SIGTERM."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # The example the error message of a malformed `addr` gives; whether `addr` may
    # leave the host out (":50051", every interface, as gRPC takes it).
    _address_example: ClassVar[str] = "127.0.0.1:50051"
    _address_without_host: ClassVar[bool] = True

    addr: str = Field(description="host:port to listen on; port 0 picks a free port")
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="how long in-flight calls may run after SIGTERM"
    )
    log_level: LogLevel = "INFO"
    # text for a terminal, json (one object per line) for a log pipeline (servicekit.logs)
    log_format: LogFormat = "text"
    access_log: bool = Field(default=True, description="log one line per call")
    # host:port to serve Prometheus /metrics on (servicekit.metrics); unset: no metrics
    # are served or recorded.
    metrics_addr: OptionalStr = None

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable that sets `field`."""
        return _variable(cls, field)

    @field_validator("addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        return check_listen_address(
            value, example=cls._address_example, without_host=cls._address_without_host
        )

    @field_validator("metrics_addr")
    @classmethod
    def _check_metrics_addr(cls, value: str | None) -> str | None:
        return value if value is None else check_listen_address(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ServiceSettings(ProcessSettings):
    """What every gRPC service needs besides: how many calls at once, its database."""

    # Past it a call is refused at once with UNAVAILABLE and a retry delay (health
    # checks excepted), instead of queueing into its deadline.
    max_concurrent_rpcs: int = Field(
        default=1024, ge=1, description="calls handled at once; more get UNAVAILABLE"
    )
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
    # TLS (servicekit.tls): PEM files, re-read when they change, no restart. Unset:
    # plaintext gRPC, for a network (or a mesh) that encrypts on our behalf.
    tls_cert_file: OptionalPath = None
    tls_key_file: OptionalPath = None
    # Set: mTLS, every client must present a certificate this CA issued.
    tls_client_ca_file: OptionalPath = None
    # grpc.reflection lets grpcurl and Postman discover the API; off, the API's shape
    # is not handed to whoever can connect.
    reflection: bool = True
    # How long a write's request id (idempotency key) is remembered: a retry within it
    # answers the first result; after it, the id counts as new (servicekit.idempotency).
    idempotency_key_ttl_seconds: int = Field(default=24 * 3600, ge=1)

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

    @model_validator(mode="after")
    def _check_server_tls(self) -> ServiceSettings:
        cert, key, client_ca = (
            self.variable(f) for f in ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
        )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (cert, key) if self.tls_key_file is None else (key, cert)
            raise ValueError(f"{given} is set but {missing} is not: TLS needs both")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                f"{client_ca} is set but {cert} and {key} are not: mTLS needs the "
                "server's own certificate and key too"
            )
        return self

    def production_problems(self) -> list[str]:
        """What production mode refuses in these settings (servicekit.production)."""
        v = self.variable
        problems = []
        if self.tls_cert_file is None and not production.is_loopback(self.addr):
            problems.append(
                f"{v('addr')} is not a loopback address and TLS is off "
                f"(set {v('tls_cert_file')} and {v('tls_key_file')})"
            )
        if self.page_token_secret is None:
            problems.append(f"{v('page_token_secret')} is not set (it would be random)")
        elif production.is_public(self.page_token_secret.get_secret_value()):
            problems.append(f"{v('page_token_secret')} is a value published in the repository")
        if production.is_public(production.url_password(self.database_url)):
            problems.append(f"{v('database_url')} has a password published in the repository")
        if self.reflection:
            problems.append(f"{v('reflection')} is on (set it to false)")
        return problems

    def server_tls(self) -> ServerTls | None:
        """The TLS files to serve with, or None for plaintext."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTls(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)


def check_listen_address(
    value: str, *, example: str = "127.0.0.1:9100", without_host: bool = True
) -> str:
    """`value` when it is host:port (`:port` for every interface, if `without_host`);
    else ValueError, naming `example`."""
    match = _ADDRESS.match(value)
    if match is None or int(match.group(2)) > 65535 or not (match.group(1) or without_host):
        raise ValueError(f"expected host:port, e.g. {example}")
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


class TokenCheckSettings(BaseSettings):
    """How a process that accepts access tokens checks them (the ai service, the
    gateway): against the users service's published keys, and its sessions."""

    # The issuer and audience must match what the users service signs.
    token_issuer: str = Field(default="tandem-users", min_length=1)
    token_audience: str = Field(default="tandem-api", min_length=1)
    # A token whose `exp - iat` is longer than this is refused, whatever its signature.
    token_max_lifetime_seconds: int = Field(default=3600, ge=30, le=24 * 3600)
    # How long the fetched keys are used before fetching them again; a token naming
    # an unknown key fetches them at once, but at most once per jwks_min_refetch_seconds
    # (before the first success, sooner: a back-off from 0.25 s, servicekit.tokens.KeySet).
    jwks_max_age_seconds: float = Field(default=300.0, gt=0)
    jwks_min_refetch_seconds: float = Field(default=10.0, ge=0)
    # How long a token's session counts as live without asking the users service again.
    # A session ended elsewhere (logout, password change, deletion) still works here for
    # at most this long.
    auth_cache_seconds: float = Field(default=2.0, ge=0, le=300)

    def token_problems(self) -> list[str]:
        """What production mode refuses in how tokens are checked."""
        if self.token_max_lifetime_seconds > production.MAX_TOKEN_LIFETIME_SECONDS:
            name = _variable(type(self), "token_max_lifetime_seconds")
            return [f"{name} exceeds {production.MAX_TOKEN_LIFETIME_SECONDS} s"]
        return []


class ThrottleSettings(BaseSettings):
    """Where a service counts its rate limits and quotas (servicekit.throttle)."""

    # `redis://host:6379/0` (or `rediss://`): shared by every replica. Unset: in this
    # process, so each replica counts alone and N replicas let N times a limit through.
    redis_url: OptionalSecret = None
    # Before every key, so deployments (and tests) sharing one Redis never mix counts.
    redis_key_prefix: str = Field(default="tandem", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Per connect and per command; past it the store counts as unreachable.
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=10)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(_REDIS_SCHEMES):
            raise ValueError("use a redis:// or rediss:// URL")
        return value


class UpstreamTlsSettings(BaseSettings):
    """How a process connects to Tandem's gRPC services: plaintext, TLS or mTLS."""

    # The CA that signed the services' certificates; unset: plaintext.
    upstream_tls_ca_file: OptionalPath = None
    # This process's own certificate and key, for services that require mTLS.
    upstream_tls_cert_file: OptionalPath = None
    upstream_tls_key_file: OptionalPath = None
    # The name the services' certificates carry, when it is not the target's host.
    upstream_tls_server_name: OptionalStr = None

    @model_validator(mode="after")
    def _check_upstream_tls(self) -> UpstreamTlsSettings:
        cert, key = self.upstream_tls_cert_file, self.upstream_tls_key_file
        if (cert is None) != (key is None) or (cert is not None and not self.upstream_tls_ca_file):
            names = ", ".join(
                _variable(type(self), f)
                for f in ("upstream_tls_ca_file", "upstream_tls_cert_file", "upstream_tls_key_file")
            )
            raise ValueError(f"a client certificate needs all three of {names}")
        return self

    def upstream_problems(self, *targets: str) -> list[str]:
        """What production mode refuses in how the settings `targets` name are reached."""
        if self.upstream_tls_ca_file is not None:
            return []
        cls = type(self)
        return [
            f"{_variable(cls, target)} is not on this machine and TLS to it is off "
            f"(set {_variable(cls, 'upstream_tls_ca_file')})"
            for target in targets
            if not production.is_loopback(str(getattr(self, target)))
        ]

    def client_tls(self) -> ClientTls | None:
        if self.upstream_tls_ca_file is None:
            return None
        return ClientTls(
            self.upstream_tls_ca_file,
            self.upstream_tls_cert_file,
            self.upstream_tls_key_file,
            self.upstream_tls_server_name,
        )
