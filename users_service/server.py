"""Builds and runs the users service: engine, schema check, servicer, gRPC server."""

from __future__ import annotations

from functools import partial

from servicekit.database import create_engine
from servicekit.migrations import check_at_head
from servicekit.server import Service, build_server, serve_until_signalled
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from users_service.migrations import MIGRATIONS
from users_service.servicer import UsersServicer
from users_service.settings import UsersSettings

SERVICE_NAME = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name


async def serve(settings: UsersSettings) -> None:
    engine = create_engine(settings, application_name="tandem-users")
    try:
        await check_at_head(engine, MIGRATIONS, "python -m users_service migrate")
        servicer = UsersServicer()  # type: ignore[abstract]
        server = build_server(
            settings.addr,
            [
                Service(
                    SERVICE_NAME,
                    partial(users_pb2_grpc.add_UsersServiceServicer_to_server, servicer),
                )
            ],
            access_log=settings.access_log,
        )
        await serve_until_signalled(server, settings.shutdown_grace_seconds)
    finally:
        await engine.dispose()
