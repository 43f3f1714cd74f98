"""Tokens, the liveness cache and the settings, in-process (no server needed)."""

from __future__ import annotations

import os
import time

import jwt
import pytest
from pydantic import ValidationError

from gateway.auth import InvalidToken, LivenessCache, TokenService
from gateway.settings import GatewaySettings
from servicekit.settings import SettingsError, load_settings
from tests.support.gateway import JWT_SECRET


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tokens(clock: Clock | None = None, **changes: object) -> TokenService:
    values: dict[str, object] = {
        "algorithm": "HS256",
        "issuer": "tandem-gateway",
        "audience": "tandem-api",
        "ttl_seconds": 60,
        **changes,
    }
    if clock is not None:
        values["clock"] = clock
    return TokenService(JWT_SECRET, **values)  # type: ignore[arg-type]


def test_a_token_names_its_user_with_every_claim() -> None:
    service = tokens()
    issued = service.issue("u-1")
    assert issued.expires_in == 60
    assert service.verify(issued.token) == "u-1"
    claims = jwt.decode(
        issued.token,
        JWT_SECRET,
        algorithms=["HS256"],
        audience="tandem-api",
        issuer="tandem-gateway",
    )
    assert set(claims) == {"sub", "iat", "exp", "iss", "aud", "jti"}
    assert service.issue("u-1").token != issued.token  # unique jti


def test_a_remembered_token_still_expires() -> None:
    clock = Clock(time.time())
    service = tokens(clock)
    token = service.issue("u-1").token
    assert service.verify(token) == "u-1"  # checked in full, then remembered
    clock.now += 59
    assert service.verify(token) == "u-1"
    clock.now += 1
    with pytest.raises(InvalidToken, match="expired"):
        service.verify(token)


def test_only_valid_tokens_are_remembered_and_memory_is_bounded() -> None:
    service = tokens(max_verified=3)
    other = tokens(issuer="someone-else")
    for _ in range(2):
        with pytest.raises(InvalidToken, match="invalid"):
            service.verify(other.issue("u-1").token)
    issued = [service.issue(f"u-{i}").token for i in range(5)]
    for i, token in enumerate(issued):
        assert service.verify(token) == f"u-{i}"
    assert len(service._verified) <= 3


def test_the_liveness_cache_remembers_for_its_ttl() -> None:
    clock = Clock(100.0)
    cache = LivenessCache(2.0, clock=clock)
    assert not cache.is_live("u")
    cache.mark_live("u")
    assert cache.is_live("u")
    clock.now += 1.9
    assert cache.is_live("u")
    clock.now += 0.1
    assert not cache.is_live("u")
    cache.mark_live("u")
    cache.forget("u")
    assert not cache.is_live("u")


def test_a_zero_ttl_remembers_nothing_and_a_full_cache_prunes() -> None:
    off = LivenessCache(0)
    off.mark_live("u")
    assert not off.is_live("u")
    clock = Clock(0.0)
    full = LivenessCache(10, max_entries=4, clock=clock)
    for i in range(10):
        full.mark_live(f"u{i}")
        clock.now += 1
    assert len(full._live_until) <= 4
    assert full.is_live("u9")


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    settings = GatewaySettings()
    assert settings.addr == "127.0.0.1:8000"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.jwt_secret is None
    assert settings.auth_cache_seconds == 2.0
    assert settings.max_body_bytes == 1024 * 1024
    assert GatewaySettings(addr="[::1]:0").host == "::1"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_JWT_SECRET", "short", "GATEWAY_JWT_SECRET is invalid: Value error, must be at"),
        ("GATEWAY_ADDR", "8000", "GATEWAY_ADDR is invalid: Value error, expected host:port"),
        ("GATEWAY_USERS_TARGET", "a b", "GATEWAY_USERS_TARGET is invalid: Value error, expected"),
        ("GATEWAY_AUTH_CACHE_SECONDS", "-1", "GATEWAY_AUTH_CACHE_SECONDS is invalid"),
        ("GATEWAY_MAX_BODY_BYTES", "10", "GATEWAY_MAX_BODY_BYTES is invalid"),
        ("GATEWAY_JWT_ALGORITHM", "none", "GATEWAY_JWT_ALGORITHM is invalid"),
    ],
)
def test_invalid_settings_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(GatewaySettings)
    assert str(caught.value).startswith(message)
    if variable == "GATEWAY_JWT_SECRET":
        assert value not in str(caught.value)


def test_targets_accept_any_grpc_target_string() -> None:
    for target in ("127.0.0.1:50051", "dns:///users:50051", "ipv4:127.0.0.1:1,127.0.0.1:2"):
        assert GatewaySettings(users_target=target).users_target == target
    with pytest.raises(ValidationError):
        GatewaySettings(ai_target="  ")
