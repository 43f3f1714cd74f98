"""`/v1/auth/token`: the OAuth2 password grant, answering a bearer JWT."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import APIRouter, Form, Response

from gateway import convert
from gateway.deps import TOKEN_URL, RuntimeDep
from gateway.problems import problem_responses, unauthorized
from gateway.schemas import LoginForm, Token
from gateway.upstreams import UpstreamError
from tandem_protos.users.v1 import users_pb2

router = APIRouter(tags=["auth"])

# One answer for every failed login, so a caller cannot tell which part was wrong.
BAD_CREDENTIALS = "the email or password is incorrect"
_LOGIN_FAILED = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
)


@router.post(
    TOKEN_URL,
    response_model=Token,
    summary="Log in",
    description="OAuth2 password grant: `username` is the account's email.",
    responses=problem_responses(400, 401, 413, 503, 504),
)
async def issue_token(form: Annotated[LoginForm, Form()], runtime: RuntimeDep) -> Response:
    users = runtime.upstreams.users
    request = users_pb2.AuthenticateUserRequest(email=form.username, password=form.password)
    try:
        user = await users.call(users.stub.AuthenticateUser, request)
    except UpstreamError as exc:
        if exc.grpc_code in _LOGIN_FAILED:
            raise unauthorized(BAD_CREDENTIALS) from None
        raise
    runtime.liveness.mark_live(user.id)
    issued = runtime.tokens.issue(user.id)
    content = {
        "access_token": issued.token,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
    }
    # RFC 6749 §5.1: responses carrying tokens are not to be cached.
    return convert.json_response(
        content, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )
