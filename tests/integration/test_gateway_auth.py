"""The session cache and the gateway's settings, in-process (no server needed)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from gateway.auth import SessionCache
from gateway.settings import GatewaySettings
from servicekit.settings import SettingsError, load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_session_cache_remembers_for_its_ttl() -> None:
    clock = Clock()
    cache = SessionCache(2.0, clock=clock)
    assert not cache.is_live("s1")
    cache.mark_live("s1", "u1")
    assert cache.is_live("s1")
    clock.now += 1.9
    assert cache.is_live("s1")
    clock.now += 0.2
    assert not cache.is_live("s1")


def test_the_session_cache_forgets_sessions_and_accounts() -> None:
    cache = SessionCache(60)
    for session, user in (("s1", "u1"), ("s2", "u1"), ("s3", "u1"), ("s4", "u2")):
        cache.mark_live(session, user)
    cache.forget("s4")
    assert not cache.is_live("s4")
    cache.forget_user("u1", keep="s2")
    assert [cache.is_live(s) for s in ("s1", "s2", "s3")] == [False, True, False]
    cache.forget_user("u1")
    assert not cache.is_live("s2")


def test_the_session_cache_is_bounded_and_can_be_off() -> None:
    off = SessionCache(0)
    off.mark_live("s", "u")
    assert not off.is_live("s")
    clock = Clock()
    full = SessionCache(10, max_entries=4, clock=clock)
    for i in range(10):
        full.mark_live(f"s{i}", "u")
        clock.now += 1
    assert len(full._live_until) <= 4
    assert full.is_live("s9")


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
