"""`python -m gateway`: serve the REST gateway on GATEWAY_ADDR (uvicorn, uvloop, httptools)."""

from __future__ import annotations

import sys

from gateway.app import create_app
from gateway.server import GatewayServer, uvicorn_config
from gateway.settings import GatewaySettings
from servicekit import production, telemetry
from servicekit.errors import StartupError
from servicekit.heap import settle_heap
from servicekit.logs import configure_logging
from servicekit.settings import SettingsError, load_settings
from servicekit.tls import check_client_files


def main() -> int:
    try:
        settings = load_settings(GatewaySettings)
    except SettingsError as exc:
        sys.stderr.write(f"gateway: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        production.check(settings.production_problems())
        check_client_files(settings.client_tls())
    except StartupError as exc:
        sys.stderr.write(f"gateway: {exc}\n")
        return 1
    stop_tracing = telemetry.configure_tracing("tandem-gateway")
    try:
        server = GatewayServer(uvicorn_config(create_app(settings), settings))
        settle_heap()
        server.run()
    finally:
        if stop_tracing is not None:
            stop_tracing()  # exports the spans still buffered
    # Stopped because its accepting process went away: a supervisor should restart it.
    return 0 if server.started and not server.acceptor_failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
