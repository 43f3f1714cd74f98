"""`python -m gateway` as a real process, in front of a real users_service process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.ai_standin import running_ai_standin
from tests.support.gateway import PASSWORD, assert_problem, closed_port
from tests.support.processes import ServiceProcess, create_gateway_account, run_command
from tests.support.rawhttp import address_of


def gateway_env(users_target: str, ai_target: str, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_ADDR": "127.0.0.1:0",
        "GATEWAY_USERS_TARGET": users_target,
        "GATEWAY_AI_TARGET": ai_target,
        **extra,
    }


async def test_the_gateway_process_serves_the_stack_and_stops_cleanly(
    database_url: str, tmp_path: Path
) -> None:
    users_env = {"USERS_DATABASE_URL": database_url, "USERS_ADDR": "127.0.0.1:0"}
    code, output = await run_command(["-m", "users_service", "migrate"], users_env)
    assert code == 0, output
    account = await create_gateway_account(users_env, tmp_path)
    async with (
        ServiceProcess(["-m", "users_service"], users_env, cwd=str(ROOT)) as users,
        running_ai_standin() as ai,
    ):
        users_address = await users.wait_serving()
        env = gateway_env(users_address, ai.address, **account)
        async with ServiceProcess(["-m", "gateway"], env, cwd=str(ROOT)) as gateway:
            address = await gateway.wait_serving()
            async with httpx.AsyncClient(base_url=f"http://{address}", timeout=15) as client:
                assert (await client.get("/healthz")).json() == {"status": "ok"}
                assert (await client.get("/readyz")).status_code == 200
                signed_up = await client.post(
                    "/v1/users",
                    json={"email": "process@example.com", "name": "P", "password": PASSWORD},
                    headers={"X-Request-ID": "e2e-signup"},
                )
                assert signed_up.status_code == 201, signed_up.text
                login = await client.post(
                    "/v1/auth/token",
                    data={
                        "grant_type": "password",
                        "username": "process@example.com",
                        "password": PASSWORD,
                    },
                )
                token = login.json()["access_token"]
                me = await client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
                assert me.json()["email"] == "process@example.com"
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0, gateway.output
        # Its log lines carry the request id; the access log names each request.
        assert any(
            "[e2e-signup]" in line and "POST /v1/users 201" in line for line in gateway.lines
        ), gateway.output
        # The request id reached the users service too.
        assert any("[e2e-signup]" in line for line in users.lines), users.output


async def test_without_its_upstreams_it_serves_and_says_why_it_cannot_verify() -> None:
    target = f"127.0.0.1:{closed_port()}"
    env = gateway_env(target, target)
    async with ServiceProcess(["-m", "gateway"], env, cwd=str(ROOT)) as gateway:
        address = await gateway.wait_serving()
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=15) as client:
            ready = await client.get("/readyz")
            body = assert_problem(ready, 503, "UNAVAILABLE")
            assert body["detail"] == "not ready: users is UNAVAILABLE, ai is UNAVAILABLE"
            # No keys to verify with: the users service is down, not the token bad.
            headers = {"Authorization": "Bearer a.b.c"}
            bad = await client.get("/v1/users/me", headers=headers)
            assert_problem(bad, 401, "UNAUTHENTICATED")
            header = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsifQ"  # {"alg":"EdDSA","kid":"k"}
            headers = {"Authorization": f"Bearer {header}.e30.AAAA"}
            unverifiable = await client.get("/v1/users/me", headers=headers)
            assert_problem(unverifiable, 503, "UNAVAILABLE")


async def test_an_invalid_setting_stops_start_up_with_one_line() -> None:
    code, output = await run_command(
        ["-m", "gateway"],
        {"GATEWAY_USERS_DEADLINE_SECONDS": "soon", "GATEWAY_TOKEN_MAX_LIFETIME_SECONDS": "1"},
    )
    assert code == 2
    assert output.strip().splitlines() == [
        "gateway: GATEWAY_TOKEN_MAX_LIFETIME_SECONDS is invalid: Input should be greater than "
        "or equal to 30; GATEWAY_USERS_DEADLINE_SECONDS is invalid: Input should be a valid "
        "number, unable to parse string as a number"
    ]


async def test_a_killed_gateway_leaves_no_process_on_its_port() -> None:
    target = f"127.0.0.1:{closed_port()}"
    async with ServiceProcess(
        ["-m", "gateway"], gateway_env(target, target), cwd=str(ROOT)
    ) as gateway:
        address = address_of(f"http://{await gateway.wait_serving()}")
        (acceptor,) = children_of(gateway.pid)  # the accepting process (gateway.acceptor)
        acceptor_ended = ended(acceptor)
        socket.create_connection(address, timeout=5).close()
        gateway.send_signal(signal.SIGKILL)
        assert await gateway.wait() == -signal.SIGKILL
    # The kernel kills the accepting process with it; nothing listens on the port.
    await asyncio.wait_for(acceptor_ended.wait(), 10)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def ended(pid: int) -> asyncio.Event:
    """Set once process `pid` (not a child of this one) has ended."""
    pidfd = os.pidfd_open(pid)  # readable once it ends
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def end() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        done.set()

    loop.add_reader(pidfd, end)
    return done
