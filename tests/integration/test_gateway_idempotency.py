"""`Idempotency-Key` on `POST /v1/users` and `POST /v1/analyses`, through the gateway and
the real services (SQLite and PostgreSQL): a retry answers the first result, another
body is 422, a key still in flight 409; and a users replica that commits a sign-up and
dies before answering costs the client nothing: the gateway's retry answers 201."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import Table

import users_service.server
from servicekit.idempotency import KEY_IN_FLIGHT, KEY_REUSED
from tests.integration.test_gateway_real_ai import account, real_chain
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.gateway import (
    PASSWORD,
    assert_problem,
    field_errors,
    gateway_settings,
    running_gateway,
    unique_email,
)
from tests.support.servers import migrate_users, running_users, users_settings
from tests.support.tables import count_of, rows_of
from tests.support.tcp_proxy import TcpProxy
from users_service.models import UserRow
from users_service.servicer import UsersServicer

USERS = cast(Table, UserRow.__table__)
TEXT = "What a wonderful phone. The battery lasts forever and the screen is gorgeous."
GOOD = {
    "summary": "A phone with a long battery life.",
    "sentiment": "positive",
    "key_points": ["battery"],
    "confidence": 0.9,
}


def sign_up_body(email: str, name: str = "Ada") -> dict[str, str]:
    return {"email": email, "name": name, "password": PASSWORD}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def test_a_retried_sign_up_answers_the_first_account(database_url: str) -> None:
    key = str(uuid.uuid4())
    body = sign_up_body(unique_email())
    async with real_chain(database_url) as client:
        first = await client.post("/v1/users", json=body, headers=keyed(key))
        assert first.status_code == 201, first.text
        again = await client.post("/v1/users", json=body, headers=keyed(key))
        # The key as the IETF draft writes it (a structured-field string) is the same key.
        quoted = await client.post("/v1/users", json=body, headers=keyed(f'"{key}"'))
        for retry in (again, quoted):
            assert retry.status_code == 201, retry.text
            assert retry.json() == first.json()
            assert retry.headers["location"] == first.headers["location"]
            assert retry.headers["etag"] == first.headers["etag"]
        # Another key is another sign-up: the email is taken.
        other = await client.post("/v1/users", json=body, headers=keyed(str(uuid.uuid4())))
        assert_problem(other, 409, "ALREADY_EXISTS")
    assert await count_of(database_url, USERS) == 1


async def test_a_key_reused_with_another_body_is_422(database_url: str) -> None:
    key = "my-client-order-1"
    async with real_chain(database_url) as client:
        body = sign_up_body(unique_email())
        assert (await client.post("/v1/users", json=body, headers=keyed(key))).status_code == 201
        for other in ({**body, "name": "Grace"}, {**body, "password": "another horse"}):
            response = await client.post("/v1/users", json=other, headers=keyed(key))
            problem = assert_problem(response, 422, "FAILED_PRECONDITION")
            assert problem["reason"] == KEY_REUSED
            assert problem["type"] == "https://tandem.dev/problems/unprocessable-content"

        me = await account(client)
        analysis = {"text": TEXT}
        made = await client.post("/v1/analyses", json=analysis, headers=me.headers | keyed(key))
        assert made.status_code == 201, made.text
        response = await client.post(
            "/v1/analyses", json={"text": TEXT + "!"}, headers=me.headers | keyed(key)
        )
        assert_problem(response, 422, "FAILED_PRECONDITION")


async def test_a_retried_analysis_answers_the_stored_one_and_keys_are_each_users(
    database_url: str,
) -> None:
    key = str(uuid.uuid4())
    async with real_chain(database_url) as client:
        me, other = await account(client), await account(client)
        body = {"text": TEXT}
        first = await client.post("/v1/analyses", json=body, headers=me.headers | keyed(key))
        assert first.status_code == 201, first.text
        again = await client.post("/v1/analyses", json=body, headers=me.headers | keyed(key))
        assert again.status_code == 201, again.text
        assert again.json() == first.json()
        assert again.headers["location"] == first.headers["location"]
        # The same key from another user is that user's own.
        theirs = await client.post(
            "/v1/analyses", json={"text": "Another text."}, headers=other.headers | keyed(key)
        )
        assert theirs.status_code == 201, theirs.text
        assert theirs.json()["user_id"] == other.id
        listed = await client.get("/v1/analyses", headers=me.headers)
        assert [a["id"] for a in listed.json()["analyses"]] == [first.json()["id"]]


@pytest.mark.parametrize(
    "key",
    [b"", b"x" * 256, "café".encode(), b'"unterminated \\"'],
    ids=["empty", "long", "not-ascii", "sf-string"],
)
async def test_a_malformed_key_is_400(sqlite_url: str, key: bytes) -> None:
    async with real_chain(sqlite_url) as client:
        response = await client.post(
            "/v1/users", json=sign_up_body(unique_email()), headers={b"Idempotency-Key": key}
        )
        assert_problem(response, 400, "INVALID_ARGUMENT")
        assert set(field_errors(response.json())) == {"idempotency-key"}
    assert await count_of(sqlite_url, USERS) == 0


async def test_a_key_still_in_flight_is_409(sqlite_url: str, fake: FakeAnthropic) -> None:
    fake.set_default(Reply.slow(1.0, then=Reply.json_output(GOOD)))
    key = str(uuid.uuid4())
    async with real_chain(sqlite_url, model="claude-test-model") as client:
        me = await account(client)
        headers = me.headers | keyed(key)
        first = asyncio.ensure_future(
            client.post("/v1/analyses", json={"text": TEXT}, headers=headers)
        )
        await fake.wait_for_requests_async(1)
        during = await client.post("/v1/analyses", json={"text": TEXT}, headers=headers)
        problem = assert_problem(during, 409, "ABORTED")
        assert problem["reason"] == KEY_IN_FLIGHT
        made = await first
        assert made.status_code == 201, made.text
        after = await client.post("/v1/analyses", json={"text": TEXT}, headers=headers)
        assert after.json() == made.json()
    assert len(fake.requests) == 1


class LostAnswer:
    """Makes the users replica that serves the next sign-up commit it and then die
    before answering: its proxy cuts every connection and refuses new ones."""

    def __init__(self) -> None:
        self.armed = False
        self.sign_ups = 0
        self.servicers: list[UsersServicer] = []
        self.proxies: dict[int, TcpProxy] = {}

    def servicer_class(self) -> type[UsersServicer]:
        lost = self

        class Dying(UsersServicer):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                lost.servicers.append(self)

            async def CreateUser(self, request: Any, context: Any) -> Any:  # noqa: N802
                user = await super().CreateUser(request, context)  # committed
                lost.sign_ups += 1
                if lost.armed:
                    lost.armed = False
                    await lost.proxies[id(self)].down()
                    await asyncio.Event().wait()  # dead: never answers
                return user

        return Dying


@pytest.mark.parametrize("client_key", [True, False], ids=["client-key", "no-key"])
async def test_a_sign_up_committed_by_a_replica_that_died_is_answered_201(
    database_url: str, monkeypatch: pytest.MonkeyPatch, client_key: bool
) -> None:
    await migrate_users(database_url)
    lost = LostAnswer()
    monkeypatch.setattr(users_service.server, "UsersServicer", lost.servicer_class())
    settings = users_settings(database_url)
    async with running_users(settings) as first, running_users(settings) as second:
        targets = []
        for servicer, address in zip(lost.servicers, (first, second), strict=True):
            host, port = address.rsplit(":", 1)
            proxy = TcpProxy(host, int(port))
            targets.append(f"127.0.0.1:{await proxy.up()}")
            lost.proxies[id(servicer)] = proxy
        gateway = gateway_settings("ipv4:" + ",".join(targets), "127.0.0.1:1")
        async with (
            running_gateway(gateway) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):
            warm = await client.post("/v1/users", json=sign_up_body(unique_email()))
            assert warm.status_code == 201, warm.text  # the gateway has its token
            email = unique_email()
            headers = keyed(str(uuid.uuid4())) if client_key else {}
            lost.armed = True
            response = await client.post("/v1/users", json=sign_up_body(email), headers=headers)
            assert not lost.armed, "the sign-up reached a dying replica"
            assert response.status_code == 201, response.text
            created = response.json()
            if client_key:
                # The client's own retry, later, gets the same answer.
                again = await client.post("/v1/users", json=sign_up_body(email), headers=headers)
                assert again.status_code == 201, again.text
                assert again.json() == created
        for proxy in lost.proxies.values():
            await proxy.down()
    # The dying replica's sign-up, then the gateway's retry on the other replica.
    assert lost.sign_ups == 3 + client_key
    stored = [row for row in await rows_of(database_url, USERS) if row["email"] == email]
    assert [str(row["id"]) for row in stored] == [created["id"]]
