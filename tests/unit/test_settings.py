from __future__ import annotations

import pytest

from ai_service.settings import AiSettings
from gateway.settings import GatewaySettings
from servicekit.settings import SettingsError, load_settings
from users_service.settings import UsersSettings


@pytest.fixture(autouse=True)
def _no_tandem_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("USERS_", "AI_", "GATEWAY_")):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_stack() -> None:
    users = load_settings(UsersSettings)
    ai = load_settings(AiSettings)
    assert users.addr == "127.0.0.1:50051"
    assert ai.addr == "127.0.0.1:50052"
    assert users.database_url.startswith("sqlite+aiosqlite:///./data/")
    assert ai.database_url.startswith("sqlite+aiosqlite:///./data/")


def test_each_service_reads_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERS_ADDR", "0.0.0.0:6000")
    monkeypatch.setenv("AI_LOG_LEVEL", "debug")
    assert load_settings(UsersSettings).addr == "0.0.0.0:6000"
    assert load_settings(AiSettings).addr == "127.0.0.1:50052"
    assert load_settings(AiSettings).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("USERS_ADDR", "no-port"),
        ("USERS_ADDR", "127.0.0.1:99999"),
        ("USERS_SHUTDOWN_GRACE_SECONDS", "-1"),
        ("USERS_DATABASE_URL", "mysql://x/y"),
        ("USERS_DATABASE_URL", "::::"),
        ("USERS_DB_POOL_SIZE", "zero"),
        ("USERS_LOG_LEVEL", "LOUD"),
        ("USERS_LOG_FORMAT", "xml"),
        ("USERS_METRICS_ADDR", "9464"),
    ],
)
def test_an_invalid_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(UsersSettings)
    message = str(caught.value)
    assert message.startswith(f"{name} is invalid: ")
    assert "\n" not in message
    assert value not in message  # a value may be a secret: never echoed


# One base (servicekit.settings.ProcessSettings) checks every process's address, log
# level, access log and grace, under the process's own prefix and with its own example.
@pytest.mark.parametrize(
    ("settings", "prefix", "example", "without_host"),
    [
        (UsersSettings, "USERS_", "127.0.0.1:50051", True),
        (AiSettings, "AI_", "127.0.0.1:50051", True),
        (GatewaySettings, "GATEWAY_", "127.0.0.1:8000", False),
    ],
)
def test_every_process_shares_the_address_and_logging_rules(
    monkeypatch: pytest.MonkeyPatch,
    settings: type[UsersSettings | AiSettings | GatewaySettings],
    prefix: str,
    example: str,
    without_host: bool,
) -> None:
    monkeypatch.setenv(f"{prefix}LOG_LEVEL", "warning")
    monkeypatch.setenv(f"{prefix}ACCESS_LOG", "false")
    loaded = load_settings(settings)
    assert (loaded.log_level, loaded.access_log) == ("WARNING", False)
    monkeypatch.setenv(f"{prefix}ADDR", "[::1]:70000")
    with pytest.raises(SettingsError) as caught:
        load_settings(settings)
    assert str(caught.value) == (
        f"{prefix}ADDR is invalid: Value error, expected host:port, e.g. {example}"
    )
    monkeypatch.setenv(f"{prefix}ADDR", ":7000")
    if without_host:
        assert load_settings(settings).addr == ":7000"
    else:
        with pytest.raises(SettingsError):
            load_settings(settings)


def test_the_gateway_keeps_its_own_grace() -> None:
    assert load_settings(GatewaySettings).shutdown_grace_seconds == 65.0
    assert load_settings(UsersSettings).shutdown_grace_seconds == 10.0


def test_metrics_and_log_format_are_off_and_text_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(UsersSettings).metrics_addr is None
    assert load_settings(GatewaySettings).log_format == "text"
    monkeypatch.setenv("AI_METRICS_ADDR", ":9464")
    monkeypatch.setenv("AI_LOG_FORMAT", "json")
    ai = load_settings(AiSettings)
    assert (ai.metrics_addr, ai.log_format) == (":9464", "json")


def test_the_gateways_metrics_are_never_on_its_rest_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ADDR", "0.0.0.0:8000")
    monkeypatch.setenv("GATEWAY_METRICS_ADDR", "127.0.0.1:8000")
    with pytest.raises(SettingsError, match="never served on the public REST port"):
        load_settings(GatewaySettings)
    monkeypatch.setenv("GATEWAY_METRICS_ADDR", "0.0.0.0:9464")
    assert load_settings(GatewaySettings).metrics_addr == "0.0.0.0:9464"
