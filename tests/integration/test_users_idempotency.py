"""CreateUser's `request_id` (AIP-155) through real users servers, on SQLite and
PostgreSQL: a retry answers the first account, another request with the id is refused,
concurrent ones make one account, ids are their caller's own and expire."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import Table

from servicekit.idempotency import KEY_IN_FLIGHT, KEY_REUSED, fingerprint
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.support.rpc import reason, rpc_error, violations
from tests.support.servers import channel_to, running_users, users_settings
from tests.support.tables import count_of, rows_of
from tests.support.tokens import service_bearer
from users_service.models import UserRow, sign_up_keys

Stub = Any
PASSWORD = "correct horse battery"
USERS = cast(Table, UserRow.__table__)


def sign_up(
    request_id: str,
    email: str = "ada@example.com",
    name: str = "Ada",
    password: str = PASSWORD,
) -> users_pb2.CreateUserRequest:
    return users_pb2.CreateUserRequest(
        user=users_pb2.User(email=email, name=name), password=password, request_id=request_id
    )


def new_id() -> str:
    return str(uuid.uuid4())


async def test_a_retry_answers_the_first_account_and_makes_no_other(
    users: Stub, users_db: str
) -> None:
    request_id = new_id()
    first = await users.CreateUser(sign_up(request_id))
    again = await users.CreateUser(sign_up(request_id))
    assert again == first
    assert await count_of(users_db, USERS) == 1
    (key,) = await rows_of(users_db, sign_up_keys)
    assert key["scope"] == "service:tests"
    assert str(key["request_id"]) == request_id
    assert str(key["resource_id"]) == first.id


async def test_without_a_request_id_each_call_is_a_new_sign_up(users: Stub, users_db: str) -> None:
    await users.CreateUser(sign_up("", email="one@example.com"))
    error = await rpc_error(users.CreateUser(sign_up("", email="one@example.com")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await count_of(users_db, sign_up_keys) == 0


@pytest.mark.parametrize(
    "other",
    [
        {"email": "grace@example.com"},
        {"name": "Ada L."},
        {"email": "ADA@example.com"},  # the same account, but not the same request
        {"password": "another horse battery"},
    ],
)
async def test_the_same_request_id_with_another_request_is_refused(
    users: Stub, users_db: str, other: dict[str, str]
) -> None:
    request_id = new_id()
    await users.CreateUser(sign_up(request_id))
    error = await rpc_error(users.CreateUser(sign_up(request_id, **other)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == KEY_REUSED
    assert await count_of(users_db, USERS) == 1


async def test_the_password_is_kept_only_as_the_accounts_hash(users: Stub, users_db: str) -> None:
    await users.CreateUser(sign_up(new_id(), email=" Ada@Example.com", name="Ada"))
    (key,) = await rows_of(users_db, sign_up_keys)
    # The fingerprint is of the request as sent, without its password.
    assert key["fingerprint"] == fingerprint("CreateUser", " Ada@Example.com", "Ada")
    assert not any(PASSWORD in str(value) for value in key.values())


async def test_a_replay_answers_the_account_as_it_is_now(users: Stub) -> None:
    request_id = new_id()
    first = await users.CreateUser(sign_up(request_id))
    renamed = await users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=first.id, name="Countess"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        )
    )
    replayed = await users.CreateUser(sign_up(request_id))
    assert replayed == renamed
    assert replayed.etag != first.etag


async def test_concurrent_retries_on_one_replica_make_one_account(
    users: Stub, users_db: str
) -> None:
    request_id = new_id()
    outcomes = await asyncio.gather(
        *(users.CreateUser(sign_up(request_id)) for _ in range(10)), return_exceptions=True
    )
    made = [o for o in outcomes if isinstance(o, users_pb2.User)]
    refused = [o for o in outcomes if not isinstance(o, users_pb2.User)]
    assert made and {user.id for user in made} == {made[0].id}
    for error in refused:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert (error.code(), reason(error)) == (grpc.StatusCode.ABORTED, KEY_IN_FLIGHT)
    assert refused, "the nine retries met the first one running"
    assert await count_of(users_db, USERS) == 1


async def test_concurrent_retries_on_two_replicas_make_one_account_and_both_answer_it(
    users_db: str,
) -> None:
    settings = users_settings(users_db)
    async with (
        running_users(settings) as first_address,
        running_users(settings) as second_address,
        channel_to(first_address) as first_channel,
        channel_to(second_address) as second_channel,
    ):
        first = users_pb2_grpc.UsersServiceStub(first_channel)
        second = users_pb2_grpc.UsersServiceStub(second_channel)
        for round_ in range(5):
            request = sign_up(new_id(), email=f"racer{round_}@example.com")
            one, other = await asyncio.gather(first.CreateUser(request), second.CreateUser(request))
            assert one == other
    assert await count_of(users_db, USERS) == 5
    assert await count_of(users_db, sign_up_keys) == 5


async def test_request_ids_are_their_callers_own(users_db: str) -> None:
    request_id = new_id()
    async with running_users(users_settings(users_db)) as address:
        made = []
        for name in ("billing", "crm"):
            async with channel_to(address, authorization=service_bearer(name=name)) as channel:
                stub = users_pb2_grpc.UsersServiceStub(channel)
                made.append(await stub.CreateUser(sign_up(request_id, email=f"{name}@x.io")))
    assert made[0].id != made[1].id
    scopes = {row["scope"] for row in await rows_of(users_db, sign_up_keys)}
    assert scopes == {"service:billing", "service:crm"}


async def test_request_ids_expire_after_the_window(users_db: str) -> None:
    request_id = new_id()
    settings = users_settings(users_db, idempotency_key_ttl_seconds=1)
    async with running_users(settings) as address, channel_to(address) as channel:
        stub = users_pb2_grpc.UsersServiceStub(channel)
        first = await stub.CreateUser(sign_up(request_id))
        await asyncio.sleep(1.1)
        # Another request with the id is no longer refused: the id is new again.
        second = await stub.CreateUser(sign_up(request_id, email="grace@example.com"))
    assert second.id != first.id
    (key,) = await rows_of(users_db, sign_up_keys)  # the expired one is gone
    assert str(key["resource_id"]) == second.id


async def test_a_malformed_request_id_is_invalid_with_the_rest(users: Stub) -> None:
    error = await rpc_error(users.CreateUser(sign_up("not-a-uuid", email="nope")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    assert found["request_id"] == "must be a UUID"
    assert "user.email" in found
