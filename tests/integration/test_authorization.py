"""Who may call what, over real gRPC: every method of both services, every kind of caller.

A real users server and a real ai server (which asks that users server for its keys,
sessions and accounts), on SQLite. Each row of the tables below is one call by one
caller; the caller is one of:

    none       no `authorization` metadata
    expired    a user's token past its `exp`
    forged     a well-formed token signed with a key the users service never published
    ended      a user's token whose session was revoked
    owner      the account the call is about
    other      another account
    admin      an account with the admin role
    service    a service account with no scope
    scoped     a service account with the scope the method names

"allowed" means the policy let the call through: it may still fail on the data
(NOT_FOUND, FAILED_PRECONDITION), never with UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.support import tokens
from tests.support.rpc import reason
from tests.support.servers import (
    ai_settings,
    channel_to,
    migrate_ai,
    migrate_users,
    running_ai,
    running_users,
    users_settings,
)
from tests.support.tokens import service_bearer
from users_service.cli import set_role
from users_service.policy import Role

PASSWORD = "correct horse battery"
# What the set-up calls carry: a service account with every scope.
SETUP = (("authorization", service_bearer()),)
OK = "allowed"
Outcome = str  # OK, or "CODE" or "CODE REASON"


@dataclass
class World:
    users: Any
    auth: Any
    ai: Any
    database_url: str
    owner: auth_pb2.IssueTokenResponse
    other: auth_pb2.IssueTokenResponse
    admin: auth_pb2.IssueTokenResponse
    # An analysis of `owner`'s.
    analysis_id: str
    # google.longrunning.Operations on the ai server, and an operation of `owner`'s.
    operations: Any = None
    operation_name: str = ""

    async def account(self, name: str) -> auth_pb2.IssueTokenResponse:
        email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
        user = users_pb2.User(email=email, name=name)
        await self.users.CreateUser(
            users_pb2.CreateUserRequest(user=user, password=PASSWORD), metadata=SETUP
        )
        grant = auth_pb2.PasswordGrant(email=email, password=PASSWORD)
        tokens: auth_pb2.IssueTokenResponse = await self.auth.IssueToken(
            auth_pb2.IssueTokenRequest(password=grant), metadata=SETUP
        )
        return tokens

    async def fresh_owner(self) -> None:
        """A new `owner` with an analysis: each call acts on untouched data."""
        self.owner = await self.account("owner")
        made = await self.ai.AnalyzeText(
            analysis_pb2.AnalyzeTextRequest(text="Fine weather."),
            metadata=(("authorization", user_bearer(self.owner)),),
        )
        self.analysis_id = made.id
        started = await self.ai.BatchAnalyzeTexts(
            analysis_pb2.BatchAnalyzeTextsRequest(texts=["Fine weather."]),
            metadata=(("authorization", user_bearer(self.owner)),),
        )
        self.operation_name = started.name


def user_bearer(tokens: auth_pb2.IssueTokenResponse) -> str:
    return f"Bearer {tokens.access_token}"


def expired_bearer(user_id: str) -> str:
    """Signed with the right key, an hour ago."""
    return tokens.user_bearer(user_id, now=datetime.now(UTC) - timedelta(hours=1))


def forged_bearer(user_id: str) -> str:
    """An admin's token, signed with a key the users service never published."""
    return tokens.user_bearer(user_id, role="admin", key=Ed25519PrivateKey.generate())


@pytest.fixture
async def world(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[World]:
    await migrate_users(sqlite_url)
    await migrate_ai(sqlite_url)
    # Session ends are seen at once: nothing is remembered between calls.
    users_config = users_settings(sqlite_url, session_cache_seconds=0)
    async with running_users(users_config) as users_address:
        ai_config = ai_settings(sqlite_url, users_target=users_address, auth_cache_seconds=0)
        async with (
            running_ai(ai_config) as ai_address,
            channel_to(users_address, authorization=None) as users_channel,
            channel_to(ai_address, authorization=None) as ai_channel,
        ):
            world = World(
                users=users_pb2_grpc.UsersServiceStub(users_channel),
                auth=auth_pb2_grpc.AuthServiceStub(users_channel),
                ai=analysis_pb2_grpc.AnalysisServiceStub(ai_channel),
                operations=operations_pb2_grpc.OperationsStub(ai_channel),
                database_url=sqlite_url,
                owner=auth_pb2.IssueTokenResponse(),
                other=auth_pb2.IssueTokenResponse(),
                admin=auth_pb2.IssueTokenResponse(),
                analysis_id="",
            )
            await world.fresh_owner()
            world.other = await world.account("other")
            admin = await world.account("admin")
            who = await world.users.GetUser(
                users_pb2.GetUserRequest(id=admin.user_id), metadata=SETUP
            )
            assert await set_role(users_config, who.email, Role.ADMIN) == 0
            capsys.readouterr()
            # The role is in the token: log in again after the grant.
            grant = auth_pb2.PasswordGrant(email=who.email, password=PASSWORD)
            world.admin = await world.auth.IssueToken(
                auth_pb2.IssueTokenRequest(password=grant), metadata=SETUP
            )
            yield world


async def bearer_of(world: World, caller: str, scope: str) -> str | None:
    owner_id = world.owner.user_id
    if caller == "none":
        return None
    if caller == "expired":
        return expired_bearer(owner_id)
    if caller == "forged":
        return forged_bearer(owner_id)
    if caller == "ended":
        ended = await world.account("ended")
        await world.auth.RevokeToken(
            auth_pb2.RevokeTokenRequest(token=ended.refresh_token), metadata=SETUP
        )
        return user_bearer(ended)
    if caller == "service":
        return service_bearer([])
    if caller == "scoped":
        return service_bearer([scope])
    return user_bearer({"owner": world.owner, "other": world.other, "admin": world.admin}[caller])


Call = Callable[[World, tuple[tuple[str, str], ...]], Awaitable[Any]]


def users_call(method: str, build: Callable[[World], Any]) -> Call:
    async def call(world: World, metadata: tuple[tuple[str, str], ...]) -> Any:
        stub = world.auth if method in AUTH_METHODS else world.users
        return await getattr(stub, method)(build(world), metadata=metadata)

    return call


def ai_call(method: str, build: Callable[[World], Any]) -> Call:
    async def call(world: World, metadata: tuple[tuple[str, str], ...]) -> Any:
        if method == "StreamAnalyzeText":
            return [c async for c in world.ai.StreamAnalyzeText(build(world), metadata=metadata)]
        return await getattr(world.ai, method)(build(world), metadata=metadata)

    return call


def operations_call(method: str, build: Callable[[World], Any]) -> Call:
    async def call(world: World, metadata: tuple[tuple[str, str], ...]) -> Any:
        return await getattr(world.operations, method)(build(world), metadata=metadata)

    return call


AUTH_METHODS = {"IssueToken", "RevokeToken", "BatchGetSessions", "GetJsonWebKeySet"}


def _owner_id(world: World) -> str:
    return world.owner.user_id


def _new_user(world: World) -> users_pb2.CreateUserRequest:
    user = users_pb2.User(email=f"new-{uuid.uuid4().hex[:8]}@example.com", name="New")
    return users_pb2.CreateUserRequest(user=user, password=PASSWORD)


CALLS: dict[str, tuple[Call, str]] = {
    "CreateUser": (users_call("CreateUser", _new_user), "users.signup"),
    "AuthenticateUser": (
        users_call(
            "AuthenticateUser",
            lambda w: users_pb2.AuthenticateUserRequest(email="x@example.com", password="x"),
        ),
        "users.login",
    ),
    "GetUser": (
        users_call("GetUser", lambda w: users_pb2.GetUserRequest(id=_owner_id(w))),
        "users.read",
    ),
    "BatchGetUsers": (
        users_call("BatchGetUsers", lambda w: users_pb2.BatchGetUsersRequest(ids=[_owner_id(w)])),
        "users.read",
    ),
    "ListUsers": (users_call("ListUsers", lambda w: users_pb2.ListUsersRequest()), "users.read"),
    "UpdateUser": (
        users_call(
            "UpdateUser",
            lambda w: users_pb2.UpdateUserRequest(
                user=users_pb2.User(id=_owner_id(w), name="Renamed")
            ),
        ),
        "users.write",
    ),
    "ChangePassword": (
        users_call(
            "ChangePassword",
            lambda w: users_pb2.ChangePasswordRequest(
                id=_owner_id(w), current_password=PASSWORD, new_password=PASSWORD + "!"
            ),
        ),
        "users.write",
    ),
    "DeleteUser": (
        users_call("DeleteUser", lambda w: users_pb2.DeleteUserRequest(id=_owner_id(w))),
        "users.write",
    ),
    "UndeleteUser": (
        users_call("UndeleteUser", lambda w: users_pb2.UndeleteUserRequest(id=_owner_id(w))),
        "users.write",
    ),
    "IssueToken": (
        users_call(
            "IssueToken",
            lambda w: auth_pb2.IssueTokenRequest(
                password=auth_pb2.PasswordGrant(email="x@example.com", password="x")
            ),
        ),
        "users.login",
    ),
    "BatchGetSessions": (
        users_call(
            "BatchGetSessions", lambda w: auth_pb2.BatchGetSessionsRequest(ids=[w.owner.session_id])
        ),
        "sessions.read",
    ),
    "RevokeToken": (
        users_call("RevokeToken", lambda w: auth_pb2.RevokeTokenRequest(token="tndr_unknown")),
        "",
    ),
    "AnalyzeText": (
        ai_call(
            "AnalyzeText",
            lambda w: analysis_pb2.AnalyzeTextRequest(text="Nice.", user_id=_owner_id(w)),
        ),
        "analyses.write",
    ),
    "StreamAnalyzeText": (
        ai_call(
            "StreamAnalyzeText",
            lambda w: analysis_pb2.AnalyzeTextRequest(text="Nice.", user_id=_owner_id(w)),
        ),
        "analyses.write",
    ),
    "GetAnalysis": (
        ai_call("GetAnalysis", lambda w: analysis_pb2.GetAnalysisRequest(id=w.analysis_id)),
        "analyses.read",
    ),
    "ListAnalyses": (
        ai_call("ListAnalyses", lambda w: analysis_pb2.ListAnalysesRequest(user_id=_owner_id(w))),
        "analyses.read",
    ),
    "BatchAnalyzeTexts": (
        ai_call(
            "BatchAnalyzeTexts",
            lambda w: analysis_pb2.BatchAnalyzeTextsRequest(texts=["Nice."], user_id=_owner_id(w)),
        ),
        "analyses.write",
    ),
    "GetOperation": (
        operations_call(
            "GetOperation", lambda w: operations_pb2.GetOperationRequest(name=w.operation_name)
        ),
        "analyses.read",
    ),
    "WaitOperation": (
        operations_call(
            "WaitOperation",
            lambda w: operations_pb2.WaitOperationRequest(
                name=w.operation_name, timeout=duration_pb2.Duration(nanos=10_000_000)
            ),
        ),
        "analyses.read",
    ),
    "ListOperations": (
        operations_call(
            "ListOperations",
            lambda w: operations_pb2.ListOperationsRequest(filter=f'user_id="{_owner_id(w)}"'),
        ),
        "analyses.read",
    ),
    "CancelOperation": (
        operations_call(
            "CancelOperation",
            lambda w: operations_pb2.CancelOperationRequest(name=w.operation_name),
        ),
        "analyses.write",
    ),
}

UNAUTH = {
    "none": "UNAUTHENTICATED CREDENTIALS_MISSING",
    "expired": "UNAUTHENTICATED TOKEN_EXPIRED",
    "forged": "UNAUTHENTICATED UNKNOWN_SIGNING_KEY",
    "ended": "UNAUTHENTICATED SESSION_ENDED",
}
ADMIN_REQUIRED = "PERMISSION_DENIED ADMIN_REQUIRED"
NOT_OWNER = "PERMISSION_DENIED NOT_ACCOUNT_OWNER"
NOT_ANALYSIS_OWNER = "PERMISSION_DENIED NOT_ANALYSIS_OWNER"
SCOPE = "PERMISSION_DENIED SCOPE_REQUIRED"
HIDDEN = "NOT_FOUND"

# method -> outcome per caller (owner, other, admin, service, scoped); every method
# refuses none/expired/forged/ended as UNAUTH says.
EXPECTED: dict[str, tuple[Outcome, Outcome, Outcome, Outcome, Outcome]] = {
    "CreateUser": (ADMIN_REQUIRED, ADMIN_REQUIRED, OK, SCOPE, OK),
    "AuthenticateUser": (SCOPE, SCOPE, SCOPE, SCOPE, OK),
    "GetUser": (OK, OK, OK, OK, OK),
    "BatchGetUsers": (OK, OK, OK, OK, OK),
    "ListUsers": (ADMIN_REQUIRED, ADMIN_REQUIRED, OK, SCOPE, OK),
    "UpdateUser": (OK, NOT_OWNER, NOT_OWNER, SCOPE, OK),
    "ChangePassword": (OK, NOT_OWNER, NOT_OWNER, SCOPE, OK),
    "DeleteUser": (OK, NOT_OWNER, OK, SCOPE, OK),
    "UndeleteUser": (ADMIN_REQUIRED, ADMIN_REQUIRED, OK, SCOPE, OK),
    "IssueToken": (SCOPE, SCOPE, SCOPE, SCOPE, OK),
    # Another's session is as unknown as a made-up id.
    "BatchGetSessions": (OK, HIDDEN, OK, HIDDEN, OK),
    "RevokeToken": (OK, OK, OK, OK, OK),
    "AnalyzeText": (OK, NOT_ANALYSIS_OWNER, NOT_ANALYSIS_OWNER, SCOPE, OK),
    "StreamAnalyzeText": (OK, NOT_ANALYSIS_OWNER, NOT_ANALYSIS_OWNER, SCOPE, OK),
    # Another's analysis is as unknown as a made-up id.
    "GetAnalysis": (OK, HIDDEN, OK, HIDDEN, OK),
    "ListAnalyses": (OK, NOT_ANALYSIS_OWNER, OK, SCOPE, OK),
    "BatchAnalyzeTexts": (OK, NOT_ANALYSIS_OWNER, NOT_ANALYSIS_OWNER, SCOPE, OK),
    # Another's operation is as unknown as a made-up id.
    "GetOperation": (OK, HIDDEN, OK, HIDDEN, OK),
    "WaitOperation": (OK, HIDDEN, OK, HIDDEN, OK),
    "ListOperations": (OK, NOT_ANALYSIS_OWNER, OK, SCOPE, OK),
    # An admin reads any operation, but cancels only for themself.
    "CancelOperation": (OK, HIDDEN, NOT_ANALYSIS_OWNER, HIDDEN, OK),
}
CALLERS = ("owner", "other", "admin", "service", "scoped")

CALLERS_IN_ORDER = (*UNAUTH, *CALLERS)


def outcome_of(error: grpc.aio.AioRpcError | None) -> Outcome:
    if error is None:
        return OK
    code = error.code()
    if code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        if code in (grpc.StatusCode.NOT_FOUND,) and reason(error) != "USER_NOT_FOUND":
            return HIDDEN
        # Let through by the policy, refused by the data (a wrong password, an account
        # that is not deleted, ...).
        return OK
    if reason(error) == "BAD_CREDENTIALS":
        return OK  # let through, and the (made-up) password checked
    return f"{code.name} {reason(error)}"


def test_the_tables_cover_every_method_of_both_services() -> None:
    descriptors = (
        users_pb2.DESCRIPTOR,
        auth_pb2.DESCRIPTOR,
        analysis_pb2.DESCRIPTOR,
        operations_pb2.DESCRIPTOR,
    )
    methods = {m.name for d in descriptors for s in d.services_by_name.values() for m in s.methods}
    # GetJsonWebKeySet needs no token: tested below. DeleteOperation is not served.
    assert methods - {"GetJsonWebKeySet", "DeleteOperation"} == set(EXPECTED) == set(CALLS)


@pytest.mark.parametrize("method", list(EXPECTED))
async def test_who_may_call_what(world: World, method: str) -> None:
    """One method, called by each kind of caller; the outcomes, as a table row."""
    call, scope = CALLS[method]
    expected = {**UNAUTH, **dict(zip(CALLERS, EXPECTED[method], strict=True))}
    seen: dict[str, Outcome] = {}
    for caller in CALLERS_IN_ORDER:
        await world.fresh_owner()
        authorization = await bearer_of(world, caller, scope)
        metadata = (("authorization", authorization),) if authorization is not None else ()
        error = None
        try:
            await call(world, metadata)
        except grpc.aio.AioRpcError as exc:
            error = exc
        seen[caller] = outcome_of(error)
    assert seen == expected


async def test_the_keys_need_no_token(world: World) -> None:
    keys = await world.auth.GetJsonWebKeySet(auth_pb2.GetJsonWebKeySetRequest())
    assert [k.alg for k in keys.keys] == ["EdDSA"]


async def test_others_see_only_the_public_profile(world: World) -> None:
    mine = (("authorization", user_bearer(world.other)),)
    seen = await world.users.GetUser(
        users_pb2.GetUserRequest(id=world.owner.user_id), metadata=mine
    )
    assert seen.view == users_pb2.USER_VIEW_PUBLIC
    assert (seen.email, seen.etag) == ("", "")
    full = await world.users.GetUser(
        users_pb2.GetUserRequest(id=world.owner.user_id),
        metadata=(("authorization", service_bearer(["users.read"])),),
    )
    assert full.view == users_pb2.USER_VIEW_FULL and full.email


async def test_a_service_acts_only_for_accounts_that_exist(world: World) -> None:
    writer = (("authorization", service_bearer(["analyses.write"])),)
    nobody = analysis_pb2.AnalyzeTextRequest(text="Nice.", user_id=str(uuid.uuid4()))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.ai.AnalyzeText(nobody, metadata=writer)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(raised.value) == "USER_NOT_FOUND"
    # A service names the user: it has no account of its own to act for.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.ai.AnalyzeText(analysis_pb2.AnalyzeTextRequest(text="Nice."), metadata=writer)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_users_own_analysis_needs_no_user_id_and_a_deleted_account_ends_it(
    world: World,
) -> None:
    mine = (("authorization", user_bearer(world.other)),)
    made = await world.ai.AnalyzeText(analysis_pb2.AnalyzeTextRequest(text="Hm."), metadata=mine)
    assert made.user_id == world.other.user_id
    await world.users.DeleteUser(
        users_pb2.DeleteUserRequest(id=world.other.user_id), metadata=SETUP
    )
    for call in (
        world.ai.ListAnalyses(analysis_pb2.ListAnalysesRequest(), metadata=mine),
        world.users.GetUser(users_pb2.GetUserRequest(id=world.other.user_id), metadata=mine),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert (raised.value.code(), reason(raised.value)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "SESSION_ENDED",
        )
