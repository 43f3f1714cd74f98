"""Settings of the gateway, from `GATEWAY_*` environment variables (pydantic-settings).

Read them with `servicekit.settings.load_settings(GatewaySettings)`: a missing or invalid
one then stops start-up with one line naming the variable.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from servicekit import production
from servicekit.errors import StartupError
from servicekit.settings import (
    ProcessSettings,
    TokenCheckSettings,
    UpstreamTlsSettings,
    check_listen_address,
)

# What the gateway's service account needs: sign-ups, logins, session checks.
GATEWAY_SCOPES = ("users.signup", "users.login", "sessions.read")

ProxyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# An origin as browsers send it: scheme, host, optional port; no path, no wildcard.
_ORIGIN = re.compile(r"^https?://([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?$")


class GatewaySettings(ProcessSettings, TokenCheckSettings, UpstreamTlsSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    _address_example: ClassVar[str] = "127.0.0.1:8000"
    # GATEWAY_ADDR names its host: 0.0.0.0 or [::] for every interface.
    _address_without_host: ClassVar[bool] = False
    addr: str = Field(
        default="127.0.0.1:8000", description="host:port to serve HTTP on; port 0 picks one"
    )
    # Any gRPC target: `host:port`, `dns:///users:50051`, `ipv4:10.0.0.1:50051,10.0.0.2:50051`.
    users_target: str = Field(default="127.0.0.1:50051", min_length=1)
    ai_target: str = Field(default="127.0.0.1:50052", min_length=1)

    # Access tokens are issued and signed by the users service; the gateway verifies
    # them with its public keys (JWKS, fetched over gRPC and cached): see
    # servicekit.settings.TokenCheckSettings for the token_* and jwks_* settings, and
    # auth_cache_seconds.

    # The gateway's own service account, for the calls it makes before a user has a
    # token (sign-up, login, session checks): `python -m users_service
    # create-service-account gateway --scope users.signup,users.login,sessions.read`.
    # The secret comes from client_secret, else from client_secret_file (which
    # `make run` writes).
    client_id: str = Field(default="gateway", min_length=1)
    client_secret: SecretStr | None = None
    client_secret_file: Path = Path("./data/gateway-client-secret")

    # Concurrent reads of accounts by id share one BatchGetUsers (gateway.readers);
    # off, each is a GetUser of its own.
    coalesce_reads: bool = True

    # Deadlines of upstream calls, per kind of route.
    users_deadline_seconds: float = Field(default=5.0, gt=0)
    ai_deadline_seconds: float = Field(default=5.0, gt=0, description="GetAnalysis, ListAnalyses")
    analysis_deadline_seconds: float = Field(default=60.0, gt=0, description="AnalyzeText")
    stream_deadline_seconds: float = Field(default=120.0, gt=0, description="a whole stream")
    ready_deadline_seconds: float = Field(default=1.0, gt=0, description="/readyz health checks")

    # Larger request bodies get 413; must leave room for the ai service's longest text
    # (50,000 characters, up to 12 bytes each once JSON-escaped).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # The edge (gateway.edge, gateway.middleware; README "Limits at the edge").
    # Requests being handled at once; past it, 503 at once (/healthz, /readyz excepted).
    max_in_flight: int = Field(default=512, ge=1)
    # Open connections; one made past it has its requests answered 503 and is closed.
    max_connections: int = Field(default=2048, ge=1)
    # The URL (else 414), the headers together (else 431), and how many headers (431).
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    # A request head must arrive within this of its first byte, its body within this of
    # its head: else 408 and the connection closes. A new connection that sends nothing
    # for header_timeout_seconds is closed.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    # A client retrying a login or sign-up before the Retry-After of its refusal gets
    # that refusal again from the gateway, after this long (at most the time left);
    # 0 answers at once (gateway.refusals).
    early_retry_delay_seconds: float = Field(default=1.0, ge=0, le=10)
    # GET /healthz also on this host:port, answered from a thread of its own, so that a
    # liveness probe is not queued behind a flood of the main port (gateway.health_port);
    # empty: not served. It answers 503 once the event loop has not run for
    # health_stale_seconds.
    health_addr: str = ""
    health_stale_seconds: float = Field(default=5.0, gt=0)
    # Strict-Transport-Security max-age on responses to requests that came over https
    # (to uvicorn over TLS, or with `X-Forwarded-Proto: https` from one of
    # trusted_proxies); 0 sends none.
    hsts_seconds: int = Field(default=365 * 24 * 3600, ge=0)
    # Browser origins allowed to call the API (CORS), comma-separated; empty: no CORS
    # headers at all, so browsers allow only same-origin calls.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Proxies (CIDR ranges, comma-separated) whose X-Forwarded-For names the client that
    # the users service's login and sign-up limits count (gateway.client_address); empty:
    # the header is ignored, and the client is the connection's peer.
    trusted_proxies: Annotated[tuple[ProxyNetwork, ...], NoDecode] = ()

    # At least analysis_deadline_seconds: an analysis in flight at SIGTERM finishes (or
    # meets its own deadline) before the grace ends. What still runs then (a stream, at
    # most) is answered 503 (a stream: an `error` event).
    shutdown_grace_seconds: float = Field(default=65.0, ge=0)

    @model_validator(mode="after")
    def _metrics_apart(self) -> GatewaySettings:
        port = self.metrics_addr.rsplit(":", 1)[1] if self.metrics_addr else None
        if port == str(self.port) and self.port != 0:
            raise ValueError(
                "GATEWAY_METRICS_ADDR must not use GATEWAY_ADDR's port: metrics are never "
                "served on the public REST port"
            )
        return self

    @field_validator("health_addr")
    @classmethod
    def _check_health_addr(cls, value: str) -> str:
        return value if not value else check_listen_address(value)

    @field_validator("users_target", "ai_target")
    @classmethod
    def _check_target(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("expected a gRPC target, e.g. 127.0.0.1:50051 or dns:///users:50051")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return tuple(ipaddress.ip_network(p.strip()) for p in value.split(",") if p.strip())
            except ValueError as exc:
                raise ValueError(f"expected CIDR ranges such as 10.0.0.0/8: {exc}") from None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com")
        return value

    def production_problems(self) -> list[str]:
        """What production mode refuses (servicekit.production)."""
        problems = [*self.token_problems(), *self.upstream_problems("users_target", "ai_target")]
        secret = self.client_secret.get_secret_value() if self.client_secret else None
        if production.is_public(secret):
            problems.append("GATEWAY_CLIENT_SECRET is a value published in the repository")
        return problems

    def service_secret(self) -> str:
        """The service account's secret; StartupError naming the settings if none."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        try:
            secret = self.client_secret_file.read_text().strip()
        except OSError:
            secret = ""
        if not secret:
            raise StartupError(
                "the gateway needs its service account's secret: set GATEWAY_CLIENT_SECRET, "
                f"or GATEWAY_CLIENT_SECRET_FILE (no secret in {self.client_secret_file}); "
                f"make one with `python -m users_service create-service-account "
                f"{self.client_id} --scope {','.join(GATEWAY_SCOPES)} --secret-file FILE`"
            )
        return secret

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def health_host_port(self) -> tuple[str, int] | None:
        """Where the health port listens; None when it is not served."""
        if not self.health_addr:
            return None
        host, port = self.health_addr.rsplit(":", 1)
        return host.strip("[]"), int(port)
