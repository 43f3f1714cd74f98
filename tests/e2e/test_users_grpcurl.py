"""An engineer's grpcurl session against a real users_service process, via reflection:
a service account made with the CLI, its token from the client-credentials grant."""

from __future__ import annotations

import re
import uuid
from functools import partial

import grpc

from tests.conftest import ROOT
from tests.support.grpcurl import grpcurl as _grpcurl
from tests.support.processes import ServiceProcess, run_command

SERVICE = "users.v1.UsersService"


async def test_grpcurl_session(database_url: str) -> None:
    env = {"USERS_DATABASE_URL": database_url, "USERS_ADDR": "127.0.0.1:0"}
    code, output = await run_command(["-m", "users_service", "migrate"], env)
    assert code == 0, output
    code, output = await run_command(
        [
            "-m",
            "users_service",
            "create-service-account",
            "support-desk",
            "--scope",
            "users.signup,users.read,users.write",
        ],
        env,
    )
    assert code == 0, output
    secret = re.search(r"^client_secret: (\S+)$", output, re.MULTILINE)
    assert secret is not None, output
    async with ServiceProcess(["-m", "users_service"], env, cwd=str(ROOT)) as service:
        address = await service.wait_serving()
        anonymous = await _grpcurl(address, f"{SERVICE}/ListUsers", data={}, token=None)
        assert anonymous.status_code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "CREDENTIALS_MISSING" in anonymous.output
        issued = await _grpcurl(
            address,
            "users.v1.AuthService/IssueToken",
            data={"client_credentials": {"client_id": "support-desk", "client_secret": secret[1]}},
            token=None,
        )
        assert issued.exit_code == 0, issued.output
        assert issued.json()["scope"] == "users.read users.signup users.write"
        assert secret[1] not in service.output
        grpcurl = partial(_grpcurl, token=issued.json()["access_token"])

        created = await grpcurl(
            address,
            f"{SERVICE}/CreateUser",
            data={"user": {"email": "Grace@Example.com", "name": "Grace"}, "password": "hopper123"},
        )
        assert created.exit_code == 0, created.output
        user = created.json()
        assert user["email"] == "Grace@example.com"
        assert set(user) == {
            "id",
            "email",
            "name",
            "create_time",
            "update_time",
            "etag",
            "role",
            "view",
        }

        fetched = await grpcurl(address, f"{SERVICE}/GetUser", data={"id": user["id"]})
        assert fetched.json() == user

        batch = await grpcurl(
            address, f"{SERVICE}/BatchGetUsers", data={"ids": [user["id"], user["id"]]}
        )
        assert batch.json() == {"users": [user, user]}

        listed = await grpcurl(address, f"{SERVICE}/ListUsers", data={"page_size": 10})
        assert [u["id"] for u in listed.json()["users"]] == [user["id"]]

        deleted = await grpcurl(address, f"{SERVICE}/DeleteUser", data={"id": user["id"]})
        assert "delete_time" in deleted.json()

        gone = await grpcurl(address, f"{SERVICE}/GetUser", data={"id": user["id"]})
        assert gone.status_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert "Code: NotFound" in gone.output

        invalid = await grpcurl(address, f"{SERVICE}/GetUser", data={"id": "not-a-uuid"})
        assert invalid.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "Code: InvalidArgument" in invalid.output
        # grpcurl decodes the google.rpc.BadRequest detail by itself.
        assert '"field":"id"' in invalid.output
        bad_batch = await grpcurl(address, f"{SERVICE}/BatchGetUsers", data={"ids": ["x"]})
        assert bad_batch.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert '"field":"ids[0]"' in bad_batch.output

        duplicate_data = {"user": {"email": "x@example.com", "name": "X"}, "password": "12345678"}
        first = await grpcurl(address, f"{SERVICE}/CreateUser", data=duplicate_data)
        assert first.exit_code == 0
        second = await grpcurl(address, f"{SERVICE}/CreateUser", data=duplicate_data)
        assert second.status_code == grpc.StatusCode.ALREADY_EXISTS.value[0]

        unknown = await grpcurl(address, f"{SERVICE}/GetUser", data={"id": str(uuid.uuid4())})
        assert "Code: NotFound" in unknown.output
