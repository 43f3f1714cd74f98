"""The users service as identity provider, over real gRPC, on SQLite and on PostgreSQL:
logins, refresh rotation and reuse, revocation, sessions ending, roles and privacy."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2

from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.support.rpc import reason, rpc_error, violations
from tests.support.servers import channel_to, migrate_users, running_users, users_settings
from users_service.cli import set_role
from users_service.policy import Role

PASSWORD = "correct horse battery"


@dataclass
class Idp:
    users: Any
    auth: Any
    database_url: str

    async def sign_up(self, email: str, password: str = PASSWORD) -> users_pb2.User:
        request = users_pb2.CreateUserRequest(
            user=users_pb2.User(email=email, name=email.split("@", maxsplit=1)[0]),
            password=password,
        )
        user: users_pb2.User = await self.users.CreateUser(request)
        return user

    async def login(self, email: str, password: str = PASSWORD) -> auth_pb2.IssueTokenResponse:
        grant = auth_pb2.PasswordGrant(email=email, password=password)
        reply: auth_pb2.IssueTokenResponse = await self.auth.IssueToken(
            auth_pb2.IssueTokenRequest(password=grant)
        )
        return reply

    async def refresh(self, refresh_token: str) -> auth_pb2.IssueTokenResponse:
        grant = auth_pb2.RefreshTokenGrant(refresh_token=refresh_token)
        reply: auth_pb2.IssueTokenResponse = await self.auth.IssueToken(
            auth_pb2.IssueTokenRequest(refresh_token=grant)
        )
        return reply

    async def session(self, session_id: str) -> auth_pb2.Session:
        reply = await self.auth.BatchGetSessions(auth_pb2.BatchGetSessionsRequest(ids=[session_id]))
        session: auth_pb2.Session = reply.sessions[0]
        return session


def bearer(tokens: auth_pb2.IssueTokenResponse) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tokens.access_token}"),)


@asynccontextmanager
async def running_idp(database_url: str, *, reuse_grace: float) -> AsyncIterator[Idp]:
    await migrate_users(database_url)
    settings = users_settings(database_url, refresh_reuse_grace_seconds=reuse_grace)
    async with running_users(settings) as address, channel_to(address) as channel:
        yield Idp(
            users_pb2_grpc.UsersServiceStub(channel),
            auth_pb2_grpc.AuthServiceStub(channel),
            database_url,
        )


@pytest.fixture
async def idp(database_url: str) -> AsyncIterator[Idp]:
    """A users server whose reuse grace outlasts any test: a re-presented token is
    always within it."""
    async with running_idp(database_url, reuse_grace=300) as idp:
        yield idp


@pytest.fixture
async def strict_idp(database_url: str) -> AsyncIterator[Idp]:
    """A users server without a reuse grace: every re-presented token is reuse."""
    async with running_idp(database_url, reuse_grace=0) as idp:
        yield idp


async def test_a_login_issues_a_signed_access_token_and_a_refresh_token(idp: Idp) -> None:
    user = await idp.sign_up("ada@example.com")
    tokens = await idp.login("ada@example.com")
    assert tokens.token_type == "Bearer"
    assert tokens.expires_in == 900
    assert tokens.refresh_token.startswith("tndr_") and len(tokens.refresh_token) > 40
    assert tokens.user_id == user.id
    jwks = await idp.auth.GetJsonWebKeySet(auth_pb2.GetJsonWebKeySetRequest())
    keys = jwt.PyJWKSet.from_dict(
        {"keys": [{f.name: v for f, v in k.ListFields()} for k in jwks.keys]}
    )
    kid = jwt.get_unverified_header(tokens.access_token)["kid"]
    claims = jwt.decode(
        tokens.access_token,
        keys[kid],
        algorithms=["EdDSA"],
        audience="tandem-api",
        issuer="tandem-users",
    )
    assert claims["sub"] == user.id
    assert claims["sid"] == tokens.session_id
    assert claims["role"] == "user"
    session = await idp.session(tokens.session_id)
    assert session.user_id == user.id
    assert not session.HasField("end_time")


async def test_a_failed_login_is_one_answer_whatever_failed(idp: Idp) -> None:
    await idp.sign_up("ada@example.com")
    for email, password in (
        ("ada@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
    ):
        error = await rpc_error(idp.login(email, password))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(error) == "BAD_CREDENTIALS"
        assert error.details() == "the email or password is incorrect"


async def test_refresh_rotates_and_within_the_grace_a_rotated_token_is_only_refused(
    idp: Idp,
) -> None:
    await idp.sign_up("ada@example.com")
    first = await idp.login("ada@example.com")
    second = await idp.refresh(first.refresh_token)
    assert second.session_id == first.session_id
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    third = await idp.refresh(second.refresh_token)
    error = await rpc_error(idp.refresh(second.refresh_token))
    assert reason(error) == "INVALID_GRANT"
    assert not (await idp.session(first.session_id)).HasField("end_time")
    assert (await idp.refresh(third.refresh_token)).session_id == first.session_id


async def test_reuse_after_the_grace_ends_the_session(strict_idp: Idp) -> None:
    idp = strict_idp
    await idp.sign_up("ada@example.com")
    first = await idp.login("ada@example.com")
    second = await idp.refresh(first.refresh_token)
    third = await idp.refresh(second.refresh_token)
    error = await rpc_error(idp.refresh(first.refresh_token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(error) == "REFRESH_TOKEN_REUSED"
    assert (await idp.session(first.session_id)).HasField("end_time")
    # ...and with it the newest refresh token.
    error = await rpc_error(idp.refresh(third.refresh_token))
    assert reason(error) == "INVALID_GRANT"


async def test_concurrent_refreshes_with_one_token_have_exactly_one_winner(idp: Idp) -> None:
    await idp.sign_up("ada@example.com")
    tokens = await idp.login("ada@example.com")
    outcomes = await asyncio.gather(
        *(idp.refresh(tokens.refresh_token) for _ in range(20)), return_exceptions=True
    )
    winners = [o for o in outcomes if isinstance(o, auth_pb2.IssueTokenResponse)]
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 19
    assert {reason(e) for e in losers} == {"INVALID_GRANT"}
    # The winner's pair works: losing the race within the grace does not end the session.
    assert (await idp.refresh(winners[0].refresh_token)).session_id == tokens.session_id


async def test_unknown_and_malformed_refresh_tokens_are_invalid_grants(idp: Idp) -> None:
    for token in ("tndr_" + "x" * 43, "garbage", ""):
        error = await rpc_error(idp.refresh(token))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(error) == "INVALID_GRANT"
    error = await rpc_error(idp.auth.IssueToken(auth_pb2.IssueTokenRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grant" in violations(error)


@pytest.mark.parametrize("kind", ["refresh", "access", "access-expired-hint"])
async def test_revoking_either_token_ends_the_session(idp: Idp, kind: str) -> None:
    await idp.sign_up("ada@example.com")
    tokens = await idp.login("ada@example.com")
    token = tokens.refresh_token if kind == "refresh" else tokens.access_token
    hint = (
        auth_pb2.TOKEN_TYPE_HINT_REFRESH_TOKEN
        if kind == "access-expired-hint"
        else auth_pb2.TOKEN_TYPE_HINT_UNSPECIFIED
    )
    ended = await idp.auth.RevokeToken(
        auth_pb2.RevokeTokenRequest(token=token, token_type_hint=hint)
    )
    assert ended.session_id == tokens.session_id
    assert (await idp.session(tokens.session_id)).HasField("end_time")
    error = await rpc_error(idp.refresh(tokens.refresh_token))
    assert reason(error) == "INVALID_GRANT"
    # Revoking again, or a token that is not ours, succeeds and ends nothing.
    again = await idp.auth.RevokeToken(auth_pb2.RevokeTokenRequest(token="not-a-token"))
    assert again.session_id == ""


async def test_a_password_change_ends_every_other_session(idp: Idp) -> None:
    user = await idp.sign_up("ada@example.com")
    mine = await idp.login("ada@example.com")
    other = await idp.login("ada@example.com")
    request = users_pb2.ChangePasswordRequest(
        id=user.id, current_password=PASSWORD, new_password="a brand new password"
    )
    await idp.users.ChangePassword(request, metadata=bearer(mine))
    assert not (await idp.session(mine.session_id)).HasField("end_time")
    assert (await idp.session(other.session_id)).HasField("end_time")
    assert reason(await rpc_error(idp.refresh(other.refresh_token))) == "INVALID_GRANT"
    await idp.refresh(mine.refresh_token)


async def test_deleting_ends_every_session_and_undeleting_revives_none(idp: Idp) -> None:
    user = await idp.sign_up("ada@example.com")
    tokens = await idp.login("ada@example.com")
    await idp.users.DeleteUser(users_pb2.DeleteUserRequest(id=user.id), metadata=bearer(tokens))
    assert (await idp.session(tokens.session_id)).HasField("end_time")
    await idp.users.UndeleteUser(users_pb2.UndeleteUserRequest(id=user.id))
    assert (await idp.session(tokens.session_id)).HasField("end_time")
    assert reason(await rpc_error(idp.refresh(tokens.refresh_token))) == "INVALID_GRANT"
    await idp.login("ada@example.com")


async def test_others_see_a_public_profile_and_admins_everything(idp: Idp) -> None:
    ada = await idp.sign_up("ada@example.com")
    bob = await idp.sign_up("bob@example.com")
    ada_tokens = await idp.login("ada@example.com")
    own = await idp.users.GetUser(users_pb2.GetUserRequest(id=ada.id), metadata=bearer(ada_tokens))
    assert own.view == users_pb2.USER_VIEW_FULL
    assert own.email == "ada@example.com" and own.role == users_pb2.ROLE_USER
    other = await idp.users.GetUser(
        users_pb2.GetUserRequest(id=bob.id), metadata=bearer(ada_tokens)
    )
    assert other == users_pb2.User(id=bob.id, name="bob", view=users_pb2.USER_VIEW_PUBLIC)
    batch = await idp.users.BatchGetUsers(
        users_pb2.BatchGetUsersRequest(ids=[ada.id, bob.id]), metadata=bearer(ada_tokens)
    )
    assert [u.view for u in batch.users] == [users_pb2.USER_VIEW_FULL, users_pb2.USER_VIEW_PUBLIC]

    error = await rpc_error(
        idp.users.ListUsers(users_pb2.ListUsersRequest(), metadata=bearer(ada_tokens))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(error) == "ADMIN_REQUIRED"
    for call in (
        idp.users.DeleteUser(users_pb2.DeleteUserRequest(id=bob.id), metadata=bearer(ada_tokens)),
        idp.users.UpdateUser(
            users_pb2.UpdateUserRequest(
                user=users_pb2.User(id=bob.id, name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=bearer(ada_tokens),
        ),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(error) == "NOT_ACCOUNT_OWNER"

    assert await set_role(users_settings(idp.database_url), "ada@example.com", Role.ADMIN) == 0
    admin = await idp.login("ada@example.com")
    assert jwt.decode(admin.access_token, options={"verify_signature": False})["role"] == "admin"
    full = await idp.users.GetUser(users_pb2.GetUserRequest(id=bob.id), metadata=bearer(admin))
    assert full.email == "bob@example.com"
    await idp.users.DeleteUser(users_pb2.DeleteUserRequest(id=bob.id), metadata=bearer(admin))
    listed = await idp.users.ListUsers(
        users_pb2.ListUsersRequest(show_deleted=True), metadata=bearer(admin)
    )
    assert {u.id for u in listed.users} == {ada.id, bob.id}
    await idp.users.UndeleteUser(users_pb2.UndeleteUserRequest(id=bob.id), metadata=bearer(admin))


async def test_revoking_admin_ends_the_accounts_sessions(idp: Idp) -> None:
    await idp.sign_up("ada@example.com")
    settings = users_settings(idp.database_url)
    assert await set_role(settings, "ada@example.com", Role.ADMIN) == 0
    tokens = await idp.login("ada@example.com")
    assert await set_role(settings, "ADA@example.com ", Role.USER) == 0
    assert (await idp.session(tokens.session_id)).HasField("end_time")
    assert await set_role(settings, "nobody@example.com", Role.ADMIN) == 1


async def test_changing_the_email_needs_the_current_password(idp: Idp) -> None:
    user = await idp.sign_up("ada@example.com")
    tokens = await idp.login("ada@example.com")

    def change(current: str) -> Any:
        request = users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=user.id, email="ada@elsewhere.example"),
            update_mask=field_mask_pb2.FieldMask(paths=["email"]),
            current_password=current,
        )
        return idp.users.UpdateUser(request, metadata=bearer(tokens))

    assert "current_password" in violations(await rpc_error(change("")))
    wrong = await rpc_error(change("not the password"))
    assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(wrong) == "WRONG_PASSWORD"
    assert violations(wrong) == {"current_password": "is incorrect"}
    assert (await change(PASSWORD)).email == "ada@elsewhere.example"


async def test_a_bad_token_on_a_call_is_unauthenticated(idp: Idp) -> None:
    user = await idp.sign_up("ada@example.com")
    for metadata, expected in (
        ((("authorization", "Bearer not-a-jwt"),), "TOKEN_INVALID"),
        ((("authorization", "Basic abc"),), "TOKEN_INVALID"),
    ):
        error = await rpc_error(
            idp.users.GetUser(users_pb2.GetUserRequest(id=user.id), metadata=metadata)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(error) == expected


async def test_sessions_of_others_are_not_found(idp: Idp) -> None:
    await idp.sign_up("ada@example.com")
    await idp.sign_up("bob@example.com")
    ada = await idp.login("ada@example.com")
    bob = await idp.login("bob@example.com")
    request = auth_pb2.BatchGetSessionsRequest(ids=[bob.session_id])
    error = await rpc_error(idp.auth.BatchGetSessions(request, metadata=bearer(ada)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    mine = auth_pb2.BatchGetSessionsRequest(ids=[ada.session_id])
    assert (await idp.auth.BatchGetSessions(mine, metadata=bearer(ada))).sessions[0].id == (
        ada.session_id
    )
    unknown = auth_pb2.BatchGetSessionsRequest(ids=[str(uuid.uuid4())])
    assert (await rpc_error(idp.auth.BatchGetSessions(unknown))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
