"""TLS and mTLS on servicekit's servers: who gets in, rotation without restart, settings.

Each test runs a real server (build_server, the probe service) on a real port, with
certificates from trustme CAs written to the test's directory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic_settings import SettingsConfigDict

from servicekit.errors import StartupError
from servicekit.server import GrpcServer, build_server
from servicekit.settings import ServiceSettings, SettingsError, load_settings
from servicekit.tls import ServerTls, check_client_files
from tandem_client import ClientTls
from tests.support import probe
from tests.support.processes import run_command
from tests.support.tls import (
    SERVER_NAME,
    Authority,
    KeyPair,
    check_tls,
    health_code,
    install,
    replace_file,
    served_copy,
    server_tls,
    tls_channel,
)

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@asynccontextmanager
async def running(tls: ServerTls | None, *, reflection: bool = True) -> AsyncIterator[GrpcServer]:
    server = build_server(
        "127.0.0.1:0",
        [probe.service()],
        tls=tls,
        reflection=probe.authenticate if reflection else None,
        access_log=False,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "ca")


@pytest.fixture
def other_ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "other")


@pytest.fixture
def served(ca: Authority, tmp_path: Path) -> KeyPair:
    """The files the server reads, holding a certificate of `ca`; tests may replace them."""
    return served_copy(ca.issue(), tmp_path / "served")


# --- TLS ----------------------------------------------------------------------------


async def test_tls_client_trusting_the_ca_is_served(ca: Authority, served: KeyPair) -> None:
    async with running(server_tls(served)) as server:
        assert server.tls is not None and not server.tls.mutual
        assert server.transport == f"TLS with {served.cert_file}"
        assert await check_tls(server.address, ca.ca_file) == OK


async def test_tls_refuses_plaintext_clients(served: KeyPair) -> None:
    async with (
        running(server_tls(served)) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        assert await health_code(channel) == UNAVAILABLE


async def test_tls_client_trusting_another_ca_fails(served: KeyPair, other_ca: Authority) -> None:
    async with running(server_tls(served)) as server:
        assert await check_tls(server.address, other_ca.ca_file) == UNAVAILABLE


async def test_plaintext_server_says_so() -> None:
    async with running(None) as server:
        assert server.tls is None
        assert server.transport == "plaintext (no TLS)"


# --- mTLS ---------------------------------------------------------------------------


async def test_mtls_takes_client_certificates_from_the_client_ca_only(
    ca: Authority, served: KeyPair, other_ca: Authority
) -> None:
    async with running(server_tls(served, client_ca=ca.ca_file)) as server:
        assert server.tls is not None and server.tls.mutual
        assert server.transport.startswith("mTLS with ")
        address = server.address
        assert await check_tls(address, ca.ca_file, ca.issue("client")) == OK
        assert await check_tls(address, ca.ca_file) == UNAVAILABLE, "no client certificate"
        assert await check_tls(address, ca.ca_file, other_ca.issue("client")) == UNAVAILABLE
        expired = ca.issue("client", expired=True)
        assert await check_tls(address, ca.ca_file, expired) == UNAVAILABLE


# --- rotation -----------------------------------------------------------------------


async def test_a_rotated_certificate_serves_new_connections(
    ca: Authority, served: KeyPair, other_ca: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="servicekit.tls")
    async with (
        running(server_tls(served)) as server,
        tls_channel(server.address, ca.ca_file) as before,
    ):
        assert await health_code(before) == OK
        install(other_ca.issue(), at=served)
        assert await check_tls(server.address, other_ca.ca_file) == OK
        assert await check_tls(server.address, ca.ca_file) == UNAVAILABLE
        # A connection made before keeps the certificate it was made with.
        assert await health_code(before) == OK
    reloads = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(reloads) == 1
    assert str(served.cert_file) in reloads[0] and str(served.key_file) in reloads[0]
    assert "BEGIN" not in reloads[0]


async def test_a_broken_replacement_keeps_the_old_certificate_with_one_warning(
    ca: Authority, served: KeyPair, other_ca: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="servicekit.tls")
    async with running(server_tls(served)) as server:
        # Half a rotation: the other CA's certificate, with the old key.
        replace_file(served.cert_file, other_ca.issue().cert_file)
        for _ in range(3):
            assert await check_tls(server.address, ca.ca_file) == OK
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, "one warning per change, not per handshake"
        message = warnings[0].getMessage()
        assert f"TLS key {served.key_file} is not the key of the certificate" in message
        # The rest of the rotation: the files match again, and are served.
        install(other_ca.issue(), at=served)
        assert await check_tls(server.address, other_ca.ca_file) == OK


async def test_an_unreadable_replacement_keeps_the_old_certificate(
    ca: Authority, served: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(server_tls(served)) as server:
        served.key_file.unlink()
        assert await check_tls(server.address, ca.ca_file) == OK
        assert any(
            f"cannot read the TLS key {served.key_file}" in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING
        )


async def test_a_rotated_client_ca_admits_its_clients(
    ca: Authority, served: KeyPair, other_ca: Authority, tmp_path: Path
) -> None:
    client_ca = tmp_path / "served" / "client-ca.pem"
    replace_file(client_ca, ca.ca_file)
    async with running(server_tls(served, client_ca=client_ca)) as server:
        newcomer = other_ca.issue("client")
        assert await check_tls(server.address, ca.ca_file, newcomer) == UNAVAILABLE
        replace_file(client_ca, other_ca.ca_file)
        assert await check_tls(server.address, ca.ca_file, newcomer) == OK
        assert await check_tls(server.address, ca.ca_file, ca.issue("client")) == UNAVAILABLE


# --- start-up -----------------------------------------------------------------------


async def test_unusable_files_at_start_up_are_one_line_naming_the_file(
    ca: Authority, served: KeyPair, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    cases = {
        f"cannot read the TLS certificate {missing}": ServerTls(missing, served.key_file),
        f"cannot read the TLS client CA {missing}": ServerTls(
            served.cert_file, served.key_file, missing
        ),
        f"TLS key {served.key_file} is not the key of the certificate": ServerTls(
            ca.issue().cert_file, served.key_file
        ),
        f"TLS certificate {served.key_file} is not a PEM certificate": ServerTls(
            served.key_file, served.key_file
        ),
        f"TLS key {served.cert_file} is not a PEM private key": ServerTls(
            served.cert_file, served.cert_file
        ),
    }
    for expected, tls in cases.items():
        with pytest.raises(StartupError) as caught:
            build_server("127.0.0.1:0", [probe.service()], tls=tls)
        assert expected in str(caught.value)
        assert "\n" not in str(caught.value)


# --- reflection ---------------------------------------------------------------------


async def reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    calls = stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=probe.CREDENTIALS)
    async for response in calls:
        return {s.name for s in response.list_services_response.service}
    raise AssertionError("no reflection response")


async def test_reflection_on_lists_the_services(ca: Authority, served: KeyPair) -> None:
    async with (
        running(server_tls(served), reflection=True) as server,
        tls_channel(server.address, ca.ca_file) as channel,
    ):
        assert await reflected_services(channel) == {
            probe.SERVICE_NAME,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }


async def test_reflection_off_is_unimplemented(ca: Authority, served: KeyPair) -> None:
    async with (
        running(server_tls(served), reflection=False) as server,
        tls_channel(server.address, ca.ca_file) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reflected_services(channel)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert await health_code(channel) == OK


# --- settings -----------------------------------------------------------------------


class TlsTestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TLSTEST_", extra="ignore", frozen=True)

    addr: str = "127.0.0.1:0"
    database_url: str = "sqlite+aiosqlite:///:memory:"


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("CERT_FILE", "KEY_FILE", "CLIENT_CA_FILE"):
        monkeypatch.delenv(f"TLSTEST_TLS_{name}", raising=False)
    monkeypatch.delenv("TLSTEST_REFLECTION", raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"TLS_CERT_FILE": "/tls/tls.crt"},
            "TLSTEST_TLS_CERT_FILE is set but TLSTEST_TLS_KEY_FILE is not: TLS needs both",
        ),
        (
            {"TLS_KEY_FILE": "/tls/tls.key", "TLS_CERT_FILE": ""},
            "TLSTEST_TLS_KEY_FILE is set but TLSTEST_TLS_CERT_FILE is not: TLS needs both",
        ),
        (
            {"TLS_CLIENT_CA_FILE": "/tls/ca.crt"},
            "TLSTEST_TLS_CLIENT_CA_FILE is set but TLSTEST_TLS_CERT_FILE and "
            "TLSTEST_TLS_KEY_FILE are not: mTLS needs the server's own certificate and key too",
        ),
    ],
)
def test_settings_name_the_variables_of_an_incomplete_tls(
    environment: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        environment.setenv(f"TLSTEST_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings(TlsTestSettings)
    assert str(caught.value) == message


def test_settings_give_the_server_tls(environment: pytest.MonkeyPatch) -> None:
    settings = load_settings(TlsTestSettings)
    assert settings.server_tls() is None
    assert settings.reflection is True
    for name, value in {
        "TLS_CERT_FILE": "/tls/tls.crt",
        "TLS_KEY_FILE": "/tls/tls.key",
        "TLS_CLIENT_CA_FILE": "",  # as compose passes an unset variable: none
        "REFLECTION": "false",
    }.items():
        environment.setenv(f"TLSTEST_{name}", value)
    settings = load_settings(TlsTestSettings)
    assert settings.server_tls() == ServerTls(Path("/tls/tls.crt"), Path("/tls/tls.key"), None)
    assert settings.reflection is False
    environment.setenv("TLSTEST_TLS_CLIENT_CA_FILE", "/tls/ca.crt")
    tls = load_settings(TlsTestSettings).server_tls()
    assert tls is not None and tls.client_ca_file == Path("/tls/ca.crt") and tls.mutual


# --- the health check CLI -----------------------------------------------------------


async def healthcheck(*args: str | Path) -> tuple[int, str]:
    return await run_command(["-m", "servicekit.healthcheck", *map(str, args)], env={}, timeout=30)


async def test_healthcheck_probes_an_mtls_server_with_a_client_certificate(
    ca: Authority, served: KeyPair
) -> None:
    probe_pair = ca.issue("probe")
    tls_args = ("--cacert", ca.ca_file, "--server-name", SERVER_NAME)
    client_args = ("--cert", probe_pair.cert_file, "--key", probe_pair.key_file)
    async with running(server_tls(served, client_ca=ca.ca_file)) as server:
        assert await healthcheck(*tls_args, *client_args, server.address) == (0, "")
        assert await healthcheck(
            "--service", probe.SERVICE_NAME, *tls_args, *client_args, server.address
        ) == (0, "")
        code, output = await healthcheck(*tls_args, server.address)
        assert code == 1
        assert output.startswith(f"healthcheck: {server.address} is not serving: UNAVAILABLE")
        assert output.count("\n") == 1


async def test_healthcheck_checks_the_server_name(ca: Authority, served: KeyPair) -> None:
    async with running(server_tls(served)) as server:
        assert await healthcheck(
            "--cacert", ca.ca_file, "--server-name", SERVER_NAME, server.address
        ) == (0, "")
        # 127.0.0.1 is not the name on the certificate.
        code, output = await healthcheck("--cacert", ca.ca_file, server.address)
        assert code == 1 and "UNAVAILABLE" in output
        code, output = await healthcheck(server.address)
        assert code == 1 and "UNAVAILABLE" in output, "plaintext to a TLS server"


async def test_healthcheck_refuses_half_a_client_certificate(ca: Authority, tmp_path: Path) -> None:
    pair = ca.issue("probe")
    code, output = await healthcheck(
        "--cacert", ca.ca_file, "--cert", pair.cert_file, "127.0.0.1:1"
    )
    assert code == 2 and "--cert and --key go together" in output
    code, output = await healthcheck(
        "--cert", pair.cert_file, "--key", pair.key_file, "127.0.0.1:1"
    )
    assert code == 2 and "need --cacert" in output
    missing = tmp_path / "missing.pem"
    code, output = await healthcheck("--cacert", missing, "127.0.0.1:1")
    assert code == 1
    assert (
        output == f"healthcheck: cannot check 127.0.0.1:1: {missing}: No such file or directory\n"
    )


def test_client_files_that_are_no_pem_stop_start_up(tmp_path: Path) -> None:
    placeholder = tmp_path / "placeholder.pem"
    placeholder.write_text("REPLACE-ME\n")
    with pytest.raises(StartupError, match=f"TLS CA {placeholder} is not a PEM certificate"):
        check_client_files(ClientTls(placeholder))
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    check_client_files(ClientTls(ca_file))
    with pytest.raises(StartupError, match="is not a PEM certificate"):
        check_client_files(ClientTls(ca_file, placeholder, placeholder))
    issued = ca.issue_cert("gateway.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    check_client_files(ClientTls(ca_file, cert, key))
    check_client_files(None)
