"""Production mode (servicekit.production): what each process refuses, in one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ai_service.settings import AiSettings
from gateway.settings import GatewaySettings
from servicekit import production
from servicekit.errors import StartupError
from tests.conftest import ROOT
from users_service.settings import UsersSettings

PG = "postgresql+asyncpg://tandem:{password}@db.internal:5432/tandem"
SAFE_SECRET = "a-real-secret-from-a-secret-store"
TLS: dict[str, Any] = {"tls_cert_file": "/certs/tls.crt", "tls_key_file": "/certs/tls.key"}


def users(**overrides: Any) -> UsersSettings:
    values: dict[str, Any] = {
        "addr": "0.0.0.0:50051",
        "database_url": PG.format(password="s3cret-from-the-store"),
        "page_token_secret": SAFE_SECRET,
        "token_signing_key_file": "/keys/signing-key.pem",
        "reflection": False,
        **TLS,
        **overrides,
    }
    return UsersSettings(**values)


def refusal(problems: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TANDEM_ENV", "production")
    with pytest.raises(StartupError) as raised:
        production.check(problems)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_production_ready_configuration_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_ENV", "production")
    production.check(users().production_problems())
    ai = AiSettings(
        addr="0.0.0.0:50052",
        database_url=PG.format(password="another-real-one"),
        page_token_secret=SAFE_SECRET,
        reflection=False,
        users_target="dns:///users:50051",
        upstream_tls_ca_file="/certs/ca.crt",
        **TLS,
    )
    production.check(ai.production_problems())
    gateway = GatewaySettings(
        users_target="dns:///users:50051",
        ai_target="dns:///ai:50052",
        upstream_tls_ca_file="/certs/ca.crt",
        client_secret=SAFE_SECRET,
    )
    production.check(gateway.production_problems())


def test_development_allows_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_ENV", raising=False)
    production.check(["anything"])
    monkeypatch.setenv("TANDEM_ENV", "staging")
    with pytest.raises(StartupError, match="TANDEM_ENV must be development or production"):
        production.check([])


def test_the_users_service_refuses_each_unsafe_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    unsafe = users(
        tls_cert_file=None,
        tls_key_file=None,
        page_token_secret=None,
        database_url=PG.format(password="tandem-dev-only"),
        token_signing_key_file=None,
        reflection=True,
        access_token_ttl_seconds=7200,
        token_max_lifetime_seconds=7200,
    )
    message = refusal(unsafe.production_problems(), monkeypatch)
    for expected in (
        "USERS_ADDR is not a loopback address and TLS is off",
        "USERS_PAGE_TOKEN_SECRET is not set",
        "USERS_DATABASE_URL has a password published in the repository",
        "USERS_TOKEN_SIGNING_KEY_FILE is not set",
        "USERS_REFLECTION is on",
        "USERS_ACCESS_TOKEN_TTL_SECONDS exceeds 3600 s",
        "USERS_TOKEN_MAX_LIFETIME_SECONDS exceeds 3600 s",
    ):
        assert expected in message
    assert "tandem-dev-only" not in message


def test_published_secrets_and_placeholders_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    composed = users(page_token_secret="dev-only-users-page-token-secret")
    assert "USERS_PAGE_TOKEN_SECRET is a value published" in refusal(
        composed.production_problems(), monkeypatch
    )
    placeholder = users(page_token_secret="REPLACE-ME-with-32-random-bytes")
    assert placeholder.production_problems()
    gateway = GatewaySettings(client_secret="REPLACE-ME-please-do")
    assert "GATEWAY_CLIENT_SECRET is a value published" in refusal(
        gateway.production_problems(), monkeypatch
    )


def test_plaintext_to_a_remote_upstream_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = GatewaySettings(
        users_target="dns:///users:50051", ai_target="127.0.0.1:50052", client_secret=SAFE_SECRET
    )
    message = refusal(gateway.production_problems(), monkeypatch)
    assert "GATEWAY_USERS_TARGET is not on this machine and TLS to it is off" in message
    assert "GATEWAY_AI_TARGET" not in message
    ai = AiSettings(
        users_target="ipv4:10.0.0.1:50051,10.0.0.2:50051",
        page_token_secret=SAFE_SECRET,
        reflection=False,
        token_max_lifetime_seconds=7200,
    )
    message = refusal(ai.production_problems(), monkeypatch)
    assert "AI_USERS_TARGET is not on this machine" in message
    assert "AI_TOKEN_MAX_LIFETIME_SECONDS exceeds 3600 s" in message
    # Loopback serving needs no TLS.
    assert "AI_ADDR" not in message


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", True),
        ("0.0.0.0:50051", False),
        (":50051", False),
        ("dns:///users:50051", False),
        ("ipv4:127.0.0.1:1,10.0.0.1:2", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert production.is_loopback(address) is loopback


def test_every_default_secret_in_the_repository_is_known_public() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    defaults = set(re.findall(r"\$\{[A-Z_]*(?:PASSWORD|SECRET)[A-Z_]*:-([^}]+)\}", compose))
    assert defaults, "the compose file's defaults were not found"
    assert all(production.is_public(value) for value in defaults), defaults
    secrets = (ROOT / "deploy" / "kubernetes" / "secrets.yaml").read_text()
    values = [v for v in re.findall(r"^\s+[A-Z_]+: (\S+)$", secrets, re.MULTILINE) if v != '""']
    assert values and all(production.is_public(v) or "REPLACE-ME" in v for v in values)


def test_the_tests_own_secrets_are_public_too() -> None:
    servers = Path(ROOT / "tests" / "support" / "servers.py").read_text()
    assert "test-page-token-secret" in servers
    assert production.is_public("test-page-token-secret")
