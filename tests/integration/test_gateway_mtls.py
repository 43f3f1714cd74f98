"""The gateway over mutual TLS: real users and ai servers that require client
certificates, the ai service's own client to users with one, and the gateway's
upstream connections (tandem_client.Connection) with its certificate, which rotates.

Every certificate comes from one trustme CA (tests.support.tls), which also issues the
client certificates the servers accept; the servers' certificates name SERVER_NAME.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import upstreams
from tests.support.gateway import (
    ANALYSIS_FIELDS,
    PASSWORD,
    Account,
    assert_problem,
    gateway_settings,
    read_events,
    running_gateway,
    unique_email,
)
from tests.support.servers import (
    ai_settings,
    migrate_ai,
    migrate_users,
    running_ai,
    running_users,
    users_settings,
)
from tests.support.tls import (
    Authority,
    install,
    served_copy,
    server_settings,
    upstream_settings,
)

NEW_CHANNEL = "TLS files for {} changed: new channel opened"


@dataclass(frozen=True)
class Servers:
    """The users and ai servers, both requiring client certificates of `ca`."""

    ca: Authority
    users: str
    ai: str


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "ca")


@pytest.fixture
async def servers(sqlite_url: str, ca: Authority) -> AsyncIterator[Servers]:
    await migrate_users(sqlite_url)
    await migrate_ai(sqlite_url)
    users = users_settings(sqlite_url, **server_settings(ca.issue(), ca.ca_file))
    async with running_users(users) as users_address:
        ai = ai_settings(
            sqlite_url,
            users_target=users_address,
            **server_settings(ca.issue(), ca.ca_file),
            **upstream_settings(ca.ca_file, ca.issue("ai.clients.tandem.test")),
        )
        async with running_ai(ai) as ai_address:
            yield Servers(ca, users_address, ai_address)


@asynccontextmanager
async def gateway(servers: Servers, **tls: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway in front of `servers` with the `upstream_tls_*` settings `tls`."""
    settings = gateway_settings(servers.users, servers.ai, **tls)
    async with (
        running_gateway(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


@pytest.fixture
def rotating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateways started from here on look for rotated TLS files at every call."""
    monkeypatch.setattr(upstreams, "TLS_CHECK_SECONDS", 0.0)


async def sign_up(client: httpx.AsyncClient) -> Account:
    email = unique_email()
    body = {"email": email, "name": "Ada", "password": PASSWORD}
    created = await client.post("/v1/users", json=body)
    assert created.status_code == 201, created.text
    login = {"grant_type": "password", "username": email, "password": PASSWORD}
    issued = await client.post("/v1/auth/token", data=login)
    assert issued.status_code == 200, issued.text
    return Account(created.json()["id"], email, issued.json()["access_token"])


async def assert_serves(client: httpx.AsyncClient, account: Account | None = None) -> Account:
    """Every kind of call works: sign-up and login (the gateway's service token), an
    account read and a session check (coalesced), an analysis and a stream (through
    the ai service, which asks the users service in turn)."""
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["upstreams"] == {"users": "SERVING", "ai": "SERVING"}
    account = account or await sign_up(client)
    me = await client.get("/v1/users/me", headers=account.headers)
    assert me.status_code == 200, me.text
    assert me.json()["id"] == account.id
    made = await client.post(
        "/v1/analyses", json={"text": "A lovely day."}, headers=account.headers
    )
    assert made.status_code == 201, made.text
    assert set(made.json()) == ANALYSIS_FIELDS
    assert made.json()["user_id"] == account.id
    async with client.stream(
        "POST", "/v1/analyses:stream", json={"text": "Sunny."}, headers=account.headers
    ) as streamed:
        assert streamed.status_code == 200
        events = await read_events(streamed)
    assert [e.name for e in events][-2:] == ["analysis", "done"], events
    assert events[-2].data["user_id"] == account.id
    return account


async def test_the_whole_chain_works_over_mtls(servers: Servers) -> None:
    client_pair = servers.ca.issue("gateway.clients.tandem.test")
    async with gateway(servers, **upstream_settings(servers.ca.ca_file, client_pair)) as client:
        account = await assert_serves(client)
        fetched = await client.get(f"/v1/users/{account.id}", headers=account.headers)
        assert fetched.json()["email"] == account.email


async def test_a_gateway_without_a_client_certificate_is_refused_with_503s(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with gateway(servers, **upstream_settings(servers.ca.ca_file)) as client:
        ready = await client.get("/readyz")
        body = assert_problem(ready, 503, "UNAVAILABLE")
        assert body["detail"] == "not ready: users is UNAVAILABLE, ai is UNAVAILABLE"
        body = {"email": unique_email(), "name": "Ada", "password": PASSWORD}
        signed_up = await client.post("/v1/users", json=body)
        problem = assert_problem(signed_up, 503, "UNAVAILABLE")
        assert problem["detail"] == "the users service is unavailable; retry shortly"
        login = {"grant_type": "password", "username": body["email"], "password": PASSWORD}
        assert_problem(await client.post("/v1/auth/token", data=login), 503, "UNAVAILABLE")
    for response in (ready, signed_up):
        assert "Traceback" not in response.text
        assert "handshake" not in response.text.lower()
    # Refused at the handshake: an outage to report, not a fault of the gateway's.
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


async def test_rotated_client_certificate_files_keep_requests_working(
    servers: Servers, tmp_path: Path, rotating: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem_client.connection")
    files = served_copy(servers.ca.issue("gateway-1.clients.tandem.test"), tmp_path / "gateway")
    async with gateway(servers, **upstream_settings(servers.ca.ca_file, files)) as client:
        account = await assert_serves(client)
        assert not [r for r in caplog.records if "changed" in r.getMessage()]

        install(servers.ca.issue("gateway-2.clients.tandem.test"), files)
        await assert_serves(client, account)
        opened = [r.getMessage() for r in caplog.records]
        assert NEW_CHANNEL.format(servers.users) in opened
        assert NEW_CHANNEL.format(servers.ai) in opened

        # Again, with a new account: sign-up and login on the rotated channel too.
        install(servers.ca.issue("gateway-3.clients.tandem.test"), files)
        await assert_serves(client)
        opened = [r.getMessage() for r in caplog.records]
        assert opened.count(NEW_CHANNEL.format(servers.users)) == 2
        assert opened.count(NEW_CHANNEL.format(servers.ai)) == 2


async def test_a_client_certificate_installed_later_is_used_without_a_restart(
    servers: Servers, tmp_path: Path, rotating: None
) -> None:
    # The files first hold a certificate the servers do not accept (another CA's).
    stranger = Authority(tmp_path, "stranger").issue("gateway.clients.tandem.test")
    files = served_copy(stranger, tmp_path / "gateway")
    async with gateway(servers, **upstream_settings(servers.ca.ca_file, files)) as client:
        assert_problem(await client.get("/readyz"), 503, "UNAVAILABLE")
        body = {"email": unique_email(), "name": "Ada", "password": PASSWORD}
        assert_problem(await client.post("/v1/users", json=body), 503, "UNAVAILABLE")

        install(servers.ca.issue("gateway.clients.tandem.test"), files)
        await assert_serves(client)
