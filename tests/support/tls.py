"""Test CAs and certificates (trustme), as PEM files in a test's directory, and clients.

Server certificates name `SERVER_NAME`, not 127.0.0.1: clients connect to the address
and check the certificate against that name, as a probe or a client inside a cluster
does (`grpc.ssl_target_name_override`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servicekit.tls import ServerTls, channel_credentials

SERVER_NAME = "tandem-test.internal"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate (chain) file and its key file."""

    cert_file: Path
    key_file: Path


class Authority:
    """A CA of its own, whose files live in `directory / name`."""

    def __init__(self, directory: Path, name: str) -> None:
        self.ca = trustme.CA(organization_name=f"Tandem test CA {name}")
        self.directory = directory / name
        self.directory.mkdir(parents=True)
        self.ca_file = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._issued = 0

    def issue(self, *identities: str, expired: bool = False) -> KeyPair:
        """A new certificate for `identities` (default: SERVER_NAME), and its key."""
        self._issued += 1
        not_before = not_after = None  # trustme's defaults: valid now
        if expired:
            now = datetime.datetime.now(datetime.UTC)
            not_before, not_after = (
                now - datetime.timedelta(days=2),
                now - datetime.timedelta(days=1),
            )
        leaf = self.ca.issue_cert(
            *(identities or (SERVER_NAME,)), not_before=not_before, not_after=not_after
        )
        pair = KeyPair(
            self.directory / f"cert-{self._issued}.pem", self.directory / f"key-{self._issued}.pem"
        )
        leaf.private_key_pem.write_to_path(str(pair.key_file))
        for pem in leaf.cert_chain_pems:
            pem.write_to_path(str(pair.cert_file), append=True)
        return pair


def replace_file(path: Path, source: Path) -> None:
    """Put `source`'s bytes at `path` the way cert-manager or a secret mount does: a new
    file moved over the old one, so a reader sees one or the other, never half."""
    draft = path.with_name(f".{path.name}.new")
    draft.write_bytes(source.read_bytes())
    # A later mtime too, in case a replacement ever reuses the inode and the size.
    if path.exists():
        later = path.stat().st_mtime_ns + 1_000_000_000
        os.utime(draft, ns=(later, later))
    os.replace(draft, path)


def install(pair: KeyPair, at: KeyPair) -> None:
    """Make `at`'s files hold `pair`'s certificate and key."""
    replace_file(at.cert_file, pair.cert_file)
    replace_file(at.key_file, pair.key_file)


def served_copy(pair: KeyPair, directory: Path) -> KeyPair:
    """Copies of `pair` in `directory` (made), for a server whose files a test rotates."""
    directory.mkdir(parents=True, exist_ok=True)
    at = KeyPair(directory / "tls.crt", directory / "tls.key")
    install(pair, at)
    return at


def server_tls(pair: KeyPair, client_ca: Path | None = None) -> ServerTls:
    return ServerTls(pair.cert_file, pair.key_file, client_ca)


CHANNEL_OPTIONS = (
    ("grpc.ssl_target_name_override", SERVER_NAME),
    # A connection of its own per channel: gRPC may otherwise hand a new channel a
    # connection another channel of this process opened, before a rotation.
    ("grpc.use_local_subchannel_pool", 1),
)


@asynccontextmanager
async def tls_channel(
    address: str, ca_file: Path, client: KeyPair | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to `address` trusting `ca_file`, presenting `client` when given."""
    credentials = channel_credentials(
        ca_file, client.cert_file if client else None, client.key_file if client else None
    )
    async with grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS) as channel:
        yield channel


async def health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """OK when the server says SERVING over `channel`; else the call's status."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


async def check_tls(address: str, ca_file: Path, client: KeyPair | None = None) -> grpc.StatusCode:
    """`health_code` over a new TLS connection."""
    async with tls_channel(address, ca_file, client) as channel:
        return await health_code(channel)


def server_settings(pair: KeyPair, client_ca: Path | None = None) -> dict[str, Path]:
    """`ServiceSettings` overrides that serve with `pair`, and with a `client_ca`
    require client certificates it issued (mTLS)."""
    values = {"tls_cert_file": pair.cert_file, "tls_key_file": pair.key_file}
    if client_ca is not None:
        values["tls_client_ca_file"] = client_ca
    return values


def upstream_settings(ca_file: Path, client: KeyPair | None = None) -> dict[str, Path | str]:
    """`UpstreamTlsSettings` overrides: TLS to services whose certificates `ca_file`
    issued for SERVER_NAME, presenting `client` when given (mTLS)."""
    values: dict[str, Path | str] = {
        "upstream_tls_ca_file": ca_file,
        "upstream_tls_server_name": SERVER_NAME,
    }
    if client is not None:
        values["upstream_tls_cert_file"] = client.cert_file
        values["upstream_tls_key_file"] = client.key_file
    return values
