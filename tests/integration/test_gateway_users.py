"""The account routes end to end: real users server, real gateway, real HTTP."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support.gateway import (
    PASSWORD,
    Stack,
    assert_problem,
    field_errors,
    gateway_stack,
    running_gateway,
    unique_email,
)
from tests.support.servers import migrate_users

USER_FIELDS = {"id", "email", "name", "created_at", "updated_at"}


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[Stack]:
    await migrate_users(sqlite_url)
    async with gateway_stack(sqlite_url) as stack:
        yield stack


# Sign-up


async def test_sign_up_answers_201_with_location_etag_and_the_user(stack: Stack) -> None:
    email = unique_email()
    response = await stack.client.post(
        "/v1/users", json={"email": email, "name": "Ada", "password": PASSWORD}
    )
    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) == USER_FIELDS
    assert user["email"] == email
    assert user["name"] == "Ada"
    uuid.UUID(user["id"])
    assert user["created_at"] == user["updated_at"]
    assert user["created_at"].endswith("Z")
    assert response.headers["location"] == f"/v1/users/{user['id']}"
    assert response.headers["etag"].startswith('"')
    assert response.headers["content-type"] == "application/json"


async def test_sign_up_with_a_taken_email_is_409(stack: Stack) -> None:
    user = await stack.sign_up()
    response = await stack.client.post(
        "/v1/users", json={"email": user["email"].upper(), "name": "Twin", "password": PASSWORD}
    )
    body = assert_problem(response, 409, "ALREADY_EXISTS")
    assert body["type"] == "https://tandem.dev/problems/already-exists"
    assert body["detail"] == "an account with this email already exists"
    assert "errors" not in body


async def test_sign_up_rules_of_the_users_service_come_back_as_field_errors(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/users", json={"email": "not-an-email", "name": "   ", "password": PASSWORD}
    )
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    errors = field_errors(body)
    # The service names `user.email`; the REST body calls it `email`.
    assert set(errors) == {"email", "name"}
    assert errors["name"] == "is required"
    assert errors["email"].startswith("is not a valid email address")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"email", "name", "password"}),
        ({"email": "a@example.com", "name": "A", "password": "short"}, {"password"}),
        ({"email": "a@example.com", "name": "A" * 101, "password": PASSWORD}, {"name"}),
        ({"email": "a@example.com", "name": "A", "password": PASSWORD, "admin": True}, {"admin"}),
        ({"email": 7, "name": "A", "password": PASSWORD}, {"email"}),
        ({"email": "a@example.com", "name": "A\x00", "password": PASSWORD}, {"name"}),
        ([1, 2], {"body"}),
    ],
)
async def test_invalid_sign_up_bodies_are_400_with_the_fields_at_fault(
    stack: Stack, body: object, fields: set[str]
) -> None:
    response = await stack.client.post("/v1/users", json=body)
    problem = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert problem["type"] == "https://tandem.dev/problems/invalid-argument"
    assert set(field_errors(problem)) == fields


async def test_malformed_json_is_400_on_the_body(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/users", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert list(field_errors(body)) == ["body"]
    assert field_errors(body)["body"].startswith("is not valid JSON")


# Log-in and tokens


async def test_login_answers_a_bearer_token(stack: Stack) -> None:
    import jwt

    user = await stack.sign_up()
    response = await stack.login(user["email"])
    assert response.status_code == 200, response.text
    token = response.json()
    assert set(token) == {"access_token", "token_type", "expires_in"}
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == stack.settings.token_ttl_seconds
    assert response.headers["cache-control"] == "no-store"
    claims = jwt.decode(
        token["access_token"],
        stack.settings.jwt_secret.get_secret_value(),  # type: ignore[union-attr]
        algorithms=["HS256"],
        audience=stack.settings.jwt_audience,
        issuer=stack.settings.jwt_issuer,
    )
    assert claims["sub"] == user["id"]
    assert claims["exp"] - claims["iat"] == stack.settings.token_ttl_seconds
    assert set(claims) == {"sub", "iat", "exp", "iss", "aud", "jti"}


async def test_every_failed_login_is_the_same_401(stack: Stack) -> None:
    user = await stack.sign_up()
    gone = await stack.new_account()
    deleted = await stack.client.delete(f"/v1/users/{gone.id}", headers=gone.headers)
    assert deleted.status_code == 204
    attempts = [
        (user["email"], "wrong password!"),
        (unique_email(), PASSWORD),
        (gone.email, PASSWORD),
        ("   ", PASSWORD),
    ]
    bodies = []
    for email, password in attempts:
        response = await stack.login(email, password)
        body = assert_problem(response, 401, "UNAUTHENTICATED")
        assert response.headers["www-authenticate"] == "Bearer"
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0]["detail"] == "the email or password is incorrect"


async def test_login_without_the_form_fields_is_400(stack: Stack) -> None:
    response = await stack.client.post("/v1/auth/token", data={"username": "x@example.com"})
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert set(field_errors(body)) == {"password"}


# Bearer authentication


async def test_routes_need_a_bearer_token(stack: Stack) -> None:
    user = await stack.sign_up()
    for method, path in [
        ("GET", "/v1/users/me"),
        ("GET", f"/v1/users/{user['id']}"),
        ("GET", "/v1/users"),
        ("DELETE", f"/v1/users/{user['id']}"),
        ("GET", "/v1/analyses"),
    ]:
        response = await stack.client.request(method, path)
        body = assert_problem(response, 401, "UNAUTHENTICATED")
        assert response.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in body["detail"]


async def test_expired_forged_and_malformed_tokens_are_401(stack: Stack) -> None:
    import time

    import jwt

    account = await stack.new_account()
    settings = stack.settings
    secret = settings.jwt_secret.get_secret_value()  # type: ignore[union-attr]
    now = int(time.time())
    claims = {
        "sub": account.id,
        "iat": now,
        "exp": now + 60,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "jti": "j1",
    }

    def sign(key: str = secret, **changes: object) -> str:
        values = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return jwt.encode(values, key, algorithm="HS256")

    assert (
        await stack.client.get("/v1/users/me", headers={"Authorization": f"Bearer {sign()}"})
    ).status_code == 200
    cases = {
        "expired": sign(iat=now - 120, exp=now - 60),
        "forged": sign(key="another-secret-of-enough-length-0123456789"),
        "wrong audience": sign(aud="someone-else"),
        "wrong issuer": sign(iss="someone-else"),
        "no jti": sign(jti=None),
        "no exp": sign(exp=None),
        "malformed": "not.a.jwt",
        "unsigned": jwt.encode(claims, None, algorithm="none"),
    }
    for name, token in cases.items():
        response = await stack.client.get(
            "/v1/users/me", headers={"Authorization": f"Bearer {token}"}
        )
        body = assert_problem(response, 401, "UNAUTHENTICATED")
        assert response.headers["www-authenticate"] == "Bearer", name
        expected = "expired" if name == "expired" else "invalid"
        assert expected in body["detail"], name
    basic = await stack.client.get("/v1/users/me", headers={"Authorization": "Basic eDp5"})
    assert_problem(basic, 401, "UNAUTHENTICATED")


# Reading accounts


async def test_me_returns_the_caller_with_its_etag(stack: Stack) -> None:
    account = await stack.new_account(name="Me")
    response = await stack.client.get("/v1/users/me", headers=account.headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == account.id
    assert response.json()["name"] == "Me"
    assert response.headers["etag"]


async def test_get_user_by_id(stack: Stack) -> None:
    account = await stack.new_account()
    other = await stack.sign_up(name="Other")
    response = await stack.client.get(f"/v1/users/{other['id']}", headers=account.headers)
    assert response.status_code == 200, response.text
    assert response.json() == other
    assert response.headers["etag"]


async def test_get_unknown_user_is_404_and_a_bad_id_400(stack: Stack) -> None:
    account = await stack.new_account()
    missing = uuid.uuid4()
    response = await stack.client.get(f"/v1/users/{missing}", headers=account.headers)
    body = assert_problem(response, 404, "NOT_FOUND")
    assert body["detail"] == f"no user {missing}"
    assert body["type"] == "https://tandem.dev/problems/not-found"
    response = await stack.client.get("/v1/users/12345", headers=account.headers)
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert set(field_errors(body)) == {"id"}


async def test_list_users_pages_through_every_account(stack: Stack) -> None:
    account = await stack.new_account()
    created = [account.id] + [(await stack.sign_up())["id"] for _ in range(4)]
    seen: list[str] = []
    token = None
    while True:
        params: dict[str, str | int] = {"page_size": 2}
        if token:
            params["page_token"] = token
        response = await stack.client.get("/v1/users", params=params, headers=account.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"users", "next_page_token"}
        assert len(page["users"]) <= 2
        seen += [u["id"] for u in page["users"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == created


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page_size": 0}, "page_size"),
        ({"page_size": 1001}, "page_size"),
        ({"page_size": "many"}, "page_size"),
        ({"page_token": "forged"}, "page_token"),
    ],
)
async def test_list_users_rejects_bad_paging(
    stack: Stack, params: dict[str, object], field: str
) -> None:
    account = await stack.new_account()
    response = await stack.client.get("/v1/users", params=params, headers=account.headers)  # type: ignore[arg-type]
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert set(field_errors(body)) == {field}


# Changing one's account


async def test_patch_changes_only_the_fields_sent(stack: Stack) -> None:
    account = await stack.new_account(name="Before")
    response = await stack.client.patch(
        f"/v1/users/{account.id}", json={"name": "After"}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "After"
    assert response.json()["email"] == account.email
    new_email = unique_email()
    response = await stack.client.patch(
        f"/v1/users/{account.id}", json={"email": new_email}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "After"
    assert response.json()["email"] == new_email
    assert response.json()["updated_at"] > response.json()["created_at"]


async def test_patch_with_if_match(stack: Stack) -> None:
    account = await stack.new_account()
    path = f"/v1/users/{account.id}"
    etag = (await stack.client.get(path, headers=account.headers)).headers["etag"]
    first = await stack.client.patch(
        path, json={"name": "One"}, headers={**account.headers, "If-Match": etag}
    )
    assert first.status_code == 200, first.text
    assert first.headers["etag"] != etag
    # The account changed since `etag` was read: 412, and nothing changes.
    stale = await stack.client.patch(
        path, json={"name": "Two"}, headers={**account.headers, "If-Match": etag}
    )
    body = assert_problem(stale, 412, "ABORTED")
    assert body["type"] == "https://tandem.dev/problems/precondition-failed"
    assert (await stack.client.get(path, headers=account.headers)).json()["name"] == "One"
    # The current etag, quoted or not, and `*` all pass.
    current = first.headers["etag"]
    for quoted in (False, True, None):
        if_match = "*" if quoted is None else current if quoted else current.strip('"')
        response = await stack.client.patch(
            path, json={"name": "Three"}, headers={**account.headers, "If-Match": if_match}
        )
        assert response.status_code == 200, (if_match, response.text)
        current = response.headers["etag"]


async def test_patch_rejects_an_empty_body_and_nulls(stack: Stack) -> None:
    account = await stack.new_account()
    path = f"/v1/users/{account.id}"
    for body in ({}, {"name": None}, {"name": ""}, {"nickname": "x"}):
        response = await stack.client.patch(path, json=body, headers=account.headers)
        assert_problem(response, 400, "INVALID_ARGUMENT")


async def test_patch_to_a_taken_email_is_409(stack: Stack) -> None:
    account = await stack.new_account()
    other = await stack.sign_up()
    response = await stack.client.patch(
        f"/v1/users/{account.id}", json={"email": other["email"]}, headers=account.headers
    )
    assert_problem(response, 409, "ALREADY_EXISTS")


async def test_acting_on_another_account_is_403(stack: Stack) -> None:
    account = await stack.new_account()
    other = await stack.sign_up()
    path = f"/v1/users/{other['id']}"
    for method, body in [
        ("PATCH", {"name": "Hacked"}),
        ("PUT", {"current_password": PASSWORD, "new_password": "new password 123"}),
        ("DELETE", None),
    ]:
        target = path + "/password" if method == "PUT" else path
        response = await stack.client.request(method, target, json=body, headers=account.headers)
        assert_problem(response, 403, "PERMISSION_DENIED")
    unchanged = await stack.client.get(path, headers=account.headers)
    assert unchanged.json() == other


async def test_change_password(stack: Stack) -> None:
    account = await stack.new_account()
    path = f"/v1/users/{account.id}/password"
    new = "a brand new password"
    wrong = await stack.client.put(
        path,
        json={"current_password": "not it at all", "new_password": new},
        headers=account.headers,
    )
    body = assert_problem(wrong, 401, "UNAUTHENTICATED")
    assert body["detail"] == "the current password is incorrect"
    short = await stack.client.put(
        path, json={"current_password": PASSWORD, "new_password": "short"}, headers=account.headers
    )
    assert set(field_errors(assert_problem(short, 400, "INVALID_ARGUMENT"))) == {"new_password"}
    changed = await stack.client.put(
        path, json={"current_password": PASSWORD, "new_password": new}, headers=account.headers
    )
    assert changed.status_code == 204, changed.text
    assert changed.content == b""
    assert (await stack.login(account.email, PASSWORD)).status_code == 401
    assert (await stack.login(account.email, new)).status_code == 200


async def test_delete_soft_deletes_and_the_tokens_stop_working_at_once(stack: Stack) -> None:
    account = await stack.new_account()
    viewer = await stack.new_account()
    me = await stack.client.get("/v1/users/me", headers=account.headers)
    assert me.status_code == 200
    response = await stack.client.delete(f"/v1/users/{account.id}", headers=account.headers)
    assert response.status_code == 204, response.text
    for path in ("/v1/users/me", f"/v1/users/{viewer.id}", "/v1/analyses"):
        gone = await stack.client.get(path, headers=account.headers)
        body = assert_problem(gone, 401, "UNAUTHENTICATED")
        assert body["detail"] == "the account of this access token no longer exists"
    found = await stack.client.get(f"/v1/users/{account.id}", headers=viewer.headers)
    assert_problem(found, 404, "NOT_FOUND")
    # The email is free again (AIP-164 soft delete).
    await stack.sign_up(email=account.email)


async def test_another_replica_forgets_a_deleted_account_within_its_cache_time(
    stack: Stack,
) -> None:
    # The replica that deletes forgets at once; one with a cache remembers the account
    # as live for up to GATEWAY_AUTH_CACHE_SECONDS (here: long), one without none.
    cached = stack.settings.model_copy(update={"auth_cache_seconds": 300.0})
    uncached = stack.settings.model_copy(update={"auth_cache_seconds": 0.0})
    account = await stack.new_account()
    async with running_gateway(cached) as cached_url, running_gateway(uncached) as uncached_url:
        for url in (cached_url, uncached_url):
            seen = await stack.client.get(f"{url}/v1/users/{account.id}", headers=account.headers)
            assert seen.status_code == 200
        deleted = await stack.client.delete(f"/v1/users/{account.id}", headers=account.headers)
        assert deleted.status_code == 204
        stale = await stack.client.get(f"{cached_url}/v1/analyses", headers=account.headers)
        assert stale.status_code == 200
        fresh = await stack.client.get(f"{uncached_url}/v1/analyses", headers=account.headers)
        assert_problem(fresh, 401, "UNAUTHENTICATED")


# On PostgreSQL too: the whole life of an account.


async def test_account_life_on_each_database(users_db: str) -> None:
    async with gateway_stack(users_db) as stack:
        account = await stack.new_account(name="Life")
        headers = account.headers
        path = f"/v1/users/{account.id}"
        assert (await stack.client.get(path, headers=headers)).json()["name"] == "Life"
        patched = await stack.client.patch(path, json={"name": "Longer"}, headers=headers)
        assert patched.status_code == 200, patched.text
        listed = await stack.client.get("/v1/users", headers=headers)
        assert account.id in [u["id"] for u in listed.json()["users"]]
        taken = await stack.client.post(
            "/v1/users", json={"email": account.email, "name": "Twin", "password": PASSWORD}
        )
        assert_problem(taken, 409, "ALREADY_EXISTS")
        assert (await stack.client.delete(path, headers=headers)).status_code == 204
        assert_problem(await stack.client.get(path, headers=headers), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize(("cache_seconds", "calls_per_read"), [(300.0, 1), (0.0, 2)])
async def test_a_read_costs_one_users_call_while_the_caller_is_known_live(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, cache_seconds: float, calls_per_read: int
) -> None:
    await migrate_users(sqlite_url)
    caplog.set_level(logging.INFO, logger="servicekit.access")
    stack_of = gateway_stack(sqlite_url, users_access_log=True, auth_cache_seconds=cache_seconds)
    async with stack_of as stack:
        account = await stack.new_account(name="Reader")
        caplog.clear()
        for _ in range(10):
            response = await stack.client.get(f"/v1/users/{account.id}", headers=account.headers)
            assert response.status_code == 200
    calls = [r for r in caplog.records if r.getMessage().startswith(GET_USER_LOG_PREFIX)]
    assert len(calls) == 10 * calls_per_read


GET_USER_LOG_PREFIX = "/users.v1.UsersService/GetUser OK "


@pytest.mark.parametrize("coalesce", [True, False])
async def test_concurrent_reads_coalesce_and_each_gets_its_own_answer(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, coalesce: bool
) -> None:
    await migrate_users(sqlite_url)
    caplog.set_level(logging.INFO, logger="servicekit.access")
    async with gateway_stack(sqlite_url, users_access_log=True, coalesce_reads=coalesce) as stack:
        client = stack.client
        people = [await stack.sign_up(name=f"Person {i}") for i in range(12)]
        headers = {"Authorization": f"Bearer {await stack.token(people[0]['email'])}"}
        missing = [str(uuid.uuid4()), str(uuid.uuid4())]
        paths = [f"/v1/users/{p['id']}" for p in people] + [f"/v1/users/{m}" for m in missing]
        await client.get("/v1/users/me", headers=headers)  # the caller is known live
        caplog.clear()
        responses = await asyncio.gather(*(client.get(p, headers=headers) for p in paths))
    assert [r.json() for r in responses[:12]] == people
    for response, absent in zip(responses[12:], missing, strict=True):
        assert_problem(response, 404, "NOT_FOUND")
        assert response.json()["detail"] == f"no user {absent}"
    methods = [r.getMessage().split()[0] for r in caplog.records]
    if coalesce:
        assert "/users.v1.UsersService/BatchGetUsers" in methods
    else:
        assert methods == ["/users.v1.UsersService/GetUser"] * len(paths)
