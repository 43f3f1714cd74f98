"""The token lifecycle and the role rules over REST: the gateway in front of a real users
server (OAuth 2 token and revocation endpoints, JWKS, sessions ending, admins)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from tests.support.ai_standin import running_ai_standin
from tests.support.gateway import (
    PASSWORD,
    Stack,
    assert_problem,
    gateway_settings,
    gateway_stack,
    running_gateway,
    unique_email,
)
from tests.support.servers import migrate_users, running_users, users_settings
from users_service.cli import set_role
from users_service.policy import Role


@pytest.fixture
async def users_db(sqlite_url: str) -> str:
    await migrate_users(sqlite_url)
    return sqlite_url


@pytest.fixture
async def stack(users_db: str) -> AsyncIterator[Stack]:
    async with gateway_stack(users_db) as stack:
        yield stack


async def password_grant(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> Any:
    return await client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
    )


async def refresh_grant(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(
        "/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


def auth(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def signed_up(
    stack: Stack, email: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new account and the token answer of its login."""
    user = await stack.sign_up(email or unique_email())
    login = await password_grant(stack.client, user["email"])
    assert login.status_code == 200, login.text
    return user, login.json()


def assert_oauth_error(response: httpx.Response, error: str, reason: str | None) -> None:
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert body["error"] == error
    assert body["error_description"] == body["detail"]
    assert body.get("reason") == reason
    assert response.headers["cache-control"] == "no-store"


async def test_the_token_endpoint_issues_and_rotates_a_pair(stack: Stack) -> None:
    _, tokens = await signed_up(stack)
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    refreshed = await refresh_grant(stack.client, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.headers["cache-control"] == "no-store"
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert (await stack.client.get("/v1/users/me", headers=auth(new))).status_code == 200
    again = await refresh_grant(stack.client, tokens["refresh_token"])
    assert_oauth_error(again, "invalid_grant", "INVALID_GRANT")


async def test_oauth_errors_carry_rfc6749_fields(stack: Stack) -> None:
    user = await stack.sign_up()
    wrong = await password_grant(stack.client, user["email"], "not the password")
    assert_oauth_error(wrong, "invalid_grant", "BAD_CREDENTIALS")
    unknown = await password_grant(stack.client, "nobody@example.com")
    assert unknown.json()["detail"] == wrong.json()["detail"]
    missing = await stack.client.post("/v1/auth/token", data={"grant_type": "password"})
    assert_oauth_error(missing, "invalid_request", None)
    no_grant = await stack.client.post("/v1/auth/token", data={"username": user["email"]})
    assert_oauth_error(no_grant, "invalid_request", None)
    other = await stack.client.post("/v1/auth/token", data={"grant_type": "client_credentials"})
    assert_oauth_error(other, "unsupported_grant_type", "UNSUPPORTED_GRANT_TYPE")
    too_long = await stack.client.post(
        "/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": "x" * 300}
    )
    body = assert_problem(too_long, 400, "INVALID_ARGUMENT")
    assert body["error"] == "invalid_request"


async def test_the_jwks_verifies_a_token_with_pyjwt_alone(stack: Stack) -> None:
    _, tokens = await signed_up(stack)
    response = await stack.client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = jwt.PyJWKSet.from_dict(response.json())
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    claims = jwt.decode(
        tokens["access_token"],
        keys[kid],
        algorithms=["EdDSA"],
        audience="tandem-api",
        issuer="tandem-users",
    )
    assert {"sub", "sid", "role", "jti", "iat", "exp"} <= set(claims)


@pytest.mark.parametrize("which", ["refresh_token", "access_token"])
async def test_revoking_ends_the_session_at_once(stack: Stack, which: str) -> None:
    _, tokens = await signed_up(stack)
    assert (await stack.client.get("/v1/users/me", headers=auth(tokens))).status_code == 200
    response = await stack.client.post(
        "/v1/auth/revoke", data={"token": tokens[which], "token_type_hint": which}
    )
    assert response.status_code == 200
    me = await stack.client.get("/v1/users/me", headers=auth(tokens))
    assert assert_problem(me, 401, "UNAUTHENTICATED")["reason"] == "SESSION_ENDED"
    assert_oauth_error(
        await refresh_grant(stack.client, tokens["refresh_token"]), "invalid_grant", "INVALID_GRANT"
    )


async def test_revoking_an_unknown_token_is_200_and_no_token_is_400(stack: Stack) -> None:
    assert (await stack.client.post("/v1/auth/revoke", data={"token": "nope"})).status_code == 200
    assert_oauth_error(await stack.client.post("/v1/auth/revoke", data={}), "invalid_request", None)


async def test_token_refusals_have_a_stable_reason(stack: Stack) -> None:
    _, tokens = await signed_up(stack)
    header, payload, _ = tokens["access_token"].split(".")
    for headers, reason in (
        ({}, "TOKEN_MISSING"),
        ({"Authorization": "Bearer nonsense"}, "TOKEN_INVALID"),
        ({"Authorization": f"Bearer {header}.{payload}.AAAA"}, "TOKEN_INVALID"),
    ):
        response = await stack.client.get("/v1/users/me", headers=headers)
        body = assert_problem(response, 401, "UNAUTHENTICATED")
        assert body["reason"] == reason
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_password_change_ends_other_sessions_on_every_replica(users_db: str) -> None:
    """Two gateway replicas: the session ended through one stops working on the other
    once its cache lapses; the caller's own session goes on."""
    async with (
        running_users(users_settings(users_db)) as users_address,
        running_ai_standin() as ai,
        running_gateway(gateway_settings(users_address, ai.address)) as url_a,
        running_gateway(
            gateway_settings(users_address, ai.address, auth_cache_seconds=0.3)
        ) as url_b,
        httpx.AsyncClient(base_url=url_a) as a,
        httpx.AsyncClient(base_url=url_b) as b,
    ):
        email = unique_email()
        created = await a.post(
            "/v1/users", json={"email": email, "name": "A", "password": PASSWORD}
        )
        user_id = created.json()["id"]
        mine = (await password_grant(a, email)).json()
        elsewhere = (await password_grant(b, email)).json()
        assert (await b.get("/v1/users/me", headers=auth(elsewhere))).status_code == 200
        assert (await a.get("/v1/users/me", headers=auth(elsewhere))).status_code == 200
        change = await a.put(
            f"/v1/users/{user_id}/password",
            json={"current_password": PASSWORD, "new_password": "another good password"},
            headers=auth(mine),
        )
        assert change.status_code == 204, change.text
        # At once on the replica that changed it...
        assert (await a.get("/v1/users/me", headers=auth(elsewhere))).status_code == 401
        # ...and on the other within its GATEWAY_AUTH_CACHE_SECONDS.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 5
        while (await b.get("/v1/users/me", headers=auth(elsewhere))).status_code == 200:
            assert loop.time() < give_up, "the ended session still works on replica b"
            await asyncio.sleep(0.05)
        for client in (a, b):
            assert (await client.get("/v1/users/me", headers=auth(mine))).status_code == 200


async def test_delete_ends_sessions_and_undelete_does_not_bring_them_back(
    stack: Stack, users_db: str
) -> None:
    user, tokens = await signed_up(stack)
    _, admin_email = await make_admin(stack, users_db)
    admin = (await password_grant(stack.client, admin_email)).json()
    deleted = await stack.client.delete(f"/v1/users/{user['id']}", headers=auth(tokens))
    assert deleted.status_code == 204
    me = await stack.client.get("/v1/users/me", headers=auth(tokens))
    assert assert_problem(me, 401, "UNAUTHENTICATED")["reason"] == "SESSION_ENDED"
    restored = await stack.client.post(f"/v1/users/{user['id']}:undelete", headers=auth(admin))
    assert restored.status_code == 200, restored.text
    assert restored.json()["email"] == user["email"]
    assert (await stack.client.get("/v1/users/me", headers=auth(tokens))).status_code == 401
    assert (await password_grant(stack.client, user["email"])).status_code == 200


async def make_admin(stack: Stack, users_db: str) -> tuple[dict[str, Any], str]:
    user = await stack.sign_up()
    assert await set_role(users_settings(users_db), user["email"], Role.ADMIN) == 0
    return user, user["email"]


async def test_the_role_rules_over_rest(stack: Stack, users_db: str) -> None:
    ada, ada_tokens = await signed_up(stack)
    bob, bob_tokens = await signed_up(stack)
    own = await stack.client.get(f"/v1/users/{ada['id']}", headers=auth(ada_tokens))
    assert set(own.json()) == {"id", "email", "name", "role", "created_at", "updated_at"}
    assert own.json()["role"] == "user"
    other = await stack.client.get(f"/v1/users/{bob['id']}", headers=auth(ada_tokens))
    assert other.status_code == 200
    assert other.json() == {"id": bob["id"], "name": bob["name"]}
    assert "etag" not in other.headers
    missing = await stack.client.get(
        "/v1/users/00000000-0000-4000-8000-000000000000", headers=auth(ada_tokens)
    )
    assert_problem(missing, 404, "NOT_FOUND")

    listing = await stack.client.get("/v1/users?page_size=1000", headers=auth(ada_tokens))
    assert assert_problem(listing, 403, "PERMISSION_DENIED")["reason"] == "ADMIN_REQUIRED"
    for method, path in (
        ("DELETE", f"/v1/users/{bob['id']}"),
        ("POST", f"/v1/users/{bob['id']}:undelete"),
        ("PATCH", f"/v1/users/{bob['id']}"),
    ):
        kwargs: dict[str, Any] = {"json": {"name": "Mallory"}} if method == "PATCH" else {}
        refused = await stack.client.request(method, path, headers=auth(ada_tokens), **kwargs)
        assert_problem(refused, 403, "PERMISSION_DENIED")

    _, admin_email = await make_admin(stack, users_db)
    admin = (await password_grant(stack.client, admin_email)).json()
    full = await stack.client.get(f"/v1/users/{bob['id']}", headers=auth(admin))
    assert full.json()["email"] == bob["email"]
    assert (
        await stack.client.delete(f"/v1/users/{bob['id']}", headers=auth(admin))
    ).status_code == 204
    assert (await stack.client.get("/v1/users/me", headers=auth(bob_tokens))).status_code == 401
    listed = await stack.client.get("/v1/users?show_deleted=true", headers=auth(admin))
    assert listed.status_code == 200
    by_id = {u["id"]: u for u in listed.json()["users"]}
    assert "deleted_at" in by_id[bob["id"]] and "deleted_at" not in by_id[ada["id"]]
    live = await stack.client.get("/v1/users", headers=auth(admin))
    assert bob["id"] not in {u["id"] for u in live.json()["users"]}
    restored = await stack.client.post(f"/v1/users/{bob['id']}:undelete", headers=auth(admin))
    assert restored.status_code == 200


async def test_changing_the_email_over_rest_needs_the_password(stack: Stack) -> None:
    user, tokens = await signed_up(stack)
    path = f"/v1/users/{user['id']}"
    without = await stack.client.patch(path, json={"email": unique_email()}, headers=auth(tokens))
    assert assert_problem(without, 400, "INVALID_ARGUMENT")["errors"][0]["field"] == (
        "current_password"
    )
    wrong = await stack.client.patch(
        path, json={"email": unique_email(), "current_password": "nope"}, headers=auth(tokens)
    )
    assert assert_problem(wrong, 400, "INVALID_ARGUMENT")["reason"] == "WRONG_PASSWORD"
    new_email = unique_email()
    right = await stack.client.patch(
        path, json={"email": new_email, "current_password": PASSWORD}, headers=auth(tokens)
    )
    assert right.status_code == 200, right.text
    assert right.json()["email"] == new_email
    renamed = await stack.client.patch(
        path, json={"name": "No password needed"}, headers=auth(tokens)
    )
    assert renamed.status_code == 200
