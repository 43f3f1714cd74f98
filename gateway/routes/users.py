"""`/v1/users`: sign-up, reading accounts, and changing or deleting one's own."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import APIRouter, Header, Response
from google.protobuf import field_mask_pb2

from gateway import convert
from gateway.deps import (
    ACCOUNT_GONE,
    GONE,
    CurrentUser,
    OwnAccount,
    PageSize,
    PageToken,
    RuntimeDep,
    TokenSubject,
    UserId,
    UsersUpstream,
)
from gateway.problems import ProblemError, problem_responses, unauthorized
from gateway.schemas import PasswordChange, User, UserCreate, UserPage, UserUpdate
from gateway.upstreams import UpstreamError
from tandem_protos.users.v1 import users_pb2

router = APIRouter(prefix="/v1/users", tags=["users"])

_AUTHED = (401, 503, 504)
_ETAG = {
    "ETag": {"description": "the account's version, for If-Match", "schema": {"type": "string"}}
}


@router.post(
    "",
    status_code=201,
    response_model=User,
    summary="Sign up",
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}}, **_ETAG}},
        **problem_responses(400, 409, 413, 503, 504),
    },
)
async def create_user(body: UserCreate, users: UsersUpstream) -> Response:
    request = users_pb2.CreateUserRequest(
        user=users_pb2.User(email=body.email, name=body.name), password=body.password
    )
    created = await users.call(users.stub.CreateUser, request)
    headers = {"Location": f"/v1/users/{created.id}", **convert.etag_header(created.etag)}
    return convert.json_response(convert.user(created), status_code=201, headers=headers)


@router.get(
    "/me",
    response_model=User,
    summary="The caller's account",
    responses={200: {"headers": _ETAG}, **problem_responses(*_AUTHED)},
)
async def get_me(subject: TokenSubject, runtime: RuntimeDep) -> Response:
    try:
        me = await runtime.user_reader.get(subject)
    except UpstreamError as exc:
        if exc.grpc_code in GONE:
            runtime.liveness.forget(subject)
            raise unauthorized(ACCOUNT_GONE) from None
        raise
    runtime.liveness.mark_live(subject)
    return convert.json_response(convert.user(me), headers=convert.etag_header(me.etag))


@router.get(
    "/{id}",
    response_model=User,
    summary="An account",
    responses={200: {"headers": _ETAG}, **problem_responses(400, *_AUTHED, 404)},
)
async def get_user(id: UserId, caller: CurrentUser, runtime: RuntimeDep) -> Response:
    found = await runtime.user_reader.get(str(id))
    return convert.json_response(convert.user(found), headers=convert.etag_header(found.etag))


@router.get(
    "",
    response_model=UserPage,
    summary="List accounts, oldest first",
    responses=problem_responses(400, *_AUTHED),
)
async def list_users(
    caller: CurrentUser,
    users: UsersUpstream,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> Response:
    request = users_pb2.ListUsersRequest(page_size=page_size or 0, page_token=page_token or "")
    page = await users.call(users.stub.ListUsers, request)
    content = {
        "users": [convert.user(u) for u in page.users],
        "next_page_token": page.next_page_token,
    }
    return convert.json_response(content)


@router.patch(
    "/{id}",
    response_model=User,
    summary="Change one's name or email",
    description=(
        "Changes only the fields present in the body. With `If-Match` set to the "
        "account's ETag, the change happens only if nobody changed the account since "
        "(412 otherwise)."
    ),
    responses={
        200: {"headers": _ETAG},
        **problem_responses(400, *_AUTHED, 403, 404, 409, 412, 413),
    },
)
async def update_user(
    body: UserUpdate,
    caller: OwnAccount,
    users: UsersUpstream,
    if_match: Annotated[
        str | None, Header(max_length=256, description="the ETag of the account as last read")
    ] = None,
) -> Response:
    fields = sorted(body.model_fields_set)
    changes = users_pb2.User(id=caller, etag=_etag_from(if_match))
    if "name" in fields:
        changes.name = body.name
    if "email" in fields:
        changes.email = body.email
    request = users_pb2.UpdateUserRequest(
        user=changes, update_mask=field_mask_pb2.FieldMask(paths=fields)
    )
    try:
        updated = await users.call(users.stub.UpdateUser, request)
    except UpstreamError as exc:
        if exc.grpc_code == grpc.StatusCode.ABORTED and exc.reason == "ETAG_MISMATCH":
            raise ProblemError(412, exc.detail, code=exc.grpc_code) from None
        raise
    return convert.json_response(convert.user(updated), headers=convert.etag_header(updated.etag))


@router.put(
    "/{id}/password",
    status_code=204,
    summary="Change one's password",
    responses=problem_responses(400, *_AUTHED, 403, 404, 413),
)
async def change_password(
    body: PasswordChange, caller: OwnAccount, users: UsersUpstream
) -> Response:
    request = users_pb2.ChangePasswordRequest(
        id=caller, current_password=body.current_password, new_password=body.new_password
    )
    await users.call(users.stub.ChangePassword, request)
    return Response(status_code=204)


@router.delete(
    "/{id}",
    status_code=204,
    summary="Delete one's account",
    description="Soft-deletes the account; its access tokens stop working.",
    responses=problem_responses(400, *_AUTHED, 403, 404),
)
async def delete_user(caller: OwnAccount, runtime: RuntimeDep) -> Response:
    users = runtime.upstreams.users
    await users.call(users.stub.DeleteUser, users_pb2.DeleteUserRequest(id=caller))
    runtime.liveness.forget(caller)
    return Response(status_code=204)


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
