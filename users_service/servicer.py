"""gRPC adapter of the users service: protobuf in, `Accounts` call, protobuf out."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from servicekit.callers import CallerResolver
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from users_service.accounts import Accounts, UserChanges
from users_service.client_address import client_address
from users_service.domain import User
from users_service.policy import Action, Role, View

_ROLES = {Role.USER.value: users_pb2.ROLE_USER, Role.ADMIN.value: users_pb2.ROLE_ADMIN}


class UsersServicer(users_pb2_grpc.UsersServiceServicer):
    def __init__(self, accounts: Accounts, callers: CallerResolver) -> None:
        self._accounts = accounts
        self._callers = callers

    async def CreateUser(  # noqa: N802
        self, request: users_pb2.CreateUserRequest, context: Any
    ) -> users_pb2.User:
        caller = await self._callers.caller(context)
        user = await self._accounts.create(
            email=request.user.email,
            name=request.user.name,
            password=request.password,
            caller=caller,
            request_id=request.request_id,
            client=client_address(context, caller, Action.SIGN_UP),
        )
        return to_proto(user)

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> users_pb2.User:  # noqa: N802
        caller = await self._callers.caller(context)
        return to_proto(*await self._accounts.get(request.id, caller))

    async def BatchGetUsers(  # noqa: N802
        self, request: users_pb2.BatchGetUsersRequest, context: Any
    ) -> users_pb2.BatchGetUsersResponse:
        caller = await self._callers.caller(context)
        users = await self._accounts.get_many(request.ids, caller)
        return users_pb2.BatchGetUsersResponse(users=[to_proto(u, v) for u, v in users])

    async def ListUsers(  # noqa: N802
        self, request: users_pb2.ListUsersRequest, context: Any
    ) -> users_pb2.ListUsersResponse:
        page = await self._accounts.list(
            size=request.page_size,
            token=request.page_token,
            show_deleted=request.show_deleted,
            caller=await self._callers.caller(context),
        )
        return users_pb2.ListUsersResponse(
            users=[to_proto(u) for u in page.items], next_page_token=page.next_page_token
        )

    async def UpdateUser(  # noqa: N802
        self, request: users_pb2.UpdateUserRequest, context: Any
    ) -> users_pb2.User:
        changes = UserChanges(
            id=request.user.id,
            name=request.user.name,
            email=request.user.email,
            etag=request.user.etag,
            mask_paths=list(request.update_mask.paths),
            current_password=request.current_password,
        )
        caller = await self._callers.caller(context)
        return to_proto(await self._accounts.update(changes, caller))

    async def DeleteUser(  # noqa: N802
        self, request: users_pb2.DeleteUserRequest, context: Any
    ) -> users_pb2.User:
        caller = await self._callers.caller(context)
        return to_proto(await self._accounts.delete(request.id, caller))

    async def UndeleteUser(  # noqa: N802
        self, request: users_pb2.UndeleteUserRequest, context: Any
    ) -> users_pb2.User:
        caller = await self._callers.caller(context)
        return to_proto(await self._accounts.undelete(request.id, caller))

    async def ChangePassword(  # noqa: N802
        self, request: users_pb2.ChangePasswordRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._accounts.change_password(
            request.id,
            current=request.current_password,
            new=request.new_password,
            caller=await self._callers.caller(context),
        )
        return empty_pb2.Empty()

    async def AuthenticateUser(  # noqa: N802
        self, request: users_pb2.AuthenticateUserRequest, context: Any
    ) -> users_pb2.User:
        caller = await self._callers.caller(context)
        user = await self._accounts.authenticate(
            email=request.email,
            password=request.password,
            caller=caller,
            client=client_address(context, caller, Action.LOG_IN),
        )
        return to_proto(user)


def to_proto(user: User, view: View = View.FULL) -> users_pb2.User:
    if view is View.PUBLIC:
        return users_pb2.User(id=str(user.id), name=user.name, view=users_pb2.USER_VIEW_PUBLIC)
    message = users_pb2.User(
        id=str(user.id),
        email=user.email,
        name=user.name,
        etag=user.etag,
        role=_ROLES.get(user.role, users_pb2.ROLE_UNSPECIFIED),
        view=users_pb2.USER_VIEW_FULL,
    )
    message.create_time.FromDatetime(user.create_time)
    message.update_time.FromDatetime(user.update_time)
    if user.delete_time is not None:
        message.delete_time.FromDatetime(user.delete_time)
    return message
