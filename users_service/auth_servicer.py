"""gRPC adapter of the identity provider (`users.v1.AuthService`): protobuf in and out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from servicekit.callers import CallerResolver
from servicekit.errors import InvalidArgument
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc
from users_service.client_address import client_address, peer_address
from users_service.policy import Action
from users_service.service_accounts import ServiceAccounts
from users_service.sessions import Credentials, Sessions
from users_service.sessions_repository import Session


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        sessions: Sessions,
        service_accounts: ServiceAccounts,
        callers: CallerResolver,
        jwks: Callable[[], dict[str, Any]],
    ) -> None:
        self._sessions = sessions
        self._service_accounts = service_accounts
        self._callers = callers
        self._jwks = jwks

    async def IssueToken(  # noqa: N802
        self, request: auth_pb2.IssueTokenRequest, context: Any
    ) -> auth_pb2.IssueTokenResponse:
        grant = request.WhichOneof("grant")
        if grant == "client_credentials":
            # The grant is the credential: no bearer token is asked for.
            issued = await self._service_accounts.grant(
                request.client_credentials.client_id,
                request.client_credentials.client_secret,
                client=peer_address(context),
            )
            return auth_pb2.IssueTokenResponse(
                access_token=issued.access_token,
                token_type="Bearer",  # noqa: S106 - a scheme name
                expires_in=issued.expires_in,
                scope=" ".join(sorted(issued.scopes)),
            )
        if grant == "password":
            caller = await self._callers.caller(context)
            credentials = await self._sessions.password_grant(
                email=request.password.email,
                password=request.password.password,
                caller=caller,
                client=client_address(context, caller, Action.LOG_IN),
            )
        elif grant == "refresh_token":
            credentials = await self._sessions.refresh_grant(
                request.refresh_token.refresh_token, await self._callers.caller(context)
            )
        else:
            raise InvalidArgument.field(
                "grant", "give a password, refresh_token or client_credentials grant"
            )
        return _credentials(credentials)

    async def RevokeToken(  # noqa: N802
        self, request: auth_pb2.RevokeTokenRequest, context: Any
    ) -> auth_pb2.RevokeTokenResponse:
        # Any authenticated caller: holding a token is the right to end it (RFC 7009).
        await self._callers.caller(context)
        if not request.token:
            raise InvalidArgument.field("token", "is required")
        ended = await self._sessions.revoke(
            request.token,
            refresh_first=request.token_type_hint != auth_pb2.TOKEN_TYPE_HINT_ACCESS_TOKEN,
        )
        if ended is None:
            return auth_pb2.RevokeTokenResponse()
        return auth_pb2.RevokeTokenResponse(
            session_id=str(ended.session_id), user_id=str(ended.user_id)
        )

    async def GetJsonWebKeySet(  # noqa: N802
        self, request: auth_pb2.GetJsonWebKeySetRequest, context: Any
    ) -> auth_pb2.JsonWebKeySet:
        keys = [auth_pb2.JsonWebKey(**key) for key in self._jwks()["keys"]]
        return auth_pb2.JsonWebKeySet(keys=keys)

    async def BatchGetSessions(  # noqa: N802
        self, request: auth_pb2.BatchGetSessionsRequest, context: Any
    ) -> auth_pb2.BatchGetSessionsResponse:
        caller = await self._callers.caller(context)
        found = await self._sessions.get_many(request.ids, caller)
        return auth_pb2.BatchGetSessionsResponse(sessions=[_session(s) for s in found])


def _credentials(credentials: Credentials) -> auth_pb2.IssueTokenResponse:
    message = auth_pb2.IssueTokenResponse(
        access_token=credentials.access_token,
        token_type="Bearer",  # noqa: S106 - a scheme name
        expires_in=credentials.expires_in,
        refresh_token=credentials.refresh_token,
        session_id=str(credentials.session_id),
        user_id=str(credentials.user_id),
    )
    message.refresh_token_expire_time.FromDatetime(credentials.refresh_expire_time)
    return message


def _session(session: Session) -> auth_pb2.Session:
    message = auth_pb2.Session(id=str(session.id), user_id=str(session.user_id))
    message.create_time.FromDatetime(session.create_time)
    message.expire_time.FromDatetime(session.expire_time)
    if session.end_time is not None:
        message.end_time.FromDatetime(session.end_time)
    return message
