"""Two users services behind one gateway process: the load is shared, and one replica
dying mid-load fails no request the other could serve."""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.support.harness import free_port
from tests.support.keys import write_key
from tests.support.processes import ServiceProcess, create_gateway_account, run_command

# A call a replica answered (its access log): reads of the account, and of the session
# (round_robin alternates each request's calls, so count them all).
ANSWERED = re.compile(r"/users\.v1\.(UsersService|AuthService)/\w+ OK")


async def test_replicas_share_the_load_and_survive_one_dying(
    postgres_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    code, output = await run_command(
        ["-m", "users_service", "migrate"], {"USERS_DATABASE_URL": postgres_url}
    )
    assert code == 0, output
    code, output = await run_command(
        ["-m", "ai_service", "migrate"], {"AI_DATABASE_URL": sqlite_url}
    )
    assert code == 0, output

    # One signing key for both replicas: a token one issues, the gateway verifies with
    # the keys it fetched from either.
    signing_key = write_key(f"replicas-{uuid.uuid4().hex}")
    users_env = {
        "USERS_DATABASE_URL": postgres_url,
        "USERS_PAGE_TOKEN_SECRET": "replicas-share-this-secret",
        "USERS_TOKEN_SIGNING_KEY_FILE": str(signing_key),
    }
    first = ServiceProcess(
        ["-m", "users_service"], {**users_env, "USERS_ADDR": f"127.0.0.1:{free_port()}"}
    )
    second = ServiceProcess(
        ["-m", "users_service"], {**users_env, "USERS_ADDR": f"127.0.0.1:{free_port()}"}
    )
    account = await create_gateway_account(users_env, tmp_path)
    async with first, second:
        addresses = [await first.wait_serving(), await second.wait_serving()]
        ai = ServiceProcess(
            ["-m", "ai_service"],
            {
                "AI_DATABASE_URL": sqlite_url,
                "AI_ADDR": "127.0.0.1:0",
                "AI_USERS_TARGET": "ipv4:" + ",".join(addresses),
            },
        )
        async with ai:
            gateway = ServiceProcess(
                ["-m", "gateway"],
                {
                    **account,
                    "GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
                    "GATEWAY_USERS_TARGET": "ipv4:" + ",".join(addresses),
                    "GATEWAY_AI_TARGET": await ai.wait_serving(),
                    # Every request asks the users service, so both replicas see the load.
                    "GATEWAY_AUTH_CACHE_SECONDS": "0",
                },
                cwd=str(ROOT),
            )
            async with gateway:
                url = "http://" + await gateway.wait_serving()
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    email = f"replica-{uuid.uuid4().hex[:8]}@example.com"
                    created = await client.post(
                        "/v1/users",
                        json={"email": email, "name": "Replica", "password": "correct horse"},
                    )
                    assert created.status_code == 201, created.text
                    login = await client.post(
                        "/v1/auth/token",
                        data={
                            "grant_type": "password",
                            "username": email,
                            "password": "correct horse",
                        },
                    )
                    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
                    path = f"/v1/users/{created.json()['id']}"

                    progress = {"answered": 0}
                    under_way = asyncio.Event()

                    async def read(times: int) -> list[int]:
                        statuses = []
                        for _ in range(times):
                            statuses.append((await client.get(path, headers=headers)).status_code)
                            progress["answered"] += 1
                            if progress["answered"] == 40:
                                under_way.set()
                        return statuses

                    warm = await asyncio.gather(*(read(10) for _ in range(8)))  # 80 reads
                    assert {s for batch in warm for s in batch} == {200}
                    served = [
                        sum(bool(ANSWERED.search(line)) for line in p.lines)
                        for p in (first, second)
                    ]
                    assert min(served) > 0, f"one replica got nothing: {served}"

                    # One replica dies in the middle of the load (40 of 200 reads done).
                    progress["answered"] = 0
                    under_way.clear()
                    loads = [asyncio.ensure_future(read(25)) for _ in range(8)]
                    await under_way.wait()
                    first.process.send_signal(signal.SIGKILL)
                    statuses = [s for batch in await asyncio.gather(*loads) for s in batch]
                    assert statuses == [200] * len(statuses)
                    ready = await client.get("/readyz")
                    assert ready.status_code == 200, ready.text
