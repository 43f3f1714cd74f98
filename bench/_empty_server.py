"""The empty-RPC baseline: users.v1.UsersService whose GetUser returns a constant User.

Built with servicekit.server.build_server, so it has the services' interceptor,
options, health and reflection, and run like them (uvloop, serve_until_signalled):
what it serves per second is the ceiling of a grpc.aio unary call through Tandem's
plumbing on this machine, without any database or domain work.

    python bench/_empty_server.py [host:port]   (logs "serving ... on host:port")
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from functools import partial
from typing import Any

from servicekit.logs import configure_logging
from servicekit.server import Service, build_server, serve_until_signalled
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc

SERVICE_NAME = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name


def _constant_user() -> users_pb2.User:
    # The size of a real account, so the reply costs what a GetUser reply costs on the wire.
    user = users_pb2.User(
        id="3f2b8c1e-6a7d-4e59-9b0c-2d1e4f5a6b7c",
        email="maria.garcia482913@example.org",
        name="Maria Garcia",
        etag="0123456789abcdef",
    )
    user.create_time.FromDatetime(datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=UTC))
    user.update_time.FromDatetime(datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=UTC))
    return user


class EmptyUsers(users_pb2_grpc.UsersServiceServicer):
    def __init__(self) -> None:
        self._user = _constant_user()

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> users_pb2.User:  # noqa: N802
        return self._user


async def serve(addr: str) -> None:
    # The other methods keep the generated UNIMPLEMENTED answers.
    servicer = EmptyUsers()  # type: ignore[abstract]
    register = partial(users_pb2_grpc.add_UsersServiceServicer_to_server, servicer)
    server = build_server(addr, [Service(SERVICE_NAME, register)], access_log=False)
    await serve_until_signalled(server, grace=1.0)


def main() -> None:
    configure_logging("INFO")
    addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:0"
    # On the loop servicekit.cli runs the services on.
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(serve(addr))
    else:
        uvloop.run(serve(addr))


if __name__ == "__main__":
    main()
