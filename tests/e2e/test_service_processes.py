"""Both services as real processes: migrate, serve, health, reflection via real grpcurl."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ROOT
from tests.support.grpcurl import grpcurl
from tests.support.processes import ServiceProcess, run_command
from tests.support.users_standin import running_users_standin

SERVICES = {
    "users_service": ("USERS_", "users.v1.UsersService"),
    "ai_service": ("AI_", "ai.v1.AnalysisService"),
}
# What each process hosts besides health and reflection.
HOSTED = {
    "users_service": {"users.v1.UsersService", "users.v1.AuthService"},
    "ai_service": {"ai.v1.AnalysisService", "google.longrunning.Operations"},
}


@pytest.mark.parametrize("module", list(SERVICES))
async def test_service_migrates_serves_and_stops_cleanly(module: str, database_url: str) -> None:
    prefix, service_name = SERVICES[module]
    env = {f"{prefix}DATABASE_URL": database_url, f"{prefix}ADDR": "127.0.0.1:0"}
    code, output = await run_command(["-m", module, "migrate"], env)
    assert code == 0, output
    # Migrating again is a no-op, not an error.
    code, output = await run_command(["-m", module, "migrate"], env)
    assert code == 0, output

    async with AsyncExitStack() as stack:
        if module == "ai_service":  # its callers' tokens are checked with users' keys
            _, env["AI_USERS_TARGET"] = await stack.enter_async_context(running_users_standin())
        service = await stack.enter_async_context(
            ServiceProcess(["-m", module], env, cwd=str(ROOT))
        )
        address = await service.wait_serving()
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service_name):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

        listed = await grpcurl(address, "list")
        assert listed.exit_code == 0, listed.output
        assert set(listed.output.split()) == {
            *HOSTED[module],
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        described = await grpcurl(address, "describe", service_name)
        assert described.exit_code == 0, described.output
        assert "rpc " in described.output
        checked = await grpcurl(address, "grpc.health.v1.Health/Check")
        assert checked.json() == {"status": "SERVING"}, checked.output

        service.send_signal()
        assert await service.wait() == 0, service.output


@pytest.mark.parametrize("module", list(SERVICES))
async def test_serving_an_unmigrated_database_asks_for_migrate(
    module: str, database_url: str
) -> None:
    prefix, _ = SERVICES[module]
    env = {f"{prefix}DATABASE_URL": database_url, f"{prefix}ADDR": "127.0.0.1:0"}
    code, output = await run_command(["-m", module], env)
    assert code == 1
    assert f"run `python -m {module} migrate` first" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("module", list(SERVICES))
async def test_an_invalid_setting_stops_start_up_with_one_line(module: str) -> None:
    prefix, _ = SERVICES[module]
    code, output = await run_command(["-m", module], {f"{prefix}SHUTDOWN_GRACE_SECONDS": "soon"})
    assert code == 2
    assert output.strip().splitlines() == [
        f"{module}: {prefix}SHUTDOWN_GRACE_SECONDS is invalid: Input should be a valid number, "
        "unable to parse string as a number"
    ]


async def test_an_unreachable_database_is_one_line_without_password() -> None:
    env = {"USERS_DATABASE_URL": "postgresql+asyncpg://tandem:s3cret@127.0.0.1:9/users"}
    code, output = await run_command(["-m", "users_service", "migrate"], env)
    assert code == 1
    assert "cannot use the database postgresql+asyncpg://tandem:***@127.0.0.1:9/users" in output
    assert "s3cret" not in output and "Traceback" not in output


async def test_grant_and_revoke_admin_from_the_command_line(database_url: str) -> None:
    env = {"USERS_DATABASE_URL": database_url, "USERS_ADDR": "127.0.0.1:0"}
    code, output = await run_command(["-m", "users_service", "migrate"], env)
    assert code == 0, output
    async with ServiceProcess(["-m", "users_service"], env, cwd=str(ROOT)) as service:
        address = await service.wait_serving()
        created = await grpcurl(
            address,
            "users.v1.UsersService/CreateUser",
            data={"user": {"email": "root@example.com", "name": "Root"}, "password": "long enough"},
        )
        assert created.exit_code == 0, created.output
        service.send_signal()
        assert await service.wait() == 0, service.output

    code, output = await run_command(
        ["-m", "users_service", "grant-admin", "Root@Example.com"], env
    )
    assert code == 0, output
    assert "root@example.com" in output and "is now admin" in output
    code, output = await run_command(
        ["-m", "users_service", "revoke-admin", "root@example.com"], env
    )
    assert code == 0, output
    assert "is now user" in output

    code, output = await run_command(["-m", "users_service", "grant-admin", "who@example.com"], env)
    assert code == 1
    assert output.strip() == "users_service: no live account has the email 'who@example.com'"
    code, output = await run_command(["-m", "users_service", "grant-admin"], env)
    assert code == 2
    assert "the following arguments are required: EMAIL" in output


async def test_service_accounts_from_the_command_line(sqlite_url: str, tmp_path: Path) -> None:
    env = {"USERS_DATABASE_URL": sqlite_url}
    code, output = await run_command(["-m", "users_service", "migrate"], env)
    assert code == 0, output
    create = ["-m", "users_service", "create-service-account", "billing"]
    code, output = await run_command([*create, "--scope", "users.read"], env)
    assert code == 0, output
    assert "client_id: billing" in output and "shown this once" in output
    code, output = await run_command([*create, "--scope", "users.read"], env)
    assert code == 1
    assert "--replace gives it a new secret" in output
    code, output = await run_command([*create, "--scope", "users.everything"], env)
    assert code == 2
    assert "unknown scope users.everything" in output

    # With a secret file (what `make run` does on every start): written once, 0600,
    # then kept while it holds the account's working secret for the same scopes.
    secret_file = tmp_path / "billing-secret"
    with_file = [*create, "--scope", "users.read", "--secret-file", str(secret_file), "--replace"]
    code, output = await run_command(with_file, env)
    assert code == 0, output
    secret = secret_file.read_text().strip()
    assert secret.startswith("tnds_") and secret not in output
    assert secret_file.stat().st_mode & 0o777 == 0o600
    code, output = await run_command(with_file, env)
    assert code == 0 and "unchanged" in output, output
    assert secret_file.read_text().strip() == secret

    code, output = await run_command(
        ["-m", "users_service", "delete-service-account", "billing"], env
    )
    assert code == 0, output
    code, output = await run_command(
        ["-m", "users_service", "delete-service-account", "billing"], env
    )
    assert code == 1


async def test_production_mode_refuses_unsafe_settings_in_one_line(sqlite_url: str) -> None:
    env = {
        "TANDEM_ENV": "production",
        "USERS_DATABASE_URL": sqlite_url,
        "USERS_ADDR": "0.0.0.0:0",
        "USERS_PAGE_TOKEN_SECRET": "dev-only-users-page-token-secret",
    }
    code, output = await run_command(["-m", "users_service", "migrate"], env)
    assert code == 0, output
    code, output = await run_command(["-m", "users_service"], env)
    assert code == 1
    (line,) = output.strip().splitlines()
    assert line.startswith("users_service: TANDEM_ENV=production refuses to start: ")
    assert "USERS_ADDR is not a loopback address and TLS is off" in line
    assert "USERS_PAGE_TOKEN_SECRET is a value published in the repository" in line
    assert "USERS_REFLECTION is on" in line
    assert "dev-only-users-page-token-secret" not in line
    gateway_env = {"TANDEM_ENV": "production", "GATEWAY_AI_TARGET": "dns:///ai:50052"}
    code, output = await run_command(["-m", "gateway"], gateway_env)
    assert code == 1
    assert output.strip() == (
        "gateway: TANDEM_ENV=production refuses to start: GATEWAY_AI_TARGET is not on this "
        "machine and TLS to it is off (set GATEWAY_UPSTREAM_TLS_CA_FILE)"
    )
