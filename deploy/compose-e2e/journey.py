"""The end-to-end journey of `make compose-e2e`, against the compose stack run.sh started.

    journey.py --gateway URL --network NAME --label K=V --image IMAGE --grpcurl PATH
        -- COMPOSE...

COMPOSE... is the compose command line that started the stack (binary, project and
files), used to scale it and read its containers. Each check prints one `ok:` line;
the first that fails raises, and run.sh tears the stack down either way.

1. Through the gateway, in the containers: sign up, a token, /v1/users/me, an
   analysis, a streamed analysis, the list of both.
2. grpcurl on the compose network (a container of its own, beside the services),
   addressing the services by their compose names: refused without a token, and with
   the user's token (every RPC needs `authorization: Bearer`; the stack is plaintext)
   the user from the users service and both analyses from the ai service.
3. `--scale users=2`: both replicas answer the gateway's calls (their own logs say so).
4. SIGTERM to one replica in the middle of a load of reads: every read succeeds, the
   replica drains and exits 0, the gateway stays ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2

from servicekit.logs import message_of
from tandem_protos.ai.v1 import analysis_pb2
from tandem_protos.users.v1 import auth_pb2, users_pb2

PASSWORD = "correct horse battery staple"
# A call a users replica answered, from its access log (servicekit's access lines).
ANSWERED = re.compile(r"/users\.v1\.(UsersService|AuthService)/\w+ OK")
# grpcurl exits with 64 + the gRPC status code when a call fails.
UNAUTHENTICATED_EXIT = 64 + 16
READY_TIMEOUT_S = 120.0


class JourneyFailed(Exception):
    """A check of the journey failed: what was expected, and what came instead."""


def check(condition: bool, message: object) -> None:
    if not condition:
        raise JourneyFailed(str(message))


@dataclass(frozen=True)
class Stack:
    gateway: str
    network: str
    image: str
    grpcurl: str
    label: str
    compose: tuple[str, ...]


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 300) -> str:
    """A command's output (stdout and stderr together); fails on a non-zero exit."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    output = done.stdout + done.stderr
    if check and done.returncode != 0:
        raise JourneyFailed(f"{' '.join(argv)} exited {done.returncode}:\n{output}")
    return output


def compose(stack: Stack, *args: str) -> str:
    return run([*stack.compose, *args])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expect(response: httpx.Response, status: int) -> Any:
    check(
        response.status_code == status,
        f"{response.request.method} {response.request.url.path}: "
        f"{response.status_code} {response.text[:500]}",
    )
    return response.json() if response.content else None


async def wait_ready(client: httpx.AsyncClient) -> None:
    """/readyz answers 200 once the gateway's upstreams both answer SERVING."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            ready = await client.get("/readyz")
            if ready.status_code == 200:
                return
            last = f"{ready.status_code} {ready.text[:200]}"
        except httpx.TransportError as error:
            last = repr(error)
        await asyncio.sleep(1)
    raise JourneyFailed(f"the gateway is not ready after {READY_TIMEOUT_S:.0f} s: {last}")


async def wait_ai_answers(client: httpx.AsyncClient, user: User) -> None:
    """The ai service verifies tokens with keys it fetches from the users service as soon
    as it serves; a container's first name lookup can outlast that fetch, and until a
    retry (0.25 s later, then doubling) succeeds the service answers 503 with Retry-After.
    /readyz does not cover that hop: a guard, as a client honouring Retry-After would
    wait (since the fetch at start it should no longer be needed)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        listed = await client.get("/v1/analyses", headers=bearer(user.token))
        if listed.status_code != 503 or time.monotonic() >= deadline:
            expect(listed, 200)
            return
        delay = min(float(listed.headers.get("retry-after", "1")), 5.0)
        ok(f"the ai service is not ready for tokens yet: {listed.json().get('reason')}")
        await asyncio.sleep(delay)


@dataclass(frozen=True)
class Event:
    name: str
    data: Any


async def read_events(response: httpx.Response) -> list[Event]:
    """The server-sent events of a stream, in order."""
    events = []
    name, data = "message", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if data:
                events.append(Event(name, json.loads("\n".join(data))))
            name, data = "message", list[str]()
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
    if data:
        events.append(Event(name, json.loads("\n".join(data))))
    return events


@dataclass(frozen=True)
class User:
    id: str
    email: str
    token: str


async def rest_journey(client: httpx.AsyncClient) -> tuple[User, list[str]]:
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    created = expect(
        await client.post(
            "/v1/users", json={"email": email, "name": "Compose E2E", "password": PASSWORD}
        ),
        201,
    )
    ok(f"sign-up: 201, user {created['id']}")
    issued = expect(
        await client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
        ),
        200,
    )
    check(issued["token_type"].lower() == "bearer", issued)
    user = User(created["id"], email, issued["access_token"])
    ok(f"token: password grant, expires in {issued['expires_in']} s")
    me = expect(await client.get("/v1/users/me", headers=bearer(user.token)), 200)
    check(me["id"] == user.id and me["email"] == email, me)
    refused = await client.get("/v1/users/me")
    check(refused.status_code == 401, refused.text)
    ok("/v1/users/me: the signed-up user with the token, 401 without")

    await wait_ai_answers(client, user)
    plain = expect(
        await client.post(
            "/v1/analyses",
            json={"text": "A wonderful, delightful product. I love it."},
            headers=bearer(user.token),
        ),
        201,
    )
    check(plain["sentiment"] == "positive", plain)
    ok(f"analysis: 201, {plain['sentiment']} ({plain['id']})")
    async with client.stream(
        "POST",
        "/v1/analyses:stream",
        json={"text": "Terrible. It broke at once and support never answered."},
        headers=bearer(user.token),
    ) as streamed:
        if streamed.status_code != 200:
            raise JourneyFailed(
                f"stream: {streamed.status_code} {(await streamed.aread())[:500]!r}"
            )
        check(
            streamed.headers["content-type"].startswith("text/event-stream"),
            streamed.headers["content-type"],
        )
        events = await read_events(streamed)
    names = [e.name for e in events]
    check(names[-2:] == ["analysis", "done"], names)
    streamed_id = events[-2].data["id"]
    check(events[-2].data["sentiment"] == "negative", events[-2].data)
    ok(f"stream: {len(events)} events ({', '.join(dict.fromkeys(names))}), {streamed_id}")
    listed = expect(await client.get("/v1/analyses", headers=bearer(user.token)), 200)
    ids = [a["id"] for a in listed["analyses"]]
    check(ids == [streamed_id, plain["id"]], ids)
    ok("list: both analyses, newest first")
    return user, ids


def write_protoset(directory: Path) -> Path:
    """The services' protos, and what they import, as a descriptor set: how grpcurl
    knows the methods without reflection (which needs a token too)."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: FileDescriptor) -> None:
        if file.name not in files:
            for dependency in file.dependencies:
                add(dependency)
            files[file.name] = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(files[file.name])

    for module in (users_pb2, auth_pb2, analysis_pb2, error_details_pb2):
        add(module.DESCRIPTOR)
    path = directory / "tandem.protoset"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files.values()).SerializeToString())
    path.chmod(0o644)
    return path


def grpcurl(
    stack: Stack,
    target: str,
    method: str,
    data: Any,
    *,
    token: str | None,
    protoset: Path | None = None,
) -> tuple[int, str]:
    """grpcurl in a container of its own on the compose network: the services by their
    compose names, as the gateway reaches them (plaintext, as the stack serves). The
    methods come from the server's reflection, or from `protoset` when given."""
    mounts = ["--volume", f"{stack.grpcurl}:/usr/local/bin/grpcurl:ro"]
    if protoset is not None:
        mounts += ["--volume", f"{protoset}:/tmp/tandem.protoset:ro"]
    argv = [
        "podman",
        "run",
        "--rm",
        # run.sh removes whatever carries it, should this container outlive a failure.
        "--label",
        stack.label,
        "--network",
        stack.network,
        "--user",
        "10001:10001",
        "--read-only",
        "--cap-drop",
        "ALL",
        *mounts,
        "--entrypoint",
        "/usr/local/bin/grpcurl",
        stack.image,
        "-plaintext",
        "-max-time",
        "20",
    ]
    if token is not None:
        argv += ["-H", f"authorization: Bearer {token}"]
    if protoset is not None:
        argv += ["-protoset", "/tmp/tandem.protoset"]
    argv += ["-d", json.dumps(data), target, method]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr


def grpc_journey(stack: Stack, user: User, analyses: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="tandem-compose-e2e-") as directory:
        Path(directory).chmod(0o755)
        protoset = write_protoset(Path(directory))
        code, output = grpcurl(
            stack,
            "users:50051",
            "users.v1.UsersService/GetUser",
            {"id": user.id},
            token=None,
            protoset=protoset,
        )
    check(code == UNAUTHENTICATED_EXIT, f"without a token: exit {code}\n{output}")
    check("Unauthenticated" in output, output)
    ok("grpcurl users:50051 GetUser without a token: Unauthenticated")
    code, output = grpcurl(
        stack, "users:50051", "users.v1.UsersService/GetUser", {"id": user.id}, token=user.token
    )
    check(code == 0, f"GetUser: exit {code}\n{output}")
    got = json.loads(output)
    check(got["id"] == user.id and got["email"] == user.email, got)
    ok("grpcurl users:50051 GetUser with the user's bearer token (reflection too): the user")
    code, output = grpcurl(
        stack, "ai:50052", "ai.v1.AnalysisService/ListAnalyses", {"page_size": 5}, token=user.token
    )
    check(code == 0, f"ListAnalyses: exit {code}\n{output}")
    listed = [a["id"] for a in json.loads(output).get("analyses", [])]
    check(listed == analyses, listed)
    ok("grpcurl ai:50052 ListAnalyses with the user's bearer token: both analyses")


def replicas(stack: Stack, service: str) -> list[str]:
    """The running containers of a service, by compose's replica number."""
    ids = compose(stack, "ps", "--quiet", service).split()
    numbered = []
    for container in ids:
        number = run(
            [
                "podman",
                "inspect",
                "--format",
                '{{ index .Config.Labels "com.docker.compose.container-number" }}',
                container,
            ]
        ).strip()
        numbered.append((int(number), container))
    return [container for _, container in sorted(numbered)]


def answered(container: str, since: str) -> int:
    logs = run(["podman", "logs", "--since", since, container])
    return sum(bool(ANSWERED.search(message_of(line))) for line in logs.splitlines())


@dataclass
class Progress:
    """How many reads of a load are done; `reached` is set once `mark` of them are.
    `failures`: the problem of each read that was not 200, as the gateway said it."""

    mark: int = 0
    done: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    failures: list[str] = field(default_factory=list)


async def read_load(
    client: httpx.AsyncClient, user: User, callers: int, each: int, progress: Progress
) -> list[int]:
    """`callers` concurrent callers reading the user `each` times: the statuses."""

    async def caller() -> list[int]:
        statuses = []
        for _ in range(each):
            response = await client.get(f"/v1/users/{user.id}", headers=bearer(user.token))
            statuses.append(response.status_code)
            if response.status_code != 200:
                progress.failures.append(f"{response.status_code} {response.text[:300]}")
            progress.done += 1
            if progress.done >= progress.mark:
                progress.reached.set()
        return statuses

    batches = await asyncio.gather(*(caller() for _ in range(callers)))
    return [status for batch in batches for status in batch]


async def scale_journey(stack: Stack, client: httpx.AsyncClient, user: User) -> None:
    compose(
        stack,
        "up",
        "--detach",
        "--no-build",
        "--no-deps",
        "--wait",
        "--wait-timeout",
        "120",
        "--scale",
        "users=2",
        "users",
    )
    users = replicas(stack, "users")
    check(len(users) == 2, users)
    ok(f"--scale users=2: {len(users)} replicas healthy")
    # gRPC's DNS resolver asks again only when a connection is lost (the services
    # close each one after 5 minutes for this): restarted, the gateway sees both now.
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    compose(stack, "restart", "gateway")
    await wait_ready(client)
    statuses = await read_load(client, user, callers=8, each=15, progress=Progress())
    check(statuses == [200] * len(statuses), sorted(set(statuses)))
    served = [answered(container, since) for container in users]
    check(min(served) > 0, f"a replica answered nothing: {served}")
    ok(f"{len(statuses)} reads through the gateway; calls answered per replica: {served}")

    # SIGTERM (podman stop sends the image's stop signal, then waits) to replica 2
    # once a fifth of the reads are done.
    callers, each = 8, 30
    progress = Progress(mark=callers * each // 5)
    load = asyncio.ensure_future(read_load(client, user, callers, each, progress))
    await progress.reached.wait()
    victim = users[1]
    stopped_at = progress.done
    await asyncio.to_thread(run, ["podman", "stop", "--time", "15", victim])
    statuses = await load
    lost = [s for s in statuses if s != 200]
    check(not lost, f"{len(lost)} of {len(statuses)} reads failed: {progress.failures}")
    code = run(["podman", "inspect", "--format", "{{.State.ExitCode}}", victim]).strip()
    check(code == "0", f"the stopped replica exited {code}")
    # The image logs JSON (*_LOG_FORMAT=json): each line's message.
    lines = [message_of(line) for line in run(["podman", "logs", victim]).splitlines()]
    drained = [i for i, line in enumerate(lines) if "shutting down: in-flight calls" in line]
    finished = [i for i, line in enumerate(lines) if line.endswith("stopped")]
    check(bool(drained and finished) and drained[-1] < finished[-1], "\n".join(lines[-20:]))
    ok(
        f"SIGTERM to users replica 2 after {stopped_at} of {len(statuses)} reads: "
        "none lost, it drained and exited 0"
    )
    await wait_ready(client)
    after = await read_load(client, user, callers=4, each=5, progress=Progress())
    check(after == [200] * len(after), after)
    ok("the gateway stays ready on the remaining replica")


async def journey(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        await wait_ready(client)
        ok(f"gateway ready at {stack.gateway}")
        user, analyses = await rest_journey(client)
        grpc_journey(stack, user, analyses)
        await scale_journey(stack, client, user)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="the gateway's base URL")
    parser.add_argument("--network", required=True, help="the compose network's name")
    parser.add_argument("--image", required=True, help="the Tandem image (runs grpcurl)")
    parser.add_argument("--grpcurl", required=True, help="a static grpcurl binary")
    parser.add_argument("--label", required=True, help="KEY=VALUE for grpcurl's containers")
    parser.add_argument("compose", nargs="+", help="the compose command line, after --")
    args = parser.parse_args(argv)
    stack = Stack(
        args.gateway, args.network, args.image, args.grpcurl, args.label, tuple(args.compose)
    )
    asyncio.run(journey(stack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
