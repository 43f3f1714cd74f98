"""gateway.health_port on a real port: `/healthz` answered from its own thread while the
event loop is busy, 503 once the loop has stalled past GATEWAY_HEALTH_STALE_SECONDS.

The gateway runs in this test's loop, so blocking this loop (a synchronous wait) is a
busy or wedged gateway loop; the probes run on other threads with plain sockets, as a
kubelet's would come from outside.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.server import GatewayServer
from tests.support.gateway import closed_port, gateway_settings, running_gateway_server
from tests.support.rawhttp import address_of, answered_while_blocked, exchange

STALE = 0.5


@pytest.fixture
async def server() -> AsyncIterator[GatewayServer]:
    target = f"127.0.0.1:{closed_port()}"  # no upstream is needed
    settings = gateway_settings(
        target, target, health_addr="127.0.0.1:0", health_stale_seconds=STALE
    )
    async with running_gateway_server(settings) as running:
        yield running


def probe(address: str, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection, with blocking sockets (any thread)."""
    received = exchange(address, f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_health_is_answered_while_the_loop_is_busy(server: GatewayServer) -> None:
    # The loop is blocked until the probe is answered: were the answer the loop's job,
    # the probe would time out.
    status, body = answered_while_blocked(lambda: probe(server.health_address))
    assert status == 200
    assert body["status"] == "ok"
    assert body["loop_lag_ms"] >= 0


async def test_a_stalled_loop_is_unhealthy_until_it_runs_again(server: GatewayServer) -> None:
    seen: list[tuple[int, dict[str, Any]]] = []
    unhealthy = threading.Event()

    def probe_until_unhealthy() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen.append(probe(server.health_address))
            if seen[-1][0] == 503:
                break
        unhealthy.set()

    threading.Thread(target=probe_until_unhealthy).start()
    assert unhealthy.wait(10)  # the loop stalls here
    status, body = seen[-1]
    assert status == 503
    assert body["status"] == "event loop stalled"
    assert body["loop_lag_ms"] >= STALE * 1000
    assert seen[0][0] == 200  # it was healthy when the stall began
    # Running again: healthy at the next beat.
    deadline = time.monotonic() + 5
    while (answer := await asyncio.to_thread(probe, server.health_address))[0] != 200:
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.05)


async def test_only_healthz_is_served_there_and_the_main_port_still_has_it(
    server: GatewayServer,
) -> None:
    assert (await asyncio.to_thread(probe, server.health_address, "/readyz"))[0] == 404
    assert (await asyncio.to_thread(probe, server.health_address, "/healthz?x=1"))[0] == 200
    async with httpx.AsyncClient(base_url=f"http://{server.address}") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_the_health_port_closes_with_the_gateway() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target, health_addr="127.0.0.1:0")
    async with running_gateway_server(settings) as running:
        address = running.health_address
        assert (await asyncio.to_thread(probe, address))[0] == 200
    with pytest.raises(ConnectionRefusedError):
        probe(address)


async def test_without_a_health_address_there_is_no_health_port() -> None:
    target = f"127.0.0.1:{closed_port()}"
    async with running_gateway_server(gateway_settings(target, target)) as running:
        assert running.health_address == ""


async def test_connections_that_say_nothing_do_not_hold_up_a_probe(
    server: GatewayServer,
) -> None:
    host, port = address_of(server.health_address)
    silent = [socket.create_connection((host, port), timeout=5) for _ in range(8)]
    try:
        started = time.monotonic()
        assert (await asyncio.to_thread(probe, server.health_address))[0] == 200
        assert time.monotonic() - started < 1  # not after the silent ones' 2 s
    finally:
        for connection in silent:
            connection.close()
