"""The HTTP edge on a real uvicorn and port: head caps (431, 414), read timeouts (408),
the connection cap, protocol errors, security headers, CORS, capped error lists, and
log lines a client cannot break. Raw sockets where no proper client would go."""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from gateway.acceptor_child import FREE_REFUSALS, REFUSAL_DELAY_SECONDS
from gateway.app import create_app
from gateway.problems import MAX_LISTED_ERRORS
from gateway.server import GatewayServer, uvicorn_config
from servicekit.logs import log_handler
from servicekit.metrics import REGISTRY
from tests.support.gateway import (
    PASSWORD,
    assert_problem,
    closed_port,
    gateway_settings,
    running_gateway,
    running_gateway_server,
)
from tests.support.rawhttp import (
    RawResponse,
    address_of,
    answered_while_blocked,
    exchange,
    raw_connection,
    request_head,
)

# Short, so the timeout tests are quick; the deadlines are checked every 0.1 s.
TIMEOUT = 0.3
HEAD_LIMIT = 4096


@pytest.fixture
async def url() -> AsyncIterator[str]:
    # No upstream is needed for what these tests ask.
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(
        target,
        target,
        max_header_bytes=HEAD_LIMIT,
        max_headers=20,
        header_timeout_seconds=TIMEOUT,
        body_timeout_seconds=TIMEOUT,
    )
    async with running_gateway(settings) as base:
        yield base


def assert_raw_problem(response: RawResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["connection"] == "close"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["detail"]
    return body


# Head caps


async def test_a_16_mb_header_is_refused_431_before_it_is_all_sent(url: str) -> None:
    async with raw_connection(url) as conn:
        conn.writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Big: ")
        chunk = b"a" * 65536
        sent = 0

        async def send_16_mb() -> None:
            nonlocal sent
            try:
                for _ in range(256):
                    conn.writer.write(chunk)
                    await conn.writer.drain()
                    sent += len(chunk)
            except ConnectionError:
                pass  # the gateway closed the connection

        sender = asyncio.create_task(send_16_mb())
        try:
            response = await conn.response()
        finally:
            sender.cancel()
        body = assert_raw_problem(response, 431)
        assert body["detail"] == f"the request's headers exceed {HEAD_LIMIT} bytes"
        # Refused long before the end: what was sent meanwhile sat in socket buffers.
        assert sent < 8 * 1024 * 1024, sent


async def test_headers_over_the_byte_cap_in_one_read_are_431(url: str) -> None:
    headers = [(f"X-Pad-{i}", "p" * 400) for i in range(12)]  # ~5 KB
    async with raw_connection(url) as conn:
        conn.writer.write(request_head("GET", "/healthz", *headers))
        assert_raw_problem(await conn.response(), 431)


async def test_too_many_headers_are_431(url: str) -> None:
    headers = [(f"X-H-{i}", "1") for i in range(21)]
    async with raw_connection(url) as conn:
        conn.writer.write(request_head("GET", "/healthz", *headers))
        body = assert_raw_problem(await conn.response(), 431)
        assert body["detail"] == "the request has more than 20 headers"


async def test_a_url_over_the_cap_is_414(url: str) -> None:
    async with raw_connection(url) as conn:
        conn.writer.write(request_head("GET", "/healthz?q=" + "x" * HEAD_LIMIT))
        assert_raw_problem(await conn.response(), 414)


async def test_a_head_under_the_caps_is_served(url: str) -> None:
    headers = [(f"X-Pad-{i}", "p" * 150) for i in range(18)]  # ~3 KB, 19 headers
    async with raw_connection(url) as conn:
        conn.writer.write(request_head("GET", "/healthz", *headers))
        response = await conn.response()
        assert response.status == 200
        assert response.json() == {"status": "ok"}


async def test_a_malformed_request_is_a_400_problem(url: str) -> None:
    async with raw_connection(url) as conn:
        conn.writer.write(b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n")
        assert_raw_problem(await conn.response(), 400)


# Read timeouts (slowloris)


async def test_a_head_that_trickles_in_is_408_at_the_header_timeout(url: str) -> None:
    async with raw_connection(url) as conn:
        started = time.monotonic()
        conn.writer.write(b"GET /healthz HTTP/1.1\r\nHost: gate")
        response = await conn.response(timeout=5)
        elapsed = time.monotonic() - started
        assert_raw_problem(response, 408)
        assert TIMEOUT <= elapsed < TIMEOUT + 1.5
        assert await conn.closed() == b""


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(url: str) -> None:
    async with raw_connection(url) as conn:
        started = time.monotonic()
        assert await conn.closed(timeout=5) == b""
        assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 1.5


async def test_a_body_that_trickles_in_is_408_at_the_body_timeout(url: str) -> None:
    async with raw_connection(url) as conn:
        head = request_head(
            "POST", "/v1/users", ("Content-Type", "application/json"), ("Content-Length", "200")
        )
        conn.writer.write(head + b'{"email": ')
        started = time.monotonic()
        response = await conn.response(timeout=5)
        body = assert_raw_problem(response, 408)
        assert body["detail"] == "the request body did not arrive in time"
        assert time.monotonic() - started < TIMEOUT + 1.5
        assert await conn.closed() == b""


async def test_a_keep_alive_connection_keeps_serving_within_the_timeouts(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(3):
            assert (await client.get("/healthz")).status_code == 200


# The connection cap


async def test_connections_past_the_cap_are_refused_503_but_health_checks_pass() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target, max_connections=2)
    async with running_gateway(settings) as url:
        async with raw_connection(url), raw_connection(url), raw_connection(url) as third:
            third.writer.write(request_head("GET", "/healthz"))
            assert (await third.response()).status == 200
            third.writer.write(request_head("GET", "/v1/users/me"))
            response = await third.response()
            body = assert_raw_problem(response, 503)
            assert body["code"] == "UNAVAILABLE"
            assert body["reason"] == "TOO_MANY_CONNECTIONS"
            assert response.headers["retry-after"] == "1"
            assert await third.closed() == b""
        # Once the others have gone, a new connection is served.
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/v1/nothing")).status_code == 404


# Security headers and CORS


async def test_every_response_says_nosniff_and_hsts_only_over_https(url: str) -> None:
    https = {"X-Forwarded-Proto": "https"}
    async with httpx.AsyncClient(base_url=url) as client:
        for response in (await client.get("/healthz"), await client.get("/v1/nothing")):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "strict-transport-security" not in response.headers
        # Said by a client that is no trusted proxy: not believed.
        claimed = await client.get("/healthz", headers=https)
        assert "strict-transport-security" not in claimed.headers


async def test_hsts_when_a_trusted_proxy_says_the_request_came_over_https() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target, trusted_proxies="127.0.0.1/32")
    async with running_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        behind_tls = await client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
        assert behind_tls.headers["strict-transport-security"] == "max-age=31536000"
        plain = await client.get("/healthz", headers={"X-Forwarded-Proto": "http"})
        assert "strict-transport-security" not in plain.headers


async def test_the_docs_pages_carry_a_csp_that_admits_only_their_own_scripts(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
            response = await client.get(path)
            assert response.status_code == 200
            policy = response.headers["content-security-policy"]
            assert "default-src 'none'" in policy
            assert "frame-ancestors 'none'" in policy
            scripts = next(p for p in policy.split("; ") if p.startswith("script-src"))
            assert "'unsafe-inline'" not in scripts
            inline = response.text.count("<script>")
            assert scripts.count("'sha256-") == inline
        api = await client.get("/healthz")
        assert "content-security-policy" not in api.headers


async def test_without_allowed_origins_there_are_no_cors_headers(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/healthz", headers={"Origin": "https://app.example.com"})
        assert not [k for k in response.headers if k.startswith("access-control-")]


async def test_allowed_origins_get_cors_and_others_do_not() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target, cors_origins="https://app.example.com")
    async with running_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        preflight = await client.options(
            "/v1/users/me",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "access-control-allow-credentials" not in preflight.headers
        assert preflight.headers["x-request-id"]
        simple = await client.get("/healthz", headers={"Origin": "https://app.example.com"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "X-Request-ID" in simple.headers["access-control-expose-headers"]
        other = await client.get("/healthz", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers


# Error lists


async def test_a_body_with_80000_unknown_keys_lists_20_errors_and_counts_the_rest(
    url: str,
) -> None:
    body = {"email": "a@example.com", "name": "A", "password": PASSWORD}
    body.update({f"k{i}": "" for i in range(80_000)})
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post("/v1/users", json=body)
    problem = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert len(problem["errors"]) == MAX_LISTED_ERRORS
    assert problem["detail"].endswith("; and 79980 more errors")
    assert len(response.content) < 8 * 1024


# Log lines


@contextmanager
def captured(logger_name: str) -> Iterator[io.StringIO]:
    """What `logger_name` logs, formatted as servicekit.logs formats every line."""
    stream = io.StringIO()
    handler = log_handler(stream)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_a_client_cannot_forge_an_access_log_line() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target, access_log=True)
    forged = "2026-01-01 00:00:00,000 INFO gateway.access [x] GET /v1/admin 200"
    with captured("gateway.access") as log:
        async with running_gateway(settings) as url, raw_connection(url) as conn:
            target_path = "/healthz%0d%0a" + forged.replace(" ", "%20") + "%1b[2J"
            conn.writer.write(request_head("GET", target_path))
            assert (await conn.response()).status == 404
    lines = log.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "/healthz\\r\\n2026-01-01" in lines[0]
    assert "\\x1b[2J 404" in lines[0]


async def test_past_the_cap_a_request_is_refused_without_the_event_loop() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target, max_connections=2)
    async with (
        running_gateway(settings) as url,
        raw_connection(url) as first,
        raw_connection(url) as second,
    ):
        for conn in (first, second):  # both served by the loop: the cap is reached
            conn.writer.write(request_head("GET", "/healthz"))
            assert (await conn.response()).status == 200
        # The loop is blocked until the client has its answer: gateway.acceptor's
        # process answers it.
        received = answered_while_blocked(
            lambda: exchange(url, request_head("GET", "/v1/users/me"))
        )
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
        assert headers[b"retry-after"] == b"1"
        assert headers[b"connection"] == b"close"
        assert headers[b"content-type"] == b"application/problem+json"
        problem = json.loads(body)
        assert problem["reason"] == "TOO_MANY_CONNECTIONS"
        # The accepting process writes the Date and a request id of its own.
        date = email.utils.parsedate_to_datetime(headers[b"date"].decode())
        assert abs(date.timestamp() - time.time()) < 5
        assert problem["request_id"] == headers[b"x-request-id"].decode()
        assert uuid.UUID(problem["request_id"]).version == 4


async def test_the_accepting_process_refusals_are_counted_in_the_metrics() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target, max_connections=1, metrics_addr="127.0.0.1:0")
    labels = {"reason": "TOO_MANY_CONNECTIONS"}

    def counted() -> float:
        return REGISTRY.get_sample_value("tandem_refused_total", labels) or 0.0

    async with running_gateway(settings) as url, raw_connection(url) as held:
        held.writer.write(request_head("GET", "/healthz"))
        assert (await held.response()).status == 200
        before = counted()
        for _ in range(3):
            answer = await asyncio.to_thread(exchange, url, request_head("GET", "/v1/users/me"))
            assert answer.startswith(b"HTTP/1.1 503 ")
        # The gateway adds the child's count on its next tick (every 0.1 s).
        async with asyncio.timeout(5):
            while counted() < before + 3:  # noqa: ASYNC110 - it comes on a tick: no event
                await asyncio.sleep(0.05)
        assert counted() == before + 3


async def test_refusals_to_a_reconnecting_flood_are_slowed_for_its_address_only() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target, max_connections=1)
    async with running_gateway(settings) as url, raw_connection(url) as held:
        held.writer.write(request_head("GET", "/healthz"))
        assert (await held.response()).status == 200
        host, port = address_of(url)

        async def refused(local: str) -> float:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(host, port, local_addr=(local, 0))
            writer.write(request_head("GET", "/v1/users/me"))
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 503 ")
            return time.monotonic() - started

        # The flood's address: its first FREE_REFUSALS refusals come at once...
        flood = [await refused("127.0.0.1") for _ in range(FREE_REFUSALS)]
        assert max(flood) < REFUSAL_DELAY_SECONDS / 2
        # ...the next are held back,
        late = asyncio.create_task(refused("127.0.0.1"))
        # while another address is refused at once.
        assert await refused("127.0.0.2") < REFUSAL_DELAY_SECONDS / 2
        assert await late >= REFUSAL_DELAY_SECONDS * 0.9


async def test_connections_come_from_the_accepting_process_and_shutdown_closes_the_port() -> None:
    target = f"127.0.0.1:{closed_port()}"
    async with running_gateway_server(gateway_settings(target, target)) as server:
        url = f"http://{server.address}"
        port = address_of(url)[1]
        child = server.acceptor_pid
        assert child is not None
        # The listening socket is the child's alone.
        assert listening_sockets(port) <= socket_inodes(child)
        assert not listening_sockets(port) & socket_inodes(os.getpid())
        async with httpx.AsyncClient(base_url=url) as client:
            answers = await asyncio.gather(*(client.get("/v1/nothing") for _ in range(50)))
        assert [a.status_code for a in answers] == [404] * 50
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address_of(url), timeout=5).close()
    with pytest.raises(ProcessLookupError):  # exited, and reaped
        os.pidfd_open(child)


async def test_the_gateway_stops_if_its_accepting_process_goes_away() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target)
    server = GatewayServer(uvicorn_config(create_app(settings), settings))
    serving = asyncio.create_task(server.serve())
    await asyncio.wait_for(server.ready.wait(), 10)
    assert server.acceptor_pid is not None
    os.kill(server.acceptor_pid, signal.SIGKILL)
    await asyncio.wait_for(serving, 10)
    assert server.acceptor_failed


def listening_sockets(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on `port` (IPv4)."""
    found = set()
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                found.add(fields[9])
    return found


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds."""
    found = set()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(fd.path)
        except FileNotFoundError:  # closed meanwhile (the listing's own, say)
            continue
        if link.startswith("socket:["):
            found.add(link[8:-1])
    return found
