"""What the users service does around its database and its secrets."""

from __future__ import annotations

import logging
import uuid

import grpc
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.support.rpc import rpc_error
from tests.support.servers import channel_to, migrate_users, running_users, users_settings
from tests.support.tcp_proxy import TcpProxy
from users_service.models import UserRow

PASSWORD = "correct horse battery"


async def stored_hash(database_url: str, user_id: str) -> str:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            statement = select(UserRow.password_hash).where(UserRow.id == uuid.UUID(user_id))
            return str((await connection.execute(statement)).scalar_one())
    finally:
        await engine.dispose()


async def test_a_hash_with_older_parameters_is_upgraded_at_login(users_db: str) -> None:
    async with running_users(users_settings(users_db)) as address, channel_to(address) as channel:
        stub = users_pb2_grpc.UsersServiceStub(channel)
        user = await stub.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email="old@example.com", name="Old"), password=PASSWORD
            )
        )
    old = await stored_hash(users_db, user.id)
    assert old.startswith("$argon2id$v=19$m=8192,t=1,p=1$")

    stronger = users_settings(users_db, argon2_memory_kib=12288, argon2_time_cost=2)
    async with running_users(stronger) as address, channel_to(address) as channel:
        stub = users_pb2_grpc.UsersServiceStub(channel)
        login = users_pb2.AuthenticateUserRequest(email="old@example.com", password=PASSWORD)
        assert (await stub.AuthenticateUser(login)).id == user.id
        new = await stored_hash(users_db, user.id)
        assert new.startswith("$argon2id$v=19$m=12288,t=2,p=1$")
        # The upgraded hash still opens the account; a wrong password still does not.
        assert (await stub.AuthenticateUser(login)).id == user.id
        assert await stored_hash(users_db, user.id) == new
        wrong = users_pb2.AuthenticateUserRequest(email="old@example.com", password="nope nope")
        assert (await rpc_error(stub.AuthenticateUser(wrong))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )


async def test_passwords_and_hashes_never_reach_the_logs(
    users_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret, new_secret = "s3cret-Passw0rd!", "n3w-s3cret-Passw0rd!"
    settings = users_settings(users_db, access_log=True)
    async with running_users(settings) as address, channel_to(address) as channel:
        stub = users_pb2_grpc.UsersServiceStub(channel)
        user = await stub.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email="log@example.com", name="Log"), password=secret
            )
        )
        await stub.AuthenticateUser(
            users_pb2.AuthenticateUserRequest(email="log@example.com", password=secret)
        )
        await rpc_error(
            stub.AuthenticateUser(
                users_pb2.AuthenticateUserRequest(email="log@example.com", password=new_secret)
            )
        )
        await stub.ChangePassword(
            users_pb2.ChangePasswordRequest(
                id=user.id, current_password=secret, new_password=new_secret
            )
        )
    password_hash = await stored_hash(users_db, user.id)
    logged = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert "/users.v1.UsersService/CreateUser OK" in logged  # the log was captured
    for forbidden in (secret, new_secret, password_hash, password_hash.split("$")[-1]):
        assert forbidden not in logged


@pytest.mark.postgres
async def test_database_outage_is_unavailable_and_recovers_without_restart(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate_users(postgres_url)
    target = make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    port = await proxy.up()
    through_proxy = target.set(port=port).render_as_string(hide_password=False)
    settings = users_settings(through_proxy, db_connect_timeout_seconds=2)
    async with running_users(settings) as address, channel_to(address) as channel:
        stub = users_pb2_grpc.UsersServiceStub(channel)
        user = await stub.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email="up@example.com", name="Up"), password=PASSWORD
            )
        )
        get = users_pb2.GetUserRequest(id=user.id)

        await proxy.down()
        for _ in range(3):  # every call while it is down, not just the first
            error = await rpc_error(stub.GetUser(get, timeout=10))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details() == "the users database is unavailable; retry shortly"
        create = users_pb2.CreateUserRequest(
            user=users_pb2.User(email="down@example.com", name="Down"), password=PASSWORD
        )
        assert (await rpc_error(stub.CreateUser(create, timeout=10))).code() == (
            grpc.StatusCode.UNAVAILABLE
        )

        await proxy.up()
        assert (await stub.GetUser(get, timeout=10)).id == user.id
        assert (await stub.CreateUser(create, timeout=10)).email == "down@example.com"
    await proxy.down()
    # The outage is two WARNING lines, its cause and its end, not one per failed call.
    said = [r.getMessage() for r in caplog.records if r.name == "servicekit.database"]
    assert [r.levelno for r in caplog.records if r.name == "servicekit.database"] == [
        logging.WARNING,
        logging.WARNING,
    ], said
    assert said[0].startswith("the users database is unavailable: "), said
    assert said[0] != "the users database is unavailable: "  # with its cause
    assert "down@example.com" not in said[0]  # never the statement's parameters
    assert said[1].startswith("the users database is back after "), said
    assert "(4 calls failed meanwhile)" in said[1], said


@pytest.mark.postgres
async def test_connections_killed_by_the_server_are_replaced(postgres_url: str) -> None:
    await migrate_users(postgres_url)
    async with (
        running_users(users_settings(postgres_url)) as address,
        channel_to(address) as channel,
    ):
        stub = users_pb2_grpc.UsersServiceStub(channel)
        user = await stub.CreateUser(
            users_pb2.CreateUserRequest(
                user=users_pb2.User(email="k@example.com", name="K"), password=PASSWORD
            )
        )
        # An administrator (or a failover) terminates every session of the service.
        admin = create_async_engine(postgres_url)
        async with admin.connect() as connection:
            await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        await admin.dispose()
        assert (await stub.GetUser(users_pb2.GetUserRequest(id=user.id))).id == user.id
