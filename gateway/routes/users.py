"""`/v1/users`: sign-up, reading, changing, deleting and undeleting accounts.

Who may do what is the users service's decision (it reads the caller's forwarded
token); these routes only translate, and map PERMISSION_DENIED to 403.
"""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import Header, Query, Request, Response
from google.protobuf import field_mask_pb2

from gateway import convert
from gateway.client_address import ClientMetadata
from gateway.deps import (
    CurrentUser,
    PageSize,
    PageToken,
    RuntimeDep,
    UserId,
    UsersUpstream,
)
from gateway.idempotency import IdempotencyKey, call_keyed, request_id_for
from gateway.problems import ProblemError, problem_responses
from gateway.refusals import SIGN_UP
from gateway.routes import resource_router
from gateway.schemas import PasswordChange, PublicProfile, User, UserCreate, UserPage, UserUpdate
from gateway.upstream_errors import UpstreamError
from tandem_protos.users.v1 import users_pb2

router = resource_router(prefix="/v1/users", tags=["users"])

_AUTHED = (401, 503, 504)
_ETAG = {
    "ETag": {"description": "the account's version, for If-Match", "schema": {"type": "string"}}
}
# Account data is personal: no cache (a browser's, a proxy's) is to keep it.
_NO_STORE = {"Cache-Control": "no-store"}


@router.post(
    "",
    status_code=201,
    response_model=User,
    summary="Sign up",
    description=(
        "409 when a live account has the email, or while an earlier request with the same "
        "`Idempotency-Key` still runs. A retry with the key answers the account that the "
        "first request made, as it is now."
    ),
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}}, **_ETAG}},
        **problem_responses(400, 409, 413, 415, 422, 429, 503, 504),
    },
)
async def create_user(
    body: UserCreate,
    runtime: RuntimeDep,
    client: ClientMetadata,
    http: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    request = users_pb2.CreateUserRequest(
        user=users_pb2.User(email=body.email, name=body.name),
        password=body.password,
        request_id=request_id_for(idempotency_key),
    )
    users = runtime.upstreams.users
    # Sign-ups are limited per client address, which the users service takes from us; a
    # refusal is kept until it runs out (gateway.refusals).
    await runtime.refusals.check(SIGN_UP, client, "", http.scope)
    try:
        created = await call_keyed(users, users.stub.CreateUser, request, metadata=client)
    except UpstreamError as exc:
        runtime.refusals.remember_for(SIGN_UP, client, "", exc)
        raise
    headers = {
        "Location": f"/v1/users/{created.id}",
        **convert.etag_header(created.etag),
        **_NO_STORE,
    }
    return convert.json_response(convert.user(created), status_code=201, headers=headers)


@router.get(
    "/me",
    response_model=User,
    summary="The caller's account",
    responses={200: {"headers": _ETAG}, **problem_responses(*_AUTHED)},
)
async def get_me(caller: CurrentUser, runtime: RuntimeDep) -> Response:
    me = await runtime.user_reader.get(caller.user_id, caller.authorization)
    return _user_response(me)


@router.get(
    "/{id}",
    response_model=User | PublicProfile,
    summary="An account",
    description=(
        "One's own account (any account, for an admin) in full; another live account as "
        "its public profile: `id` and `name`."
    ),
    responses={200: {"headers": _ETAG}, **problem_responses(400, *_AUTHED, 404)},
)
async def get_user(id: UserId, caller: CurrentUser, runtime: RuntimeDep) -> Response:
    return _user_response(await runtime.user_reader.get(str(id), caller.authorization))


@router.get(
    "",
    response_model=UserPage,
    summary="List accounts, oldest first (admins only)",
    responses=problem_responses(400, *_AUTHED, 403),
)
async def list_users(
    caller: CurrentUser,
    users: UsersUpstream,
    page_size: PageSize = None,
    page_token: PageToken = None,
    show_deleted: Annotated[bool, Query(description="include deleted accounts")] = False,
) -> Response:
    request = users_pb2.ListUsersRequest(
        page_size=page_size or 0, page_token=page_token or "", show_deleted=show_deleted
    )
    page = await users.call(users.stub.ListUsers, request, authorization=caller.authorization)
    content = {
        "users": [convert.user(u) for u in page.users],
        "next_page_token": page.next_page_token,
    }
    return convert.json_response(content, headers=_NO_STORE)


@router.patch(
    "/{id}",
    response_model=User,
    summary="Change one's name or email",
    description=(
        "Changes only the fields present in the body; changing `email` needs "
        "`current_password` too. With `If-Match` set to the account's ETag, the change "
        "happens only if nobody changed the account since (412 otherwise)."
    ),
    responses={
        200: {"headers": _ETAG},
        **problem_responses(400, *_AUTHED, 403, 404, 409, 412, 413, 415),
    },
)
async def update_user(
    id: UserId,
    body: UserUpdate,
    caller: CurrentUser,
    users: UsersUpstream,
    if_match: Annotated[
        str | None, Header(max_length=256, description="the ETag of the account as last read")
    ] = None,
) -> Response:
    fields = sorted(body.model_fields_set - {"current_password"})
    changes = users_pb2.User(id=str(id), etag=_etag_from(if_match))
    if "name" in fields:
        changes.name = body.name
    if "email" in fields:
        changes.email = body.email
    request = users_pb2.UpdateUserRequest(
        user=changes,
        update_mask=field_mask_pb2.FieldMask(paths=fields),
        current_password=body.current_password,
    )
    try:
        updated = await users.call(
            users.stub.UpdateUser, request, authorization=caller.authorization
        )
    except UpstreamError as exc:
        if exc.grpc_code == grpc.StatusCode.ABORTED and exc.reason == "ETAG_MISMATCH":
            raise ProblemError(412, exc.detail, code=exc.grpc_code) from None
        raise
    return _user_response(updated)


@router.put(
    "/{id}/password",
    status_code=204,
    summary="Change one's password",
    description="Ends every other session of the account; the caller's own goes on.",
    responses=problem_responses(400, *_AUTHED, 403, 404, 413, 415),
)
async def change_password(
    id: UserId, body: PasswordChange, caller: CurrentUser, runtime: RuntimeDep
) -> Response:
    users = runtime.upstreams.users
    request = users_pb2.ChangePasswordRequest(
        id=str(id), current_password=body.current_password, new_password=body.new_password
    )
    await users.call(users.stub.ChangePassword, request, authorization=caller.authorization)
    runtime.sessions.forget_user(str(id), keep=caller.session_id)
    return Response(status_code=204)


@router.delete(
    "/{id}",
    status_code=204,
    summary="Delete an account (one's own; any, for an admin)",
    description="Soft-deletes the account and ends all its sessions: its tokens stop working.",
    responses=problem_responses(400, *_AUTHED, 403, 404),
)
async def delete_user(id: UserId, caller: CurrentUser, runtime: RuntimeDep) -> Response:
    users = runtime.upstreams.users
    request = users_pb2.DeleteUserRequest(id=str(id))
    await users.call(users.stub.DeleteUser, request, authorization=caller.authorization)
    runtime.sessions.forget_user(str(id))
    return Response(status_code=204)


@router.post(
    "/{id}:undelete",
    response_model=User,
    summary="Restore a deleted account (admins only)",
    description="AIP-136 custom method. The account's ended sessions stay ended.",
    responses={200: {"headers": _ETAG}, **problem_responses(400, *_AUTHED, 403, 404, 409)},
)
async def undelete_user(id: UserId, caller: CurrentUser, users: UsersUpstream) -> Response:
    request = users_pb2.UndeleteUserRequest(id=str(id))
    restored = await users.call(
        users.stub.UndeleteUser, request, authorization=caller.authorization
    )
    return _user_response(restored)


def _user_response(message: users_pb2.User, *, status_code: int = 200) -> Response:
    headers = {**convert.etag_header(message.etag), **_NO_STORE}
    return convert.json_response(convert.user(message), status_code=status_code, headers=headers)


def _etag_from(if_match: str | None) -> str:
    """The etag an If-Match header names; empty for none or `*` (any version)."""
    if if_match is None or if_match.strip() == "*":
        return ""
    value = if_match.strip()
    if "," in value:
        raise ProblemError(400, "if-match: give one ETag", errors=[("if-match", "give one ETag")])
    value = value.removeprefix("W/")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not value:
        raise ProblemError(400, "if-match: the ETag is empty", errors=[("if-match", "is empty")])
    return value
