"""The gateway benchmark's servers: the gateway path and the monolith, as real processes.

The gateway path is `python -m users_service` and `python -m gateway`; the monolith is
`uvicorn bench._monolith:app --workers 2`. All listen on free ports below Linux's
ephemeral range (a fixed port inside it can be held for a moment by any client socket),
log at WARNING, and are found ready by asking them (gRPC health, `/healthz`), not by
reading their logs. Children get SIGTERM when the benchmark dies
(tests/support/harness.py).

The users service signs access tokens with an Ed25519 key generated for the run in the
benchmark's work directory (never the development key under ./data); the gateway fetches
its public half from the users service's JWKS, the monolith reads it from a PEM file.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypedDict

import _layout
import _procs
import grpc
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.app import parse_account_reads
from gateway.settings import GatewaySettings
from tests.support.harness import Child, child_env, free_port
from tests.support.processes import create_gateway_account

START_WITHIN_S = 60.0
STOP_WITHIN_S = 20.0
MONOLITH_WORKERS = 2
MONOLITH_POOL_SIZE = 10
# The gateway's default: how long it trusts that a token's session is live.
AUTH_CACHE_SECONDS = float(GatewaySettings.model_fields["auth_cache_seconds"].default)
# Who signs the access tokens and for whom, told to all three alike.
TOKEN_ISSUER = str(GatewaySettings.model_fields["token_issuer"].default)
TOKEN_AUDIENCE = str(GatewaySettings.model_fields["token_audience"].default)
TOKEN_MAX_LIFETIME_SECONDS = int(GatewaySettings.model_fields["token_max_lifetime_seconds"].default)


class Coalescing(TypedDict):
    """How many account reads the gateway answered with how many users calls."""

    reads: int
    calls: int


def write_token_keys(folder: Path) -> tuple[Path, Path]:
    """A fresh Ed25519 key pair as PEM files in `folder`: (private PKCS8, public SPKI)."""
    key = Ed25519PrivateKey.generate()
    private = folder / "token-signing-key.pem"
    public = folder / "token-public-key.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


async def _http_ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        return (await client.get(url)).status_code == 200


async def _grpc_serving(address: str, credentials: grpc.ChannelCredentials | None) -> bool:
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


TransportSettings = tuple[dict[str, str], dict[str, str], grpc.ChannelCredentials | None]


def transport_settings(transport: str, workdir: Path) -> TransportSettings:
    """The users service's and the gateway's TLS settings for `transport`, with
    certificates from a CA made for the run (trustme), and credentials for the checks."""
    if transport == "plaintext":
        return {}, {}, None
    import trustme  # noqa: PLC0415 - a dev dependency, only for TLS runs

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("gateway.bench")
    files = {
        "ca": ca.cert_pem,
        "server.crt": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.crt": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
    }
    paths = {name: workdir / f"tls-{name}.pem" for name in files}
    for name, blob in files.items():
        blob.write_to_path(str(paths[name]))
    users = {
        "USERS_TLS_CERT_FILE": str(paths["server.crt"]),
        "USERS_TLS_KEY_FILE": str(paths["server.key"]),
    }
    gateway = {"GATEWAY_UPSTREAM_TLS_CA_FILE": str(paths["ca"])}
    key = cert = None
    if transport == "mtls":
        users["USERS_TLS_CLIENT_CA_FILE"] = str(paths["ca"])
        gateway["GATEWAY_UPSTREAM_TLS_CERT_FILE"] = str(paths["client.crt"])
        gateway["GATEWAY_UPSTREAM_TLS_KEY_FILE"] = str(paths["client.key"])
        key, cert = paths["client.key"].read_bytes(), paths["client.crt"].read_bytes()
    credentials = grpc.ssl_channel_credentials(paths["ca"].read_bytes(), key, cert)
    return users, gateway, credentials


class GatewayPath:
    """A users service and a gateway in front of it, on ports of their own."""

    def __init__(self, users: Child, gateway: Child, gateway_port: int) -> None:
        self.users = users
        self.gateway = gateway
        self.url = f"http://127.0.0.1:{gateway_port}"

    def pid_groups(self) -> dict[str, list[int]]:
        return {"gateway": [self.gateway.pid], "users": [self.users.pid]}

    async def stop(self) -> None:
        for child in (self.gateway, self.users):
            await child.stop(STOP_WITHIN_S)


class Stack:
    """The users service, the gateway and the monolith of one run, all serving at once.

    The stack that is not being measured sits idle (no calls; its CPU is reported).
    """

    def __init__(
        self,
        database_url: str,
        *,
        workdir: Path,
        monolith_env: Mapping[str, str],
        gateway_env: Mapping[str, str],
        transport: str = "mtls",
        monolith: bool = True,
    ) -> None:
        """`monolith=False`: the gateway path alone (a bench with nothing to compare)."""
        self.database_url = database_url
        self.with_monolith = monolith
        self.workdir = workdir
        self.transport = transport
        self.signing_key_file, self.public_key_file = write_token_keys(workdir)
        self._ports: list[int] = []
        self.users_port, self.gateway_port, self.monolith_port = self._new_ports(3)
        # The gateway's health port (GATEWAY_HEALTH_ADDR), as a deployment has it.
        self.health_port = self._new_ports(1)[0]
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.monolith_url = f"http://127.0.0.1:{self.monolith_port}"
        self.monolith_env = dict(monolith_env)
        self.gateway_env = dict(gateway_env)
        self.users: Child | None = None
        self.gateway: Child | None = None
        self.monolith: Child | None = None
        self.monolith_workers: list[int] = []
        # Paths serving besides the first (other_path).
        self.paths: list[GatewayPath] = []
        self._account: dict[str, str] = {}
        # One CA and its certificates for all paths (made with the first).
        self._tls: TransportSettings | None = None

    def new_port(self) -> int:
        """A free port that no server of the stack has been given."""
        return self._new_ports(1)[0]

    def _new_ports(self, count: int) -> list[int]:
        for _ in range(count):
            self._ports.append(free_port(self._ports))
        return self._ports[-count:]

    def children(self) -> list[Child]:
        extra = [c for path in self.paths for c in (path.gateway, path.users)]
        return [c for c in (self.gateway, self.users, self.monolith) if c is not None] + extra

    async def start(self) -> None:
        self._account = await create_gateway_account(
            {"USERS_DATABASE_URL": self.database_url}, self.workdir
        )
        if self.with_monolith:
            self.monolith = self._monolith_child()
            await self.monolith.start()
        first = await self._launch(self.users_port, self.gateway_port, self.health_port, {})
        self.users, self.gateway = first.users, first.gateway
        if self.monolith is not None:
            await self.monolith.wait_ready(self._monolith_workers_up, START_WITHIN_S)

    @asynccontextmanager
    async def other_path(self, env: Mapping[str, str]) -> AsyncIterator[GatewayPath]:
        """Another users service and gateway on the same database while the block runs,
        with `env` on top of their settings (GATEWAY_*, USERS_* and OTEL_* variables:
        each process takes what concerns it)."""
        users_port, gateway_port, health_port = self._new_ports(3)
        path = await self._launch(users_port, gateway_port, health_port, env)
        self.paths.append(path)
        try:
            yield path
        finally:
            self.paths.remove(path)
            await path.stop()

    async def _launch(
        self, users_port: int, gateway_port: int, health_port: int, extra: Mapping[str, str]
    ) -> GatewayPath:
        users_address = f"127.0.0.1:{users_port}"
        # Nothing listens there; GET /v1/users/{id} never calls the ai service.
        ai_port = self._new_ports(1)[0]
        if self._tls is None:
            self._tls = transport_settings(self.transport, self.workdir)
        users_tls, gateway_tls, credentials = self._tls
        users_env = {
            "USERS_DATABASE_URL": self.database_url,
            "USERS_ADDR": users_address,
            "USERS_ACCESS_LOG": "false",
            "USERS_LOG_LEVEL": "WARNING",
            "USERS_PAGE_TOKEN_SECRET": secrets.token_urlsafe(32),
            "USERS_TOKEN_SIGNING_KEY_FILE": str(self.signing_key_file),
            "USERS_TOKEN_ISSUER": TOKEN_ISSUER,
            "USERS_TOKEN_AUDIENCE": TOKEN_AUDIENCE,
            # The run's one token must outlive it: at the default 15 minutes it
            # expired during the observability rounds (every request then a 401).
            "USERS_ACCESS_TOKEN_TTL_SECONDS": str(TOKEN_MAX_LIFETIME_SECONDS),
            **users_tls,
            **{k: v for k, v in extra.items() if not k.startswith("GATEWAY_")},
        }
        gateway_env = {
            "GATEWAY_ADDR": f"127.0.0.1:{gateway_port}",
            "GATEWAY_HEALTH_ADDR": f"127.0.0.1:{health_port}",
            "GATEWAY_USERS_TARGET": users_address,
            "GATEWAY_AI_TARGET": f"127.0.0.1:{ai_port}",
            "GATEWAY_TOKEN_ISSUER": TOKEN_ISSUER,
            "GATEWAY_TOKEN_AUDIENCE": TOKEN_AUDIENCE,
            "GATEWAY_ACCESS_LOG": "false",
            # No line per request (no access log); INFO for the one at exit
            # that says how well account reads coalesced.
            "GATEWAY_LOG_LEVEL": "INFO",
            **self._account,
            **gateway_tls,
            **self.gateway_env,
            **{k: v for k, v in extra.items() if not k.startswith("USERS_")},
        }
        # Each with a memory layout of its own, drawn at random (bench/_layout.py).
        users = Child(
            _layout.command("users_service"),
            _layout.padded_env(child_env(users_env)),
            str(_procs.ROOT),
            name="users service",
        )
        gateway = Child(
            _layout.command("gateway"),
            _layout.padded_env(child_env(gateway_env)),
            str(_procs.ROOT),
            name="gateway",
        )
        path = GatewayPath(users, gateway, gateway_port)
        await users.start()
        await gateway.start()
        await asyncio.gather(
            users.wait_ready(lambda: _grpc_serving(users_address, credentials), START_WITHIN_S),
            gateway.wait_ready(lambda: _http_ok(path.url + "/healthz"), START_WITHIN_S),
        )
        return path

    def _monolith_child(self) -> Child:
        return Child(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench._monolith:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.monolith_port),
                "--workers",
                str(MONOLITH_WORKERS),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            child_env(
                {
                    "MONOLITH_DATABASE_URL": self.database_url,
                    "MONOLITH_PUBLIC_KEY_FILE": str(self.public_key_file),
                    "MONOLITH_TOKEN_ISSUER": TOKEN_ISSUER,
                    "MONOLITH_TOKEN_AUDIENCE": TOKEN_AUDIENCE,
                    "MONOLITH_TOKEN_MAX_LIFETIME_SECONDS": str(TOKEN_MAX_LIFETIME_SECONDS),
                    "MONOLITH_AUTH_CACHE_SECONDS": f"{AUTH_CACHE_SECONDS:g}",
                    "MONOLITH_POOL_SIZE": str(MONOLITH_POOL_SIZE),
                    **self.monolith_env,
                }
            ),
            str(_procs.ROOT),
            name="monolith",
        )

    async def _monolith_workers_up(self) -> bool:
        """Whether every worker answers: each new connection goes to whichever accepts it."""
        seen: set[int] = set()
        for _ in range(20):
            # A fresh connection each time, so that any worker may take it.
            async with httpx.AsyncClient(timeout=2) as client:
                reply = await client.get(self.monolith_url + "/healthz")
            if reply.status_code != 200:
                return False
            seen.add(int(reply.json()["pid"]))
            if len(seen) == MONOLITH_WORKERS:
                self.monolith_workers = sorted(seen)
                return True
        return False

    async def stop(self) -> None:
        for child in self.children():
            await child.stop(STOP_WITHIN_S)

    def coalescing(self) -> Coalescing | None:
        """How well the first gateway's account reads coalesced (once it has stopped)."""
        assert self.gateway is not None
        for line in reversed(self.gateway.lines):
            if found := parse_account_reads(line):
                return {"reads": found[0], "calls": found[1]}
        return None

    def tails(self) -> str:
        """The last lines each server wrote, for error messages."""
        return "\n".join(f"--- {c.name}:\n{c.tail()}" for c in self.children())

    def check_alive(self) -> None:
        for child in self.children():
            if child.exited():
                raise RuntimeError(f"the {child.name} died:\n{child.tail()}")

    def pid_groups(self) -> dict[str, list[int]]:
        """The processes of each server, for CPU accounting."""
        assert self.gateway is not None
        assert self.users is not None
        assert self.monolith is not None
        return {
            "gateway": [self.gateway.pid],
            "users": [self.users.pid],
            "monolith": _procs.process_tree(self.monolith.pid),
        }
