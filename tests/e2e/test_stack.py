"""The whole stack as `make run` starts it: a user's journey through REST, the same
operations on the gRPC services with grpcurl and buf curl, and a graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import uuid
from typing import Any

import httpx

from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.gateway import read_events
from tests.support.grpcurl import grpcurl
from tests.support.processes import run_command
from tests.support.stack import (
    RunningStack,
    assert_stops_cleanly,
    command_line,
    descendants,
    make_run,
)
from tests.support.tools import tool

PASSWORD = "correct horse battery"
# Every token the journeys were given: none may show up in a log line.
ISSUED: list[str] = []
GOOD = {
    "summary": "Fine.",
    "sentiment": "neutral",
    "key_points": ["fine"],
    "confidence": 0.6,
}


async def buf_curl(address: str, method: str, data: dict[str, Any], token: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        tool("buf"),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "-H",
        f"authorization: Bearer {token}",
        # Reflection needs the credential too; buf sends -H headers only to the method.
        "--reflect-header",
        "*",
        "--data",
        json.dumps(data),
        f"http://{address}/{method}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_up_and_log_in(client: httpx.AsyncClient, email: str) -> tuple[str, str]:
    created = await client.post(
        "/v1/users", json={"email": email, "name": "Journey", "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/v1/users/{created.json()['id']}"
    login = await client.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    ISSUED.extend([login.json()["access_token"], login.json()["refresh_token"]])
    return created.json()["id"], login.json()["access_token"]


async def rest_journey(stack: RunningStack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
        me_id, token = await sign_up_and_log_in(client, email)
        other_id, other_token = await sign_up_and_log_in(
            client, f"bob-{uuid.uuid4().hex[:8]}@example.com"
        )

        # Fail the usual ways.
        duplicate = await client.post(
            "/v1/users", json={"email": email.upper(), "name": "Again", "password": PASSWORD}
        )
        assert duplicate.status_code == 409
        assert duplicate.headers["content-type"] == "application/problem+json"
        wrong = await client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": "nope nope"},
        )
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
        garbage = await client.post(
            "/v1/users", json={"email": "not-an-email", "name": "", "password": "x"}
        )
        assert garbage.status_code == 400
        assert {e["field"] for e in garbage.json()["errors"]} >= {"name", "password"}
        bad_email = await client.post(
            "/v1/users", json={"email": "not-an-email", "name": "X", "password": PASSWORD}
        )
        assert bad_email.status_code == 400
        assert [e["field"] for e in bad_email.json()["errors"]] == ["email"]
        not_json = await client.post(
            "/v1/analyses",
            content=b"{nope",
            headers={**bearer(token), "content-type": "application/json"},
        )
        assert not_json.status_code == 400
        theirs = await client.patch(
            f"/v1/users/{other_id}", json={"name": "Hijacked"}, headers=bearer(token)
        )
        assert theirs.status_code == 403

        # Read and update yourself.
        me = await client.get("/v1/users/me", headers=bearer(token))
        assert me.json()["id"] == me_id
        etag = me.headers["etag"]
        renamed = await client.patch(
            f"/v1/users/{me_id}",
            json={"name": "Ada L."},
            headers={**bearer(token), "If-Match": etag},
        )
        assert renamed.status_code == 200 and renamed.json()["name"] == "Ada L."
        stale = await client.patch(
            f"/v1/users/{me_id}",
            json={"name": "Stale"},
            headers={**bearer(token), "If-Match": etag},
        )
        assert stale.status_code == 412

        # Analyse, plain and streamed, and list.
        plain = await client.post(
            "/v1/analyses", json={"text": "A wonderful, delightful product."}, headers=bearer(token)
        )
        assert plain.status_code == 201, plain.text
        assert plain.json()["sentiment"] == "positive"
        async with client.stream(
            "POST",
            "/v1/analyses:stream",
            json={"text": "Terrible. It broke at once."},
            headers=bearer(token),
        ) as streamed:
            events = await read_events(streamed)
        assert [e.name for e in events][-2:] == ["analysis", "done"]
        listed = await client.get("/v1/analyses", headers=bearer(token))
        assert [a["id"] for a in listed.json()["analyses"]] == [
            events[-2].data["id"],
            plain.json()["id"],
        ]
        hidden = await client.get(f"/v1/analyses/{plain.json()['id']}", headers=bearer(other_token))
        assert hidden.status_code == 404

        # Refresh, log out, and use the ended session's tokens.
        again = await client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
        )
        refreshed = await client.post(
            "/v1/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": again.json()["refresh_token"]},
        )
        assert refreshed.status_code == 200, refreshed.text
        ISSUED.extend(refreshed.json()[k] for k in ("access_token", "refresh_token"))
        ISSUED.extend(again.json()[k] for k in ("access_token", "refresh_token"))
        revoked = await client.post(
            "/v1/auth/revoke", data={"token": refreshed.json()["refresh_token"]}
        )
        assert revoked.status_code == 200
        ended = await client.get("/v1/users/me", headers=bearer(refreshed.json()["access_token"]))
        assert ended.status_code == 401 and ended.json()["reason"] == "SESSION_ENDED"
        reused = await client.post(
            "/v1/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": again.json()["refresh_token"]},
        )
        assert reused.status_code == 400
        jwks = await client.get("/.well-known/jwks.json")
        assert [k["alg"] for k in jwks.json()["keys"]] == ["EdDSA"]

        # Delete yourself; the token stops working.
        deleted = await client.delete(f"/v1/users/{me_id}", headers=bearer(token))
        assert deleted.status_code == 204
        after = await client.get("/v1/users/me", headers=bearer(token))
        assert after.status_code == 401
        assert after.headers["www-authenticate"].startswith("Bearer")


async def service_account(stack: RunningStack, name: str, scopes: str) -> str:
    """A service account made with the users CLI; its token from the grant, by grpcurl."""
    code, output = await run_command(
        ["-m", "users_service", "create-service-account", name, "--scope", scopes], stack.env
    )
    assert code == 0, output
    secret = re.search(r"^client_secret: (\S+)$", output, re.MULTILINE)
    assert secret is not None, output
    ISSUED.append(secret[1])
    issued = await grpcurl(
        stack.users,
        "users.v1.AuthService/IssueToken",
        data={"client_credentials": {"client_id": name, "client_secret": secret[1]}},
        token=None,
    )
    assert issued.exit_code == 0, issued.output
    token: str = issued.json()["access_token"]
    ISSUED.append(token)
    return token


async def grpc_journey(stack: RunningStack) -> None:
    users, ai = "users.v1.UsersService", "ai.v1.AnalysisService"
    anonymous = await grpcurl(stack.users, f"{users}/ListUsers", token=None)
    assert "Code: Unauthenticated" in anonymous.output and "CREDENTIALS_MISSING" in anonymous.output
    desk = await service_account(
        stack, "journey-desk", "users.signup,users.login,users.read,analyses.write"
    )
    email = f"grace-{uuid.uuid4().hex[:8]}@example.com"
    created = await grpcurl(
        stack.users,
        f"{users}/CreateUser",
        data={"user": {"email": email, "name": "Grace"}, "password": PASSWORD},
        token=desk,
    )
    assert created.exit_code == 0, created.output
    user_id = created.json()["id"]
    login = await grpcurl(
        stack.users,
        f"{users}/AuthenticateUser",
        data={"email": email, "password": PASSWORD},
        token=desk,
    )
    assert login.json()["id"] == user_id
    wrong = await grpcurl(
        stack.users,
        f"{users}/AuthenticateUser",
        data={"email": email, "password": "bad password"},
        token=desk,
    )
    assert "Code: Unauthenticated" in wrong.output
    issued = await grpcurl(
        stack.users,
        "users.v1.AuthService/IssueToken",
        data={"password": {"email": email, "password": PASSWORD}},
        token=desk,
    )
    assert issued.exit_code == 0, issued.output
    tokens = issued.json()
    ISSUED.extend([tokens["access_token"], tokens["refresh_token"]])
    grace = tokens["access_token"]
    own = await grpcurl(stack.users, f"{users}/ListUsers", token=grace)
    assert "Code: PermissionDenied" in own.output and "ADMIN_REQUIRED" in own.output
    analysed = await grpcurl(
        stack.ai, f"{ai}/AnalyzeText", data={"text": "Lovely and calm."}, token=grace
    )
    assert analysed.json()["sentiment"] == "SENTIMENT_POSITIVE", analysed.output
    assert analysed.json()["user_id"] == user_id
    # A service acts for a user it names (analyses.write), but may not read theirs.
    for_her = await grpcurl(
        stack.ai,
        f"{ai}/AnalyzeText",
        data={"text": "Calm again.", "user_id": user_id},
        token=desk,
    )
    assert for_her.json()["user_id"] == user_id, for_her.output
    not_hers = await grpcurl(stack.ai, f"{ai}/ListAnalyses", data={"user_id": user_id}, token=desk)
    assert "Code: PermissionDenied" in not_hers.output and "SCOPE_REQUIRED" in not_hers.output

    code, fetched = await buf_curl(stack.users, f"{users}/GetUser", {"id": user_id}, grace)
    assert code == 0, fetched
    assert json.loads(fetched)["email"] == email
    code, listed = await buf_curl(stack.ai, f"{ai}/ListAnalyses", {}, grace)
    assert code == 0, listed
    assert [a["id"] for a in json.loads(listed)["analyses"]] == [
        for_her.json()["id"],
        analysed.json()["id"],
    ]
    code, missing = await buf_curl(
        stack.users, f"{users}/GetUser", {"id": str(uuid.uuid4())}, grace
    )
    assert code != 0 and "not_found" in missing

    # Update yourself (with the etag), stream an analysis, delete yourself.
    renamed = await grpcurl(
        stack.users,
        f"{users}/UpdateUser",
        data={
            "user": {"id": user_id, "name": "Grace H.", "etag": created.json()["etag"]},
            "update_mask": {"paths": ["name"]},
        },
        token=grace,
    )
    assert renamed.json()["name"] == "Grace H.", renamed.output
    stale = await grpcurl(
        stack.users,
        f"{users}/UpdateUser",
        data={
            "user": {"id": user_id, "name": "X", "etag": created.json()["etag"]},
            "update_mask": {"paths": ["name"]},
        },
        token=grace,
    )
    assert "Code: Aborted" in stale.output
    streamed = await grpcurl(
        stack.ai, f"{ai}/StreamAnalyzeText", data={"text": "Dreadful."}, token=grace
    )
    assert streamed.exit_code == 0 and '"analysis"' in streamed.output, streamed.output
    code, deleted = await buf_curl(stack.users, f"{users}/DeleteUser", {"id": user_id}, grace)
    assert code == 0 and "deleteTime" in deleted.replace("delete_time", "deleteTime"), deleted
    # Her token's session ended with her account: at once on the users service, on
    # the ai service once its memory of the live session runs out (AI_AUTH_CACHE_SECONDS).
    # (Reflection would refuse her token too: the schema comes from the protos.)
    at_once = await grpcurl(
        stack.users, f"{users}/GetUser", data={"id": user_id}, token=grace, reflection=False
    )
    assert "Code: Unauthenticated" in at_once.output and "SESSION_ENDED" in at_once.output
    deadline = time.monotonic() + 10
    while True:
        after = await grpcurl(stack.ai, f"{ai}/ListAnalyses", token=grace, reflection=False)
        if "SESSION_ENDED" in after.output or time.monotonic() > deadline:
            break
    assert "Code: Unauthenticated" in after.output and "SESSION_ENDED" in after.output
    gone = await grpcurl(
        stack.users,
        f"{users}/AuthenticateUser",
        data={"email": email, "password": PASSWORD},
        token=desk,
    )
    assert "Code: Unauthenticated" in gone.output


async def test_the_stack_as_make_run_starts_it(database_url: str) -> None:
    # Both services in one database (on SQLite, and on PostgreSQL): each keeps its own
    # tables and its own migration history.
    env = {"USERS_DATABASE_URL": database_url, "AI_DATABASE_URL": database_url}
    async with make_run(env) as stack:
        assert "REST API" in stack.output and "grpcurl" in stack.output and "curl" in stack.output
        assert stack.prefixed("users") and stack.prefixed("ai") and stack.prefixed("gateway")
        ISSUED.clear()
        await rest_journey(stack)
        await grpc_journey(stack)
        # Ctrl-C: the terminal sends SIGINT to the whole foreground process group.
        os.killpg(stack.process.pid, signal.SIGINT)
        await assert_stops_cleanly(stack)
    # No password, token or key in any log line of the whole run.
    assert len(ISSUED) >= 10
    leaked = [t[:12] for t in ISSUED if t in stack.output or t.split(".")[-1] in stack.output]
    assert not leaked, leaked
    assert PASSWORD not in stack.output
    assert "PRIVATE KEY" not in stack.output


async def test_sigterm_answers_every_accepted_request(tmp_path: Any) -> None:
    upstream_latency = 2.0
    with FakeAnthropic() as fake:
        fake.set_default(Reply.slow(upstream_latency, then=Reply.json_output(GOOD)))
        env = {
            **fake.env(),
            "USERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/users.db",
            "AI_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/ai.db",
        }
        async with (
            make_run(env) as stack,
            httpx.AsyncClient(base_url=stack.url, timeout=30) as client,
        ):
            _, token = await sign_up_and_log_in(
                client, f"in-flight-{uuid.uuid4().hex[:8]}@example.com"
            )
            in_flight = [
                asyncio.ensure_future(
                    client.post("/v1/analyses", json={"text": f"Text {i}."}, headers=bearer(token))
                )
                for i in range(5)
            ]
            await fake.wait_for_requests_async(5)
            signalled = time.monotonic()
            stack.process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*in_flight)
            assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
            await assert_stops_cleanly(stack)
            # The default grace period is 10 s; the calls needed about 2.
            assert time.monotonic() - signalled < 10


async def test_when_one_service_dies_the_others_stop_and_it_is_named(tmp_path: Any) -> None:
    env = {
        "USERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/users.db",
        "AI_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/ai.db",
    }
    async with make_run(env) as stack:
        (ai,) = [p for p in descendants(stack.process.pid) if "-m ai_service" in command_line(p)]
        os.kill(ai, signal.SIGKILL)
        code = await asyncio.wait_for(stack.process.wait(), 60)
        assert code != 0
        assert "stack   | ai exited with code -9; stopped the others" in stack.output
        assert any("Finished server process" in line for line in stack.prefixed("gateway"))
        assert any("servicekit.server [-] stopped" in line for line in stack.prefixed("users"))
