"""The gateway on a real port (uvicorn in the test's loop), and helpers to drive it over HTTP.

async with gateway_stack(users_db) as stack:      # users server + ai stand-in + gateway
    account = await stack.new_account()
    response = await stack.client.get("/v1/users/me", headers=account.headers)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.app import create_app
from gateway.server import GatewayServer, uvicorn_config
from gateway.settings import GatewaySettings
from tests.support.ai_standin import AnalysisStandIn, RunningStandIn, running_ai_standin
from tests.support.servers import running_users, users_settings
from tests.support.tokens import GATEWAY_SECRET

PASSWORD = "correct horse battery"
# The fields of an analysis as the REST API returns it.
ANALYSIS_FIELDS = {
    "id",
    "user_id",
    "summary",
    "sentiment",
    "key_points",
    "confidence",
    "model",
    "cached",
    "usage",
    "created_at",
}
_emails = itertools.count(1)


def gateway_settings(users_target: str, ai_target: str, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "addr": "127.0.0.1:0",
        "users_target": users_target,
        "ai_target": ai_target,
        "access_log": False,
        "shutdown_grace_seconds": 1,
        # The service account every users database of the tests holds.
        "client_secret": GATEWAY_SECRET,
        **overrides,
    }
    return GatewaySettings(**values)


@asynccontextmanager
async def running_gateway(settings: GatewaySettings) -> AsyncIterator[str]:
    """The gateway served by uvicorn in this loop, on a real port; yields its base URL."""
    async with running_gateway_server(settings) as server:
        yield f"http://{server.address}"


@asynccontextmanager
async def running_gateway_server(settings: GatewaySettings) -> AsyncIterator[GatewayServer]:
    """As running_gateway, yielding the server (its `address`, `health_address`)."""
    server = GatewayServer(uvicorn_config(create_app(settings), settings))
    serving = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        await serving  # raises what stopped the start-up
        raise AssertionError("the gateway stopped before serving")
    try:
        yield server
    finally:
        server.should_exit = True
        await serving


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never says a word: an upstream that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in held:
            writer.transport.abort()
        await server.wait_closed()


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Stack:
    """A users server, an ai stand-in and a gateway in front of them, with an HTTP client."""

    url: str
    client: httpx.AsyncClient
    ai: RunningStandIn
    users_address: str
    settings: GatewaySettings

    @property
    def ai_standin(self) -> AnalysisStandIn:
        return self.ai.standin

    async def sign_up(
        self, email: str | None = None, name: str = "Test User", password: str = PASSWORD
    ) -> dict[str, Any]:
        email = email or unique_email()
        body = {"email": email, "name": name, "password": password}
        response = await self.client.post("/v1/users", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        return await self.client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )

    async def token(self, email: str, password: str = PASSWORD) -> str:
        response = await self.login(email, password)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    async def new_account(self, name: str = "Test User") -> Account:
        user = await self.sign_up(name=name)
        return Account(user["id"], user["email"], await self.token(user["email"]))


def unique_email() -> str:
    return f"user{os.getpid()}-{next(_emails)}@example.com"


@asynccontextmanager
async def gateway_stack(
    users_database_url: str,
    ai_standin: AnalysisStandIn | None = None,
    *,
    users_access_log: bool = False,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """The whole chain on real ports; `users_database_url` must be migrated.

    `users_access_log` logs each call the users server answers (`servicekit.access`),
    for tests that count them; `overrides` are gateway settings.
    """
    users = users_settings(users_database_url, access_log=users_access_log)
    async with (
        running_users(users) as users_address,
        running_ai_standin(ai_standin) as ai,
    ):
        settings = gateway_settings(users_address, ai.address, **overrides)
        async with (
            running_gateway(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=15) as client,
        ):
            yield Stack(url, client, ai, users_address, settings)


def assert_problem(
    response: httpx.Response, status: int, code: str, *, request_id: str | None = None
) -> dict[str, Any]:
    """Check that `response` is the problem+json of `status` and `code`; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].startswith("https://tandem.dev/problems/")
    # One style: sentence case ("Not found", "Content too large").
    first, *rest = body["title"].split(" ")
    assert first[0].isupper() and all(w.islower() or w == "URI" for w in rest), body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    if request_id is not None:
        assert body["request_id"] == request_id
    assert set(body) <= {
        "type",
        "title",
        "status",
        "detail",
        "code",
        "request_id",
        "reason",
        "errors",
        "error",
        "error_description",
    }
    return body


def field_errors(body: dict[str, Any]) -> dict[str, str]:
    return {e["field"]: e["message"] for e in body.get("errors", [])}


@dataclass(frozen=True)
class Event:
    name: str
    data: Any


async def read_events(response: httpx.Response) -> list[Event]:
    """The server-sent events of a streamed response, until it ends."""
    events = []
    async for block in _event_blocks(response):
        events.append(_parse_event(block))
    return events


async def _event_blocks(response: httpx.Response) -> AsyncIterator[str]:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if block.strip():
                yield block


def _parse_event(block: str) -> Event:
    name, data = "message", []
    for line in block.splitlines():
        key, _, value = line.partition(": ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    return Event(name, json.loads("\n".join(data)) if data else None)


async def first_event(response: httpx.Response) -> Event:
    async for block in _event_blocks(response):
        return _parse_event(block)
    raise AssertionError("the stream ended without an event")
