"""A real users_service process serving mTLS (USERS_TLS_*), called by the real grpcurl
binary and probed by `python -m servicekit.healthcheck`, with certificates from a
trustme CA (tests.support.tls) that issued the server's and the clients' alike."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.conftest import ROOT
from tests.support.grpcurl import Tls, grpcurl
from tests.support.processes import ServiceProcess, run_command
from tests.support.tls import SERVER_NAME, Authority, KeyPair

SERVICE = "users.v1.UsersService"
# grpcurl retries a refused handshake until this many seconds have passed (default 10).
REFUSED_AFTER = ("-connect-timeout", "3")


@dataclass(frozen=True)
class Served:
    address: str
    ca: Authority
    client: KeyPair


@pytest.fixture
async def served(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    ca = Authority(tmp_path, "ca")
    server = ca.issue()
    env = {
        "USERS_DATABASE_URL": sqlite_url,
        "USERS_ADDR": "127.0.0.1:0",
        "USERS_TLS_CERT_FILE": str(server.cert_file),
        "USERS_TLS_KEY_FILE": str(server.key_file),
        "USERS_TLS_CLIENT_CA_FILE": str(ca.ca_file),
    }
    code, output = await run_command(["-m", "users_service", "migrate"], env)
    assert code == 0, output
    async with ServiceProcess(["-m", "users_service"], env, cwd=str(ROOT)) as service:
        address = await service.wait_serving()
        transport = await service.wait_for_line(re.compile(r"transport: (.+)$"))
        assert transport[1] == (
            f"mTLS with {server.cert_file}, client certificates from {ca.ca_file}"
        )
        yield Served(address, ca, ca.issue("support.clients.tandem.test"))


async def test_grpcurl_over_mtls_gets_the_services_answer(served: Served) -> None:
    unknown = str(uuid.uuid4())
    tls = Tls(served.ca.ca_file, served.client)
    # A service token (tests.support.tokens, signed with the key the process uses).
    found = await grpcurl(served.address, f"{SERVICE}/GetUser", data={"id": unknown}, tls=tls)
    assert found.status_code == grpc.StatusCode.NOT_FOUND.value[0], found.output
    assert "Code: NotFound" in found.output
    assert "USER_NOT_FOUND" in found.output  # grpcurl prints the ErrorInfo detail

    listed = await grpcurl(served.address, "list", tls=tls)
    assert listed.exit_code == 0, listed.output
    assert SERVICE in listed.output.split()
    # Reflection, like every call but health's, needs a credential.
    anonymous = await grpcurl("-use-reflection", served.address, "list", tls=tls, token=None)
    assert anonymous.exit_code != 0
    assert "code = Unauthenticated" in anonymous.output, anonymous.output


async def test_grpcurl_without_a_client_certificate_is_refused(served: Served) -> None:
    tls = Tls(served.ca.ca_file)
    refused = await grpcurl(
        *REFUSED_AFTER,
        served.address,
        f"{SERVICE}/GetUser",
        data={"id": str(uuid.uuid4())},
        tls=tls,
    )
    assert refused.exit_code != 0
    assert "NotFound" not in refused.output
    assert "Failed to dial target host" in refused.output, refused.output


async def test_grpcurl_in_plaintext_is_refused(served: Served) -> None:
    plaintext = await grpcurl(
        *REFUSED_AFTER, served.address, f"{SERVICE}/GetUser", data={"id": str(uuid.uuid4())}
    )
    assert plaintext.exit_code != 0
    assert "NotFound" not in plaintext.output
    assert "Failed to dial target host" in plaintext.output, plaintext.output


async def test_the_healthcheck_probe_passes_with_the_client_certificate(served: Served) -> None:
    tls = ["--cacert", str(served.ca.ca_file), "--server-name", SERVER_NAME]
    client = ["--cert", str(served.client.cert_file), "--key", str(served.client.key_file)]
    probe = ["-m", "servicekit.healthcheck", "--timeout", "10"]
    code, output = await run_command([*probe, *tls, *client, served.address], {})
    assert (code, output) == (0, "")
    code, output = await run_command(
        [*probe, "--service", SERVICE, *tls, *client, served.address], {}
    )
    assert (code, output) == (0, "")
    # Without the certificate, the probe is refused like any other caller.
    code, output = await run_command([*probe, "--timeout", "3", *tls, served.address], {})
    assert code == 1, output
