"""The gateway's settings, in-process (no server needed)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from servicekit.settings import SettingsError, load_settings


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    settings = GatewaySettings()
    assert settings.addr == "127.0.0.1:8000"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.token_issuer == "tandem-users"
    assert settings.token_max_lifetime_seconds == 3600
    assert settings.auth_cache_seconds == 2.0
    assert settings.max_body_bytes == 1024 * 1024
    assert GatewaySettings(addr="[::1]:0").host == "::1"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_ADDR", "8000", "GATEWAY_ADDR is invalid: Value error, expected host:port"),
        ("GATEWAY_USERS_TARGET", "a b", "GATEWAY_USERS_TARGET is invalid: Value error, expected"),
        ("GATEWAY_AUTH_CACHE_SECONDS", "-1", "GATEWAY_AUTH_CACHE_SECONDS is invalid"),
        ("GATEWAY_MAX_BODY_BYTES", "10", "GATEWAY_MAX_BODY_BYTES is invalid"),
        (
            "GATEWAY_TOKEN_MAX_LIFETIME_SECONDS",
            "1",
            "GATEWAY_TOKEN_MAX_LIFETIME_SECONDS is invalid",
        ),
    ],
)
def test_invalid_settings_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(GatewaySettings)
    assert str(caught.value).startswith(message)


def test_targets_accept_any_grpc_target_string() -> None:
    for target in ("127.0.0.1:50051", "dns:///users:50051", "ipv4:127.0.0.1:1,127.0.0.1:2"):
        assert GatewaySettings(users_target=target).users_target == target
    with pytest.raises(ValidationError):
        GatewaySettings(ai_target="  ")
