"""The account routes end to end: real users server, real gateway, real HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.deps import SESSION_ENDED
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.support.gateway import (
    PASSWORD,
    Account,
    Stack,
    assert_problem,
    field_errors,
    gateway_stack,
    running_gateway,
    unique_email,
)
from tests.support.keys import signing_key
from tests.support.rpc import violations
from tests.support.servers import migrate_users, users_settings
from tests.support.tokens import service_bearer
from users_service.cli import set_role
from users_service.policy import Role
from users_service.signing_keys import public_key_pem, thumbprint
from users_service.tokens import REFRESH_TOKEN_PREFIX

# One's own account (and any, for an admin); others see PUBLIC_FIELDS.
USER_FIELDS = {"id", "email", "name", "role", "created_at", "updated_at"}
PUBLIC_FIELDS = {"id", "name"}
# What a token refused for its own sake answers with (RFC 6750 §3).
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'


@pytest.fixture
async def db_url(sqlite_url: str) -> str:
    """The stack's users database, migrated (for the admin command)."""
    await migrate_users(sqlite_url)
    return sqlite_url


@pytest.fixture
async def stack(db_url: str) -> AsyncIterator[Stack]:
    async with gateway_stack(db_url) as stack:
        yield stack


async def new_admin(stack: Stack, database_url: str) -> Account:
    """A new account made an admin by the users service's admin command, logged in since
    (the role is in the token)."""
    account = await stack.new_account(name="Admin")
    assert await set_role(users_settings(database_url), account.email, Role.ADMIN) == 0
    return Account(account.id, account.email, await stack.token(account.email))


def public(user: dict[str, Any]) -> dict[str, Any]:
    """An account as another (non-admin) account sees it."""
    return {"id": user["id"], "name": user["name"]}


def the_tests_signing_key() -> Ed25519PrivateKey:
    """The key every in-process users server of the tests signs tokens with."""
    return signing_key()


def hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """A JWT signed with HMAC-SHA256 (by hand: PyJWT refuses PEM keys as HMAC secrets)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = ".".join(b64(json.dumps(part).encode()) for part in (header, claims))
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def assert_refused(response: httpx.Response, reason: str) -> dict[str, Any]:
    body = assert_problem(response, 401, "UNAUTHENTICATED")
    assert body.get("reason") == reason, body
    return body


def assert_wrong_password(response: httpx.Response) -> None:
    """A typo in the current password: a field error, never a 401 ("log in again")."""
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert body["reason"] == "WRONG_PASSWORD", body
    assert body["errors"] == [{"field": "current_password", "message": "is incorrect"}]
    assert body["detail"] == "current_password: is incorrect"
    assert "www-authenticate" not in response.headers


def assert_oauth_error(response: httpx.Response, error: str) -> dict[str, Any]:
    """A token endpoint error: a 400 problem that is also an RFC 6749 §5.2 error."""
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert body["error"] == error, body
    assert body["error_description"] == body["detail"]
    assert response.headers["cache-control"] == "no-store"
    return body


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
    assert user["role"] == "user"
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
    assert errors["name"] == "must not be blank"
    assert errors["email"].startswith("is not a valid email address")
    # The detail names the fields as the REST body does, too.
    assert "user." not in body["detail"]


async def test_sign_up_reports_every_violation_at_once_as_grpc_words_them(stack: Stack) -> None:
    sent = {"email": "not-an-email", "name": "   ", "password": "short"}
    response = await stack.client.post("/v1/users", json=sent)
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    # The same request over gRPC: the same violations, the same words, REST's field names.
    async with grpc.aio.insecure_channel(stack.users_address) as channel:
        request = users_pb2.CreateUserRequest(
            user=users_pb2.User(email=sent["email"], name=sent["name"]), password=sent["password"]
        )
        metadata = (("authorization", service_bearer(["users.signup"])),)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await users_pb2_grpc.UsersServiceStub(channel).CreateUser(request, metadata=metadata)
    over_grpc = {f.removeprefix("user."): m for f, m in violations(refused.value).items()}
    assert field_errors(body) == over_grpc
    assert set(over_grpc) == {"email", "name", "password"}
    assert over_grpc["name"] == "must not be blank"
    assert over_grpc["password"] == "must be at least 8 characters"
    assert body["detail"] == "; ".join(f"{e['field']}: {e['message']}" for e in body["errors"])


@pytest.mark.parametrize(
    ("body", "messages"),
    [
        ({}, {"email": "is required", "name": "is required", "password": "is required"}),
        ({"email": 7, "name": "", "password": PASSWORD}, {"email": "must be a string"}),
        (
            {"email": "a@example.com", "name": "", "password": "p" * 129},
            {"name": "is required", "password": "must be at most 128 characters"},
        ),
        (
            {"email": "a@example.com", "name": "A", "password": PASSWORD, "role": "admin"},
            {"role": "is not a field of this request"},
        ),
        ([1, 2], {"body": "must be a JSON object"}),
    ],
)
async def test_shape_errors_are_worded_as_the_services_word_theirs(
    stack: Stack, body: object, messages: dict[str, str]
) -> None:
    response = await stack.client.post("/v1/users", json=body)
    assert field_errors(assert_problem(response, 400, "INVALID_ARGUMENT")) == messages


async def test_a_body_of_another_type_is_415_naming_the_one_expected(stack: Stack) -> None:
    form = await stack.client.post(
        "/v1/users", data={"email": "a@example.com", "name": "A", "password": PASSWORD}
    )
    problem = assert_problem(form, 415, "INVALID_ARGUMENT")
    assert problem["type"] == "https://tandem.dev/problems/unsupported-media-type"
    assert problem["title"] == "Unsupported media type"
    assert "application/json" in problem["detail"]
    assert "application/x-www-form-urlencoded" in problem["detail"]
    bare = await stack.client.post(
        "/v1/users", content=b'{"email": "a@example.com"}', headers={"content-type": ""}
    )
    assert "application/json" in assert_problem(bare, 415, "INVALID_ARGUMENT")["detail"]
    # The token endpoint reads a form: JSON there names the form type, the OAuth way.
    as_json = await stack.client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": "a@example.com"}
    )
    problem = assert_problem(as_json, 415, "INVALID_ARGUMENT")
    assert "application/x-www-form-urlencoded" in problem["detail"]
    assert problem["error"] == "invalid_request"
    revoke = await stack.client.post("/v1/auth/revoke", json={"token": "x"})
    assert assert_problem(revoke, 415, "INVALID_ARGUMENT")["error"] == "invalid_request"
    # A JSON variant is JSON; no body at all is missing fields, not a wrong type.
    variant = await stack.client.post(
        "/v1/users",
        content=json.dumps({"email": "x"}).encode(),
        headers={"content-type": "application/merge-patch+json"},
    )
    assert set(field_errors(assert_problem(variant, 400, "INVALID_ARGUMENT"))) >= {"name"}
    empty = await stack.client.post("/v1/users")
    assert field_errors(assert_problem(empty, 400, "INVALID_ARGUMENT")) == {"body": "is required"}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"email", "name", "password"}),
        ({"email": "a@example.com", "name": "A", "password": "short"}, {"password"}),
        ({"email": "a@example.com", "name": "A" * 101, "password": PASSWORD}, {"name"}),
        ({"email": "a@example.com", "name": "A", "password": PASSWORD, "admin": True}, {"admin"}),
        ({"email": "a@example.com", "name": "A", "password": PASSWORD, "role": "admin"}, {"role"}),
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


async def test_login_answers_a_bearer_token(stack: Stack, db_url: str) -> None:
    user = await stack.sign_up()
    response = await stack.login(user["email"])
    assert response.status_code == 200, response.text
    token = response.json()
    assert set(token) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert token["token_type"] == "Bearer"
    # The users service decides the lifetime.
    ttl = users_settings(db_url).access_token_ttl_seconds
    assert token["expires_in"] == ttl
    assert response.headers["cache-control"] == "no-store"
    assert token["refresh_token"].startswith(REFRESH_TOKEN_PREFIX)
    # Signed by the users service's key (EdDSA), named by its thumbprint.
    public_key = the_tests_signing_key().public_key()
    assert jwt.get_unverified_header(token["access_token"]) == {
        "alg": "EdDSA",
        "kid": thumbprint(public_key),
        "typ": "JWT",
    }
    claims = jwt.decode(
        token["access_token"],
        public_key_pem(public_key),
        algorithms=["EdDSA"],
        audience=stack.settings.token_audience,
        issuer=stack.settings.token_issuer,
    )
    assert claims["sub"] == user["id"]
    assert claims["role"] == "user"
    uuid.UUID(claims["sid"])
    assert claims["exp"] - claims["iat"] == ttl
    assert set(claims) == {"sub", "iat", "exp", "iss", "aud", "jti", "sid", "role"}
    me = await stack.client.get(
        "/v1/users/me", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert me.status_code == 200, me.text


async def test_every_failed_login_is_the_same_invalid_grant(stack: Stack) -> None:
    user = await stack.sign_up()
    gone = await stack.new_account()
    deleted = await stack.client.delete(f"/v1/users/{gone.id}", headers=gone.headers)
    assert deleted.status_code == 204
    attempts = [
        (user["email"], "wrong password!"),
        (unique_email(), PASSWORD),
        (gone.email, PASSWORD),
    ]
    bodies = []
    for email, password in attempts:
        response = await stack.login(email, password)
        body = assert_oauth_error(response, "invalid_grant")
        assert "www-authenticate" not in response.headers
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
    # Nothing tells an unknown email, a wrong password and a deleted account apart.
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0]["detail"] == "the email or password is incorrect"
    assert bodies[0]["reason"] == "BAD_CREDENTIALS"
    # A blank email is no login attempt at all: a malformed request.
    blank = await stack.login("   ", PASSWORD)
    assert "reason" not in assert_oauth_error(blank, "invalid_request")


@pytest.mark.parametrize(
    ("form", "missing"),
    [
        ({"grant_type": "password", "username": "x@example.com"}, {"password"}),
        ({"grant_type": "password", "password": PASSWORD}, {"username"}),
        ({"grant_type": "password"}, {"username", "password"}),
        ({"grant_type": "refresh_token"}, {"refresh_token"}),
        ({"username": "x@example.com", "password": PASSWORD}, {"grant_type"}),
    ],
)
async def test_login_without_the_form_fields_is_400(
    stack: Stack, form: dict[str, str], missing: set[str]
) -> None:
    response = await stack.client.post("/v1/auth/token", data=form)
    body = assert_oauth_error(response, "invalid_request")
    assert all(name in body["detail"] for name in missing), body["detail"]
    assert "reason" not in body


async def test_an_unknown_grant_type_is_unsupported(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/auth/token",
        data={"grant_type": "client_credentials", "username": "x@example.com", "password": "x"},
    )
    body = assert_oauth_error(response, "unsupported_grant_type")
    assert body["reason"] == "UNSUPPORTED_GRANT_TYPE"


# Bearer authentication


async def test_routes_need_a_bearer_token(stack: Stack) -> None:
    user = await stack.sign_up()
    for method, path in [
        ("GET", "/v1/users/me"),
        ("GET", f"/v1/users/{user['id']}"),
        ("GET", "/v1/users"),
        ("PATCH", f"/v1/users/{user['id']}"),
        ("DELETE", f"/v1/users/{user['id']}"),
        ("GET", "/v1/analyses"),
    ]:
        response = await stack.client.request(method, path)
        body = assert_refused(response, "TOKEN_MISSING")
        assert response.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in body["detail"]


async def test_expired_forged_and_malformed_tokens_are_401(stack: Stack) -> None:
    account = await stack.new_account()
    other = await stack.new_account()
    key = the_tests_signing_key()
    kid = thumbprint(key.public_key())
    # A live session of the account's, to forge tokens of.
    sid = jwt.decode(account.token, options={"verify_signature": False})["sid"]
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": stack.settings.token_issuer,
        "aud": stack.settings.token_audience,
        "sub": account.id,
        "iat": now,
        "exp": now + 60,
        "jti": "j1",
        "sid": sid,
        "role": "user",
    }

    def sign(signing_key: Ed25519PrivateKey = key, key_id: str = kid, **changes: object) -> str:
        values = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return jwt.encode(values, signing_key, algorithm="EdDSA", headers={"kid": key_id})

    async def me(token: str) -> httpx.Response:
        return await stack.client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})

    # Signed with the users service's key, of a live session: accepted.
    accepted = await me(sign())
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["id"] == account.id
    another_key = Ed25519PrivateKey.generate()
    other_sid = jwt.decode(other.token, options={"verify_signature": False})["sid"]
    cases = {
        "expired": (sign(iat=now - 120, exp=now - 60), "TOKEN_EXPIRED"),
        "forged": (sign(another_key), "TOKEN_INVALID"),
        "unknown key": (
            sign(another_key, thumbprint(another_key.public_key())),
            "UNKNOWN_SIGNING_KEY",
        ),
        "wrong audience": (sign(aud="someone-else"), "WRONG_AUDIENCE"),
        "wrong issuer": (sign(iss="someone-else"), "TOKEN_INVALID"),
        "too long a life": (
            sign(exp=now + stack.settings.token_max_lifetime_seconds + 60),
            "TOKEN_LIFETIME_TOO_LONG",
        ),
        "no jti": (sign(jti=None), "TOKEN_INVALID"),
        "no exp": (sign(exp=None), "TOKEN_INVALID"),
        "no sid": (sign(sid=None), "TOKEN_INVALID"),
        "no role": (sign(role=None), "TOKEN_INVALID"),
        "unknown role": (sign(role="root"), "TOKEN_INVALID"),
        "malformed": ("not.a.jwt", "TOKEN_INVALID"),
        "unsigned": (
            jwt.encode(claims, "", algorithm="none", headers={"kid": kid}),
            "TOKEN_INVALID",
        ),
        # The published key used as an HMAC secret (algorithm confusion).
        "hs256 with the public key": (
            hs256(claims, public_key_pem(key.public_key()), kid),
            "TOKEN_INVALID",
        ),
        # Well signed, but of no session, or of another account's session.
        "no such session": (sign(sid=str(uuid.uuid4())), "SESSION_ENDED"),
        "another's session": (sign(sid=other_sid), "SESSION_ENDED"),
    }
    for name, (token, reason) in cases.items():
        response = await me(token)
        body = assert_problem(response, 401, "UNAUTHENTICATED")
        assert body.get("reason") == reason, (name, body)
        assert response.headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE, name
        if reason == "TOKEN_EXPIRED":
            assert "expired" in body["detail"], name
        if reason == "TOKEN_INVALID":
            assert "invalid" in body["detail"], name
    basic = await stack.client.get("/v1/users/me", headers={"Authorization": "Basic eDp5"})
    assert_refused(basic, "TOKEN_MISSING")


# Reading accounts


async def test_me_returns_the_caller_with_its_etag(stack: Stack) -> None:
    account = await stack.new_account(name="Me")
    response = await stack.client.get("/v1/users/me", headers=account.headers)
    assert response.status_code == 200, response.text
    assert set(response.json()) == USER_FIELDS
    assert response.json()["id"] == account.id
    assert response.json()["email"] == account.email
    assert response.json()["name"] == "Me"
    assert response.headers["etag"]


async def test_get_user_by_id(stack: Stack, db_url: str) -> None:
    me = await stack.sign_up(name="Me")
    headers = {"Authorization": f"Bearer {await stack.token(me['email'])}"}
    other = await stack.sign_up(name="Other")
    # One's own account: in full, with its ETag.
    own = await stack.client.get(f"/v1/users/{me['id']}", headers=headers)
    assert own.status_code == 200, own.text
    assert own.json() == me
    assert own.headers["etag"]
    # Another's: its public profile only, with no version to act on.
    response = await stack.client.get(f"/v1/users/{other['id']}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == public(other)
    assert "etag" not in response.headers
    # An admin's view of another: in full.
    admin = await new_admin(stack, db_url)
    full = await stack.client.get(f"/v1/users/{other['id']}", headers=admin.headers)
    assert full.status_code == 200, full.text
    assert full.json() == other
    assert full.headers["etag"]


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


async def test_list_users_pages_through_every_account(stack: Stack, db_url: str) -> None:
    admin = await new_admin(stack, db_url)
    created = [admin.id] + [(await stack.sign_up())["id"] for _ in range(4)]
    seen: list[str] = []
    token = None
    while True:
        params: dict[str, str | int] = {"page_size": 2}
        if token:
            params["page_token"] = token
        response = await stack.client.get("/v1/users", params=params, headers=admin.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"users", "next_page_token"}
        assert len(page["users"]) <= 2
        # An admin lists accounts in full.
        assert all(set(u) == USER_FIELDS for u in page["users"])
        seen += [u["id"] for u in page["users"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == created


async def test_listing_is_for_admins_and_shows_deleted_accounts_only_when_asked(
    stack: Stack, db_url: str
) -> None:
    account = await stack.new_account()
    for params in ({}, {"show_deleted": "true"}, {"page_size": 1}):
        refused = await stack.client.get("/v1/users", params=params, headers=account.headers)
        body = assert_problem(refused, 403, "PERMISSION_DENIED")
        assert body["reason"] == "ADMIN_REQUIRED"
    admin = await new_admin(stack, db_url)
    gone = await stack.sign_up()
    # An admin may delete any account.
    deleted = await stack.client.delete(f"/v1/users/{gone['id']}", headers=admin.headers)
    assert deleted.status_code == 204, deleted.text
    live = await stack.client.get("/v1/users", headers=admin.headers)
    assert live.status_code == 200, live.text
    assert [u["id"] for u in live.json()["users"]] == [account.id, admin.id]
    listed = await stack.client.get(
        "/v1/users", params={"show_deleted": "true"}, headers=admin.headers
    )
    assert listed.status_code == 200, listed.text
    by_id = {u["id"]: u for u in listed.json()["users"]}
    assert list(by_id) == [account.id, admin.id, gone["id"]]
    assert set(by_id[gone["id"]]) == USER_FIELDS | {"deleted_at"}
    assert by_id[gone["id"]]["deleted_at"].endswith("Z")
    assert set(by_id[account.id]) == set(by_id[admin.id]) == USER_FIELDS
    assert by_id[admin.id]["role"] == "admin"
    assert by_id[account.id]["role"] == "user"


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
    stack: Stack, db_url: str, params: dict[str, object], field: str
) -> None:
    admin = await new_admin(stack, db_url)
    response = await stack.client.get("/v1/users", params=params, headers=admin.headers)  # type: ignore[arg-type]
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert set(field_errors(body)) == {field}


# Changing one's account


async def test_patch_changes_only_the_fields_sent(stack: Stack) -> None:
    account = await stack.new_account(name="Before")
    path = f"/v1/users/{account.id}"
    response = await stack.client.patch(path, json={"name": "After"}, headers=account.headers)
    assert response.status_code == 200, response.text
    assert set(response.json()) == USER_FIELDS
    assert response.json()["name"] == "After"
    assert response.json()["email"] == account.email
    new_email = unique_email()
    # The email changes only with the account's password.
    refused = await stack.client.patch(path, json={"email": new_email}, headers=account.headers)
    body = assert_problem(refused, 400, "INVALID_ARGUMENT")
    assert set(field_errors(body)) == {"current_password"}
    wrong = await stack.client.patch(
        path, json={"email": new_email, "current_password": "not it"}, headers=account.headers
    )
    assert_wrong_password(wrong)
    assert (await stack.client.get(path, headers=account.headers)).json()["email"] == (
        account.email
    )
    response = await stack.client.patch(
        path, json={"email": new_email, "current_password": PASSWORD}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "After"
    assert response.json()["email"] == new_email
    assert response.json()["role"] == "user"
    assert response.json()["updated_at"] > response.json()["created_at"]
    # The caller's token goes on working (an email change ends no session).
    assert (await stack.client.get("/v1/users/me", headers=account.headers)).status_code == 200


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
    for body in (
        {},
        {"name": None},
        {"name": ""},
        {"nickname": "x"},
        {"role": "admin"},
        # The password alone changes nothing.
        {"current_password": PASSWORD},
        {"email": None, "current_password": PASSWORD},
    ):
        response = await stack.client.patch(path, json=body, headers=account.headers)
        assert_problem(response, 400, "INVALID_ARGUMENT")
    unchanged = await stack.client.get(path, headers=account.headers)
    assert unchanged.json()["role"] == "user"


async def test_patch_to_a_taken_email_is_409(stack: Stack) -> None:
    account = await stack.new_account()
    other = await stack.sign_up()
    response = await stack.client.patch(
        f"/v1/users/{account.id}",
        json={"email": other["email"], "current_password": PASSWORD},
        headers=account.headers,
    )
    assert_problem(response, 409, "ALREADY_EXISTS")


async def test_acting_on_another_account_is_403(stack: Stack, db_url: str) -> None:
    account = await stack.new_account()
    other = await stack.sign_up()
    admin = await new_admin(stack, db_url)
    password_change = {"current_password": PASSWORD, "new_password": "new password 123"}
    changes: list[tuple[str, str, dict[str, str] | None]] = [
        ("PATCH", "", {"name": "Hacked"}),
        ("PATCH", "", {"email": unique_email(), "current_password": PASSWORD}),
        ("PUT", "/password", password_change),
    ]
    # The users service decides, from who calls and which id they name only: the same
    # 403 for another live account as for one that does not exist.
    for target in (other["id"], str(uuid.uuid4())):
        for method, suffix, body in [*changes, ("DELETE", "", None)]:
            response = await stack.client.request(
                method, f"/v1/users/{target}{suffix}", json=body, headers=account.headers
            )
            refused = assert_problem(response, 403, "PERMISSION_DENIED")
            assert refused["reason"] == "NOT_ACCOUNT_OWNER", (method, suffix, refused)
    # An admin may delete another account, but not change it or its password.
    for method, suffix, body in changes:
        response = await stack.client.request(
            method, f"/v1/users/{other['id']}{suffix}", json=body, headers=admin.headers
        )
        refused = assert_problem(response, 403, "PERMISSION_DENIED")
        assert refused["reason"] == "NOT_ACCOUNT_OWNER", (method, suffix, refused)
    # Nothing changed: the owner still logs in with the old password and sees it all.
    owner = {"Authorization": f"Bearer {await stack.token(other['email'])}"}
    unchanged = await stack.client.get(f"/v1/users/{other['id']}", headers=owner)
    assert unchanged.json() == other


async def test_change_password(stack: Stack) -> None:
    account = await stack.new_account()
    elsewhere = {"Authorization": f"Bearer {await stack.token(account.email)}"}
    path = f"/v1/users/{account.id}/password"
    new = "a brand new password"
    wrong = await stack.client.put(
        path,
        json={"current_password": "not it at all", "new_password": new},
        headers=account.headers,
    )
    assert_wrong_password(wrong)
    short = await stack.client.put(
        path, json={"current_password": PASSWORD, "new_password": "short"}, headers=account.headers
    )
    assert set(field_errors(assert_problem(short, 400, "INVALID_ARGUMENT"))) == {"new_password"}
    # Refused attempts ended no session.
    assert (await stack.client.get("/v1/users/me", headers=elsewhere)).status_code == 200
    changed = await stack.client.put(
        path, json={"current_password": PASSWORD, "new_password": new}, headers=account.headers
    )
    assert changed.status_code == 204, changed.text
    assert changed.content == b""
    # Every other session ended at once; the caller's own goes on.
    assert_refused(await stack.client.get("/v1/users/me", headers=elsewhere), "SESSION_ENDED")
    assert (await stack.client.get("/v1/users/me", headers=account.headers)).status_code == 200
    old = assert_oauth_error(await stack.login(account.email, PASSWORD), "invalid_grant")
    assert old["reason"] == "BAD_CREDENTIALS"
    assert (await stack.login(account.email, new)).status_code == 200


async def test_delete_soft_deletes_and_the_tokens_stop_working_at_once(stack: Stack) -> None:
    account = await stack.new_account()
    elsewhere = {"Authorization": f"Bearer {await stack.token(account.email)}"}
    viewer = await stack.new_account()
    for headers in (account.headers, elsewhere):
        me = await stack.client.get("/v1/users/me", headers=headers)
        assert me.status_code == 200
    response = await stack.client.delete(f"/v1/users/{account.id}", headers=account.headers)
    assert response.status_code == 204, response.text
    # Every session of the account ended, the caller's own too.
    for headers in (account.headers, elsewhere):
        for path in ("/v1/users/me", f"/v1/users/{viewer.id}", "/v1/analyses"):
            gone = await stack.client.get(path, headers=headers)
            body = assert_refused(gone, "SESSION_ENDED")
            assert body["detail"] == SESSION_ENDED
            assert gone.headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE
    found = await stack.client.get(f"/v1/users/{account.id}", headers=viewer.headers)
    assert_problem(found, 404, "NOT_FOUND")
    assert_oauth_error(await stack.login(account.email), "invalid_grant")
    # The email is free again (AIP-164 soft delete).
    await stack.sign_up(email=account.email)


async def test_another_replica_forgets_a_deleted_account_within_its_cache_time(
    stack: Stack,
) -> None:
    # The replica that deletes forgets the account's sessions at once; one with a cache
    # remembers a session as live for up to GATEWAY_AUTH_CACHE_SECONDS (here: long),
    # one without none.
    cached = stack.settings.model_copy(update={"auth_cache_seconds": 300.0})
    uncached = stack.settings.model_copy(update={"auth_cache_seconds": 0.0})
    account = await stack.new_account()
    async with running_gateway(cached) as cached_url, running_gateway(uncached) as uncached_url:
        for url in (cached_url, uncached_url):
            seen = await stack.client.get(f"{url}/v1/users/{account.id}", headers=account.headers)
            assert seen.status_code == 200
        deleted = await stack.client.delete(f"/v1/users/{account.id}", headers=account.headers)
        assert deleted.status_code == 204
        assert_refused(
            await stack.client.get("/v1/analyses", headers=account.headers), "SESSION_ENDED"
        )
        stale = await stack.client.get(f"{cached_url}/v1/analyses", headers=account.headers)
        assert stale.status_code == 200
        fresh = await stack.client.get(f"{uncached_url}/v1/analyses", headers=account.headers)
        assert_refused(fresh, "SESSION_ENDED")


# On PostgreSQL too: the whole life of an account.


async def test_account_life_on_each_database(users_db: str) -> None:
    async with gateway_stack(users_db) as stack:
        account = await stack.new_account(name="Life")
        admin = await new_admin(stack, users_db)
        headers = account.headers
        path = f"/v1/users/{account.id}"
        assert (await stack.client.get(path, headers=headers)).json()["name"] == "Life"
        patched = await stack.client.patch(path, json={"name": "Longer"}, headers=headers)
        assert patched.status_code == 200, patched.text
        new_email = unique_email()
        moved = await stack.client.patch(
            path, json={"email": new_email, "current_password": PASSWORD}, headers=headers
        )
        assert moved.status_code == 200, moved.text
        seen = await stack.client.get(path, headers=admin.headers)
        assert seen.json()["email"] == new_email
        mine_only = await stack.client.get("/v1/users", headers=headers)
        assert_problem(mine_only, 403, "PERMISSION_DENIED")
        listed = await stack.client.get("/v1/users", headers=admin.headers)
        assert account.id in [u["id"] for u in listed.json()["users"]]
        taken = await stack.client.post(
            "/v1/users", json={"email": new_email, "name": "Twin", "password": PASSWORD}
        )
        assert_problem(taken, 409, "ALREADY_EXISTS")
        assert (await stack.client.delete(path, headers=headers)).status_code == 204
        assert_refused(await stack.client.get(path, headers=headers), "SESSION_ENDED")
        assert_oauth_error(await stack.login(new_email), "invalid_grant")
        everyone = await stack.client.get(
            "/v1/users", params={"show_deleted": "true"}, headers=admin.headers
        )
        by_id = {u["id"]: u for u in everyone.json()["users"]}
        assert "deleted_at" in by_id[account.id]
        restored = await stack.client.post(f"{path}:undelete", headers=admin.headers)
        assert restored.status_code == 200, restored.text
        assert "deleted_at" not in restored.json()
        # The ended sessions stay ended; a new login works.
        assert_refused(await stack.client.get(path, headers=headers), "SESSION_ENDED")
        assert (await stack.login(new_email)).status_code == 200


@pytest.mark.parametrize(("cache_seconds", "calls_per_read"), [(300.0, 1), (0.0, 2)])
async def test_a_read_costs_one_users_call_while_the_caller_is_known_live(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, cache_seconds: float, calls_per_read: int
) -> None:
    await migrate_users(sqlite_url)
    caplog.set_level(logging.INFO, logger="servicekit.access")
    stack_of = gateway_stack(sqlite_url, users_access_log=True, auth_cache_seconds=cache_seconds)
    async with stack_of as stack:
        account = await stack.new_account(name="Reader")
        # The keys are fetched, and the session seen live, once.
        assert (await stack.client.get("/v1/users/me", headers=account.headers)).status_code == 200
        caplog.clear()
        for _ in range(10):
            response = await stack.client.get(f"/v1/users/{account.id}", headers=account.headers)
            assert response.status_code == 200
    calls = Counter(
        " ".join(r.getMessage().split()[:2]) for r in caplog.records if r.name == ACCESS_LOG
    )
    # The read itself, and (without a cache) the check that the session is live.
    expected = Counter({"/users.v1.UsersService/GetUser OK": 10})
    if calls_per_read == 2:
        expected["/users.v1.AuthService/BatchGetSessions OK"] = 10
    assert calls == expected
    assert calls.total() == 10 * calls_per_read


ACCESS_LOG = "servicekit.access"


@pytest.mark.parametrize("coalesce", [True, False])
async def test_concurrent_reads_coalesce_and_each_gets_its_own_answer(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, coalesce: bool
) -> None:
    await migrate_users(sqlite_url)
    caplog.set_level(logging.INFO, logger="servicekit.access")
    # The session is checked once (below), not during the reads counted.
    stack_of = gateway_stack(
        sqlite_url, users_access_log=True, coalesce_reads=coalesce, auth_cache_seconds=300.0
    )
    async with stack_of as stack:
        client = stack.client
        people = [await stack.sign_up(name=f"Person {i}") for i in range(12)]
        headers = {"Authorization": f"Bearer {await stack.token(people[0]['email'])}"}
        missing = [str(uuid.uuid4()), str(uuid.uuid4())]
        paths = [f"/v1/users/{p['id']}" for p in people] + [f"/v1/users/{m}" for m in missing]
        await client.get("/v1/users/me", headers=headers)  # the caller is known live
        caplog.clear()
        responses = await asyncio.gather(*(client.get(p, headers=headers) for p in paths))
    # The caller's own account in full; the others' public profiles.
    assert [r.json() for r in responses[:12]] == [people[0]] + [public(p) for p in people[1:]]
    assert responses[0].headers["etag"]
    assert not any("etag" in r.headers for r in responses[1:12])
    for response, absent in zip(responses[12:], missing, strict=True):
        assert_problem(response, 404, "NOT_FOUND")
        assert response.json()["detail"] == f"no user {absent}"
    methods = [r.getMessage().split()[0] for r in caplog.records]
    if coalesce:
        assert "/users.v1.UsersService/BatchGetUsers" in methods
        assert set(methods) <= {
            "/users.v1.UsersService/BatchGetUsers",
            "/users.v1.UsersService/GetUser",
        }
    else:
        assert methods == ["/users.v1.UsersService/GetUser"] * len(paths)


async def test_concurrent_reads_of_different_callers_each_get_their_own_view(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Reads coalesce per caller only: the users service decides what each may see from
    # the token a call carries, so a batch mixing callers would show one caller's view
    # to another.
    await migrate_users(sqlite_url)
    caplog.set_level(logging.INFO, logger="servicekit.access")
    stack_of = gateway_stack(sqlite_url, users_access_log=True, auth_cache_seconds=300.0)
    async with stack_of as stack:
        client = stack.client
        people = [await stack.sign_up(name=f"Person {i}") for i in range(2)]
        tokens = [await stack.token(p["email"]) for p in people]
        for token in tokens:  # both callers are known live
            me = await client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200
        reads = [(caller, target) for _ in range(6) for target in (0, 1) for caller in (0, 1)]
        caplog.clear()
        responses = await asyncio.gather(
            *(
                client.get(
                    f"/v1/users/{people[target]['id']}",
                    headers={"Authorization": f"Bearer {tokens[caller]}"},
                )
                for caller, target in reads
            )
        )
    for (caller, target), response in zip(reads, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = people[target] if caller == target else public(people[target])
        assert response.json() == expected, (caller, target)
    methods = [r.getMessage().split()[0] for r in caplog.records]
    assert "/users.v1.UsersService/BatchGetUsers" in methods
