"""The analyses routes end to end on the real chain: gateway -> real ai service
(offline analyzer, and Claude through the fake Messages API) and real users service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.support.fake_anthropic import (
    COUNT_TOKENS_PATH,
    MESSAGES_PATH,
    FakeAnthropic,
    Reply,
    Usage,
)
from tests.support.gateway import (
    ANALYSIS_FIELDS,
    PASSWORD,
    Account,
    assert_problem,
    field_errors,
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
from users_service.cli import set_role
from users_service.policy import Role

GOOD = {
    "summary": "Powerful but loud.",
    "sentiment": "mixed",
    "key_points": ["powerful motor", "loud"],
    "confidence": 0.8,
}


@asynccontextmanager
async def real_chain(database_url: str, **ai_overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    await migrate_users(database_url)
    await migrate_ai(database_url)
    async with (
        running_users(users_settings(database_url)) as users_address,
        running_ai(ai_settings(database_url, **ai_overrides)) as ai_address,
        running_gateway(gateway_settings(users_address, ai_address)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


async def account(client: httpx.AsyncClient) -> Account:
    email = unique_email()
    body = {"email": email, "name": "Reader", "password": PASSWORD}
    created = await client.post("/v1/users", json=body)
    assert created.status_code == 201, created.text
    return await log_in(client, Account(created.json()["id"], email, ""))


async def log_in(client: httpx.AsyncClient, who: Account) -> Account:
    """`who` with a token of a new session (and the role the account has now)."""
    token = await client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": who.email, "password": PASSWORD},
    )
    assert token.status_code == 200, token.text
    return Account(who.id, who.email, token.json()["access_token"])


async def test_analyses_through_the_real_ai_service(database_url: str) -> None:
    async with real_chain(database_url) as client:
        me, other = await account(client), await account(client)
        text = "What a wonderful phone. The battery lasts forever and the screen is gorgeous."
        created = await client.post("/v1/analyses", json={"text": text}, headers=me.headers)
        assert created.status_code == 201, created.text
        analysis = created.json()
        assert set(analysis) == ANALYSIS_FIELDS
        assert analysis["user_id"] == me.id
        assert analysis["sentiment"] == "positive"
        assert analysis["model"].startswith("offline")
        assert created.headers["location"] == f"/v1/analyses/{analysis['id']}"

        fetched = await client.get(f"/v1/analyses/{analysis['id']}", headers=me.headers)
        assert fetched.json() == analysis
        hidden = await client.get(f"/v1/analyses/{analysis['id']}", headers=other.headers)
        assert_problem(hidden, 404, "NOT_FOUND")

        async with client.stream(
            "POST",
            "/v1/analyses:stream",
            json={"text": "Awful. Broke in a day."},
            headers=me.headers,
        ) as streamed:
            assert streamed.status_code == 200
            events = await read_events(streamed)
        assert [e.name for e in events][-2:] == ["analysis", "done"]
        assert events[-2].data["sentiment"] == "negative"

        listed = await client.get("/v1/analyses?page_size=1", headers=me.headers)
        page = listed.json()
        assert [a["id"] for a in page["analyses"]] == [events[-2].data["id"]]
        rest = await client.get(
            f"/v1/analyses?page_size=5&page_token={page['next_page_token']}", headers=me.headers
        )
        assert [a["id"] for a in rest.json()["analyses"]] == [analysis["id"]]
        assert (await client.get("/v1/analyses", headers=other.headers)).json()["analyses"] == []

        blank = await client.post("/v1/analyses", json={"text": "   "}, headers=me.headers)
        body = assert_problem(blank, 400, "INVALID_ARGUMENT")
        assert "text" in field_errors(body)
        long = await client.post("/v1/analyses", json={"text": "x" * 50_001}, headers=me.headers)
        assert long.status_code == 400


async def test_claude_stream_relays_partials_through_the_gateway(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeAnthropic() as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", fake.api_key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        fake.enqueue(Reply.json_output(GOOD, chunks=10), Reply.rate_limited(retry_after=7))
        async with real_chain(
            sqlite_url, model="claude-sonnet-5-5", anthropic_max_retries=0
        ) as client:
            me = await account(client)
            async with client.stream(
                "POST", "/v1/analyses:stream", json={"text": "Loud blender."}, headers=me.headers
            ) as streamed:
                events = await read_events(streamed)
            names = [e.name for e in events]
            assert names.count("partial") >= 2
            assert names[-2:] == ["analysis", "done"]
            assert events[-2].data["summary"] == GOOD["summary"]
            assert fake.last_request.streamed

            limited = await client.post(
                "/v1/analyses", json={"text": "Another text."}, headers=me.headers
            )
            assert_problem(limited, 429, "RESOURCE_EXHAUSTED")
            assert limited.headers["retry-after"] == "7"


async def test_rest_analyses_show_their_usage_and_whether_they_were_cached(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeAnthropic() as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", fake.api_key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        usage = Usage(input_tokens=120, output_tokens=40, cache_read_input_tokens=900)
        fake.enqueue(Reply.json_output(GOOD, usage=usage))
        async with real_chain(sqlite_url, model="claude-sonnet-5-5") as client:
            me = await account(client)
            text = {"text": "A powerful, loud blender."}
            made = await client.post("/v1/analyses", json=text, headers=me.headers)
            again = await client.post("/v1/analyses", json=text, headers=me.headers)
            listed = await client.get("/v1/analyses", headers=me.headers)
    assert made.status_code == again.status_code == 201, (made.text, again.text)
    assert made.json()["cached"] is False
    assert made.json()["usage"] == {
        "input_tokens": 120,
        "output_tokens": 40,
        "cache_read_input_tokens": 900,
        "cache_creation_input_tokens": 0,
    }
    # The same text again: the result cache answers, with no tokens spent.
    assert again.json()["cached"] is True
    assert set(again.json()["usage"].values()) == {0}
    assert len(fake.requests) == 1
    assert [(a["cached"], a["usage"]) for a in listed.json()["analyses"]] == [
        (True, again.json()["usage"]),
        (False, made.json()["usage"]),
    ]


async def test_a_deleted_accounts_analyses_are_kept_for_its_return(database_url: str) -> None:
    """The README's retention: deleting an account ends its sessions, so nobody reads
    its analyses, but keeps them; an admin's undelete gives them back to the owner."""
    async with real_chain(database_url) as client:
        me, admin = await account(client), await account(client)
        assert await set_role(users_settings(database_url), admin.email, Role.ADMIN) == 0
        admin = await log_in(client, admin)
        made = await client.post("/v1/analyses", json={"text": "Kept."}, headers=me.headers)
        assert made.status_code == 201, made.text
        deleted = await client.delete(f"/v1/users/{me.id}", headers=me.headers)
        assert deleted.status_code == 204
        gone = await client.get(f"/v1/analyses/{made.json()['id']}", headers=me.headers)
        assert gone.status_code == 401
        restored = await client.post(f"/v1/users/{me.id}:undelete", headers=admin.headers)
        assert restored.status_code == 200, restored.text
        back = await log_in(client, me)
        listed = await client.get("/v1/analyses", headers=back.headers)
    assert listed.json()["analyses"] == [made.json()]


async def test_a_text_over_the_token_budget_is_a_400_naming_the_reason(
    sqlite_url: str, fake: FakeAnthropic
) -> None:
    fake.enqueue(Reply.token_count(5000), path=COUNT_TOKENS_PATH)
    async with real_chain(sqlite_url, max_input_tokens=4000) as client:
        me = await account(client)
        refused = await client.post(
            "/v1/analyses", json={"text": "Long enough to be counted."}, headers=me.headers
        )
    body = assert_problem(refused, 400, "INVALID_ARGUMENT")
    assert body["reason"] == "TEXT_TOO_MANY_TOKENS"
    assert "at most 4000" in field_errors(body)["text"]
    assert fake.requests_to(MESSAGES_PATH) == []
