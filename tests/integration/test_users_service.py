"""Every UsersService method and rule, through a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from tandem_protos.users.v1 import users_pb2
from tests.support.rpc import reason, rpc_error, violations

Stub = Any
PASSWORD = "correct horse battery"


async def create(
    users: Stub, email: str = "ada@example.com", name: str = "Ada", password: str = PASSWORD
) -> users_pb2.User:
    request = users_pb2.CreateUserRequest(
        user=users_pb2.User(email=email, name=name), password=password
    )
    user: users_pb2.User = await users.CreateUser(request)
    return user


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


# --- CreateUser / GetUser -------------------------------------------------------------


async def test_create_returns_the_normalised_user_and_get_reads_it_back(users: Stub) -> None:
    created = await create(users, email="  Ada.Lovelace@EXAMPLE.com ", name="  Ada Lovelace  ")
    assert uuid.UUID(created.id)
    assert created.email == "Ada.Lovelace@example.com"
    assert created.name == "Ada Lovelace"
    assert created.create_time.ToDatetime() == created.update_time.ToDatetime()
    assert not created.HasField("delete_time")
    assert created.etag
    assert not hasattr(created, "password")

    fetched = await users.GetUser(users_pb2.GetUserRequest(id=created.id))
    assert fetched == created


async def test_create_reports_every_invalid_field_at_once(users: Stub) -> None:
    error = await rpc_error(create(users, email="not-an-email", name="   ", password="short"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    assert set(found) == {"user.email", "user.name", "password"}
    assert "valid email" in found["user.email"]
    assert found["password"] == "must be at least 8 characters"


@pytest.mark.parametrize(
    ("field", "kwargs", "description"),
    [
        ("user.name", {"name": "x" * 101}, "must be at most 100 characters"),
        ("user.name", {"name": "bad\x00name"}, "must not contain control characters"),
        ("password", {"password": "p" * 129}, "must be at most 128 characters"),
        ("user.email", {"email": ""}, "is required"),
        ("user.email", {"email": "a" * 250 + "@x.io"}, "must be at most 254 characters"),
    ],
)
async def test_create_rejects_out_of_range_fields(
    users: Stub, field: str, kwargs: dict[str, str], description: str
) -> None:
    error = await rpc_error(create(users, **kwargs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {field: description}


async def test_boundary_lengths_are_accepted(users: Stub) -> None:
    user = await create(users, name="n" * 100, password="p" * 128)
    assert len(user.name) == 100
    await create(users, email="b@example.com", name="n", password="p" * 8)


async def test_email_is_unique_case_insensitively(users: Stub) -> None:
    await create(users, email="ada@example.com")
    error = await rpc_error(create(users, email="  ADA@Example.COM "))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(error) == "EMAIL_TAKEN"


async def test_fifty_concurrent_creates_of_one_email_make_one_account(users: Stub) -> None:
    results = await asyncio.gather(
        *(create(users, email="race@example.com", name=f"racer {i}") for i in range(50)),
        return_exceptions=True,
    )
    succeeded = [r for r in results if isinstance(r, users_pb2.User)]
    failed = [r for r in results if not isinstance(r, users_pb2.User)]
    assert len(succeeded) == 1
    assert len(failed) == 49
    assert {e.code() for e in failed if isinstance(e, grpc.aio.AioRpcError)} == {
        grpc.StatusCode.ALREADY_EXISTS
    }
    assert all(isinstance(e, grpc.aio.AioRpcError) for e in failed)


async def test_get_rejects_a_non_uuid_and_reports_unknown_ids(users: Stub) -> None:
    error = await rpc_error(users.GetUser(users_pb2.GetUserRequest(id="42")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"id": "must be a UUID"}

    missing = str(uuid.uuid4())
    error = await rpc_error(users.GetUser(users_pb2.GetUserRequest(id=missing)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"no user {missing}"


# --- BatchGetUsers --------------------------------------------------------------------


async def test_batch_get_returns_the_accounts_in_the_order_asked(users: Stub) -> None:
    ada = await create(users, email="ada@example.com")
    bob = await create(users, email="bob@example.com", name="Bob")
    ids = [bob.id, ada.id, bob.id]
    reply = await users.BatchGetUsers(users_pb2.BatchGetUsersRequest(ids=ids))
    assert list(reply.users) == [bob, ada, bob]


async def test_batch_get_is_all_or_nothing(users: Stub) -> None:
    ada = await create(users, email="ada@example.com")
    gone = await create(users, email="gone@example.com")
    await users.DeleteUser(users_pb2.DeleteUserRequest(id=gone.id))
    missing = str(uuid.uuid4())
    for absent in (missing, gone.id):
        request = users_pb2.BatchGetUsersRequest(ids=[ada.id, absent, ada.id])
        error = await rpc_error(users.BatchGetUsers(request))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == f"no user {absent}"
        assert reason(error) == "USER_NOT_FOUND"


async def test_batch_get_names_each_malformed_id_and_bounds_the_batch(users: Stub) -> None:
    ada = await create(users)
    request = users_pb2.BatchGetUsersRequest(ids=[ada.id, "42", "", ada.id])
    error = await rpc_error(users.BatchGetUsers(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"ids[1]": "must be a UUID", "ids[2]": "must be a UUID"}

    error = await rpc_error(users.BatchGetUsers(users_pb2.BatchGetUsersRequest()))
    assert violations(error) == {"ids": "must name at least one id"}

    too_many = users_pb2.BatchGetUsersRequest(ids=[ada.id] * 1001)
    error = await rpc_error(users.BatchGetUsers(too_many))
    assert violations(error) == {"ids": "must name at most 1000 ids"}
    at_most = await users.BatchGetUsers(users_pb2.BatchGetUsersRequest(ids=[ada.id] * 1000))
    assert len(at_most.users) == 1000


# --- ListUsers ------------------------------------------------------------------------


async def test_list_pages_through_every_user_in_creation_order(users: Stub) -> None:
    created = [await create(users, email=f"u{i}@example.com", name=f"U{i}") for i in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await users.ListUsers(users_pb2.ListUsersRequest(page_size=3, page_token=token))
        seen.extend(u.id for u in page.users)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [u.id for u in created]


async def test_list_page_size_rules(users: Stub) -> None:
    for i in range(51):
        await create(users, email=f"p{i}@example.com", name=f"P{i}")
    default = await users.ListUsers(users_pb2.ListUsersRequest())
    assert len(default.users) == 50
    assert default.next_page_token
    huge = await users.ListUsers(users_pb2.ListUsersRequest(page_size=5000))
    assert len(huge.users) == 51
    assert huge.next_page_token == ""
    error = await rpc_error(users.ListUsers(users_pb2.ListUsersRequest(page_size=-1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"page_size": "must not be negative"}


async def test_list_hides_deleted_users_unless_asked(users: Stub) -> None:
    kept = await create(users, email="kept@example.com")
    gone = await create(users, email="gone@example.com")
    await users.DeleteUser(users_pb2.DeleteUserRequest(id=gone.id))
    live = await users.ListUsers(users_pb2.ListUsersRequest())
    assert [u.id for u in live.users] == [kept.id]
    everyone = await users.ListUsers(users_pb2.ListUsersRequest(show_deleted=True))
    assert [u.id for u in everyone.users] == [kept.id, gone.id]
    assert everyone.users[1].HasField("delete_time")


async def test_list_rejects_tampered_and_foreign_page_tokens(users: Stub) -> None:
    for i in range(3):
        await create(users, email=f"t{i}@example.com")
    page = await users.ListUsers(users_pb2.ListUsersRequest(page_size=1))
    token = page.next_page_token
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (tampered, "garbage!", "x"):
        error = await rpc_error(users.ListUsers(users_pb2.ListUsersRequest(page_token=bad)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in violations(error)
    foreign = users_pb2.ListUsersRequest(page_token=token, show_deleted=True)
    error = await rpc_error(users.ListUsers(foreign))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"page_token": "was issued for a request with other parameters"}
    # The page size may change between pages (AIP-158).
    resumed = await users.ListUsers(users_pb2.ListUsersRequest(page_token=token, page_size=5))
    assert len(resumed.users) == 2


# --- UpdateUser -----------------------------------------------------------------------


async def test_update_changes_only_the_masked_fields(users: Stub) -> None:
    user = await create(users)
    request = users_pb2.UpdateUserRequest(
        user=users_pb2.User(id=user.id, name="  Countess  ", email="other@example.com"),
        update_mask=mask("name"),
    )
    updated = await users.UpdateUser(request)
    assert (updated.name, updated.email) == ("Countess", user.email)
    assert updated.etag != user.etag
    assert updated.update_time.ToDatetime() > user.update_time.ToDatetime()
    assert updated.create_time == user.create_time

    request = users_pb2.UpdateUserRequest(
        user=users_pb2.User(id=user.id, email="New@Example.com"), update_mask=mask("email")
    )
    updated = await users.UpdateUser(request)
    assert (updated.name, updated.email) == ("Countess", "New@example.com")
    # The old address is free again; the new one is taken.
    await create(users, email=user.email)
    error = await rpc_error(create(users, email="new@example.com"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_update_without_mask_changes_the_populated_fields(users: Stub) -> None:
    user = await create(users)
    request = users_pb2.UpdateUserRequest(user=users_pb2.User(id=user.id, name="Just the name"))
    updated = await users.UpdateUser(request)
    assert (updated.name, updated.email) == ("Just the name", user.email)


@pytest.mark.parametrize(
    ("paths", "violation"),
    [
        (["password_hash"], "cannot update password_hash: only email, name"),
        (["name", "create_time"], "cannot update create_time: only email, name"),
    ],
)
async def test_update_rejects_unknown_mask_paths(
    users: Stub, paths: list[str], violation: str
) -> None:
    user = await create(users)
    request = users_pb2.UpdateUserRequest(
        user=users_pb2.User(id=user.id, name="x"), update_mask=mask(*paths)
    )
    error = await rpc_error(users.UpdateUser(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"update_mask": violation}


async def test_update_validates_the_new_values(users: Stub) -> None:
    user = await create(users)
    request = users_pb2.UpdateUserRequest(
        user=users_pb2.User(id=user.id, name="", email="nope"), update_mask=mask("name", "email")
    )
    error = await rpc_error(users.UpdateUser(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"user.name", "user.email"}


async def test_update_to_a_taken_email_is_already_exists(users: Stub) -> None:
    await create(users, email="taken@example.com")
    user = await create(users, email="mine@example.com")
    request = users_pb2.UpdateUserRequest(
        user=users_pb2.User(id=user.id, email="TAKEN@example.com"), update_mask=mask("email")
    )
    error = await rpc_error(users.UpdateUser(request))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_update_with_a_stale_etag_is_aborted(users: Stub) -> None:
    user = await create(users)
    first = users_pb2.UpdateUserRequest(
        user=users_pb2.User(id=user.id, name="First", etag=user.etag), update_mask=mask("name")
    )
    updated = await users.UpdateUser(first)
    assert updated.name == "First"
    second = users_pb2.UpdateUserRequest(
        user=users_pb2.User(id=user.id, name="Second", etag=user.etag), update_mask=mask("name")
    )
    error = await rpc_error(users.UpdateUser(second))
    assert error.code() == grpc.StatusCode.ABORTED
    assert reason(error) == "ETAG_MISMATCH"
    assert (await users.GetUser(users_pb2.GetUserRequest(id=user.id))).name == "First"


async def test_update_of_a_missing_or_deleted_user_is_not_found(users: Stub) -> None:
    user = await create(users)
    await users.DeleteUser(users_pb2.DeleteUserRequest(id=user.id))
    for target in (user.id, str(uuid.uuid4())):
        request = users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=target, name="x"), update_mask=mask("name")
        )
        error = await rpc_error(users.UpdateUser(request))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(
        users.UpdateUser(users_pb2.UpdateUserRequest(user=users_pb2.User(id="nope", name="x")))
    )
    assert violations(error) == {"user.id": "must be a UUID"}


# --- DeleteUser / UndeleteUser --------------------------------------------------------


async def test_delete_is_soft_and_frees_the_email(users: Stub) -> None:
    user = await create(users)
    deleted = await users.DeleteUser(users_pb2.DeleteUserRequest(id=user.id))
    assert deleted.HasField("delete_time")
    assert deleted.id == user.id
    error = await rpc_error(users.GetUser(users_pb2.GetUserRequest(id=user.id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(users.DeleteUser(users_pb2.DeleteUserRequest(id=user.id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    again = await create(users, email=user.email)
    assert again.id != user.id


async def test_undelete_restores_the_account(users: Stub) -> None:
    user = await create(users)
    await users.DeleteUser(users_pb2.DeleteUserRequest(id=user.id))
    restored = await users.UndeleteUser(users_pb2.UndeleteUserRequest(id=user.id))
    assert not restored.HasField("delete_time")
    assert (await users.GetUser(users_pb2.GetUserRequest(id=user.id))).email == user.email
    authenticated = await users.AuthenticateUser(
        users_pb2.AuthenticateUserRequest(email=user.email, password=PASSWORD)
    )
    assert authenticated.id == user.id


async def test_undelete_fails_when_the_email_was_taken_meanwhile(users: Stub) -> None:
    user = await create(users)
    await users.DeleteUser(users_pb2.DeleteUserRequest(id=user.id))
    await create(users, email=user.email.upper())
    error = await rpc_error(users.UndeleteUser(users_pb2.UndeleteUserRequest(id=user.id)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(error) == "EMAIL_TAKEN"


async def test_undelete_of_a_live_or_unknown_user(users: Stub) -> None:
    user = await create(users)
    error = await rpc_error(users.UndeleteUser(users_pb2.UndeleteUserRequest(id=user.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = await rpc_error(users.UndeleteUser(users_pb2.UndeleteUserRequest(id=str(uuid.uuid4()))))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# --- ChangePassword / AuthenticateUser ------------------------------------------------


async def test_authenticate_accepts_the_right_password_only(users: Stub) -> None:
    user = await create(users, email="Login@Example.com")
    ok = await users.AuthenticateUser(
        users_pb2.AuthenticateUserRequest(email=" login@EXAMPLE.com ", password=PASSWORD)
    )
    assert ok.id == user.id


async def test_failed_logins_are_indistinguishable(users: Stub) -> None:
    live = await create(users, email="live@example.com")
    gone = await create(users, email="gone@example.com")
    await users.DeleteUser(users_pb2.DeleteUserRequest(id=gone.id))
    attempts = [
        (live.email, "wrong password!"),
        ("nobody@example.com", PASSWORD),
        (gone.email, PASSWORD),
        ("not even an email", PASSWORD),
    ]
    outcomes = set()
    for email, password in attempts:
        request = users_pb2.AuthenticateUserRequest(email=email, password=password)
        error = await rpc_error(users.AuthenticateUser(request))
        outcomes.add((error.code(), error.details(), reason(error)))
    assert outcomes == {
        (grpc.StatusCode.UNAUTHENTICATED, "the email or password is incorrect", "BAD_CREDENTIALS")
    }


async def test_authenticate_requires_both_fields(users: Stub) -> None:
    error = await rpc_error(users.AuthenticateUser(users_pb2.AuthenticateUserRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {"email", "password"}


async def test_change_password(users: Stub) -> None:
    user = await create(users)
    wrong = users_pb2.ChangePasswordRequest(
        id=user.id, current_password="not it at all", new_password="new password 1"
    )
    error = await rpc_error(users.ChangePassword(wrong))
    # A typo, not a lapsed credential: the field is wrong, with a reason to branch on.
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"current_password": "is incorrect"}
    assert reason(error) == "WRONG_PASSWORD"

    too_short = users_pb2.ChangePasswordRequest(
        id=user.id, current_password=PASSWORD, new_password="short"
    )
    error = await rpc_error(users.ChangePassword(too_short))
    assert violations(error) == {"new_password": "must be at least 8 characters"}

    await users.ChangePassword(
        users_pb2.ChangePasswordRequest(
            id=user.id, current_password=PASSWORD, new_password="new password 1"
        )
    )
    new_login = users_pb2.AuthenticateUserRequest(email=user.email, password="new password 1")
    assert (await users.AuthenticateUser(new_login)).id == user.id
    old_login = users_pb2.AuthenticateUserRequest(email=user.email, password=PASSWORD)
    error = await rpc_error(users.AuthenticateUser(old_login))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    missing = users_pb2.ChangePasswordRequest(
        id=str(uuid.uuid4()), current_password=PASSWORD, new_password="new password 2"
    )
    error = await rpc_error(users.ChangePassword(missing))
    assert error.code() == grpc.StatusCode.NOT_FOUND
