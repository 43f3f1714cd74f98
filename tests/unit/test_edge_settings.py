"""The gateway's edge settings: defaults, the CORS list as an operator writes it, and
how they reach uvicorn (gateway.server.uvicorn_config)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.app import create_app
from gateway.edge import EdgeConfig, EdgeLimits, EdgeProtocol
from gateway.server import uvicorn_config
from gateway.settings import GatewaySettings

SECRET = "s" * 32


def test_the_defaults_fit_the_route_deadlines() -> None:
    settings = GatewaySettings(client_secret=SECRET)
    assert settings.cors_origins == ()
    # An analysis in flight at SIGTERM may run to its deadline within the grace.
    assert settings.shutdown_grace_seconds > settings.analysis_deadline_seconds
    assert settings.max_in_flight < settings.max_connections


def test_cors_origins_are_a_comma_separated_list_of_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://app.example.com, http://localhost:3000/")
    settings = GatewaySettings(client_secret=SECRET)
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:3000")


@pytest.mark.parametrize("origin", ["*", "app.example.com", "https://app.example.com/path"])
def test_a_cors_entry_that_is_not_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValidationError, match="is not an origin"):
        GatewaySettings(client_secret=SECRET, cors_origins=origin)


def test_uvicorn_serves_with_the_edge_protocol_and_its_limits() -> None:
    settings = GatewaySettings(
        client_secret=SECRET,
        max_header_bytes=8192,
        max_headers=50,
        header_timeout_seconds=3,
        body_timeout_seconds=7,
        max_connections=100,
        shutdown_grace_seconds=12,
    )
    config = uvicorn_config(create_app(settings), settings)
    assert isinstance(config, EdgeConfig)
    assert config.http is EdgeProtocol
    assert config.edge_limits == EdgeLimits(8192, 50, 3, 7, 100)
    assert config.shutdown_grace == 12
    # The edge ends requests at the grace; uvicorn's own timeout would answer 500.
    assert config.timeout_graceful_shutdown is None
