"""Runs the whole stack - users, ai and the gateway - as three processes: `make run`.

    python deploy/stack.py

Applies both services' migrations (SQLite under ./data unless USERS_DATABASE_URL /
AI_DATABASE_URL say otherwise), starts the three services with their output prefixed by
their name, waits until the gateway's /readyz answers 200, and prints where everything
is. Ctrl-C or SIGTERM stops all three gracefully and exits 0; if one of them dies, the
others are stopped and the command exits 1, naming the one that died.

Every setting comes from the environment, as for the services themselves; the gateway
is pointed at the users and ai addresses unless GATEWAY_USERS_TARGET / GATEWAY_AI_TARGET
are set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

USERS_ADDR = os.environ.get("USERS_ADDR", "127.0.0.1:50051")
AI_ADDR = os.environ.get("AI_ADDR", "127.0.0.1:50052")
GATEWAY_ADDR = os.environ.get("GATEWAY_ADDR", "127.0.0.1:8000")
# How long the services may take to become ready, and to stop after SIGTERM.
READY_TIMEOUT = float(os.environ.get("STACK_READY_TIMEOUT_SECONDS", "60"))
STOP_TIMEOUT = float(os.environ.get("STACK_STOP_TIMEOUT_SECONDS", "30"))
WIDTH = len("gateway")
# The gateway's service account (gateway.settings.GATEWAY_SCOPES).
GATEWAY_SCOPES = ("users.signup", "users.login", "sessions.read")
GATEWAY_SECRET_FILE = os.environ.get("GATEWAY_CLIENT_SECRET_FILE", "./data/gateway-client-secret")


@dataclass
class Service:
    name: str
    module: str
    process: asyncio.subprocess.Process | None = None
    relay: asyncio.Task[None] | None = field(default=None, repr=False)


def say(message: str) -> None:
    print(f"{'stack':<{WIDTH}} | {message}", flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("USERS_ADDR", USERS_ADDR)
    env.setdefault("AI_ADDR", AI_ADDR)
    env.setdefault("GATEWAY_ADDR", GATEWAY_ADDR)
    env.setdefault("GATEWAY_USERS_TARGET", USERS_ADDR)
    env.setdefault("GATEWAY_AI_TARGET", AI_ADDR)
    env.setdefault("GATEWAY_CLIENT_SECRET_FILE", GATEWAY_SECRET_FILE)
    env.setdefault("AI_USERS_TARGET", USERS_ADDR)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def relay(name: str, stream: asyncio.StreamReader) -> None:
    """Copy a child's output line by line, each line prefixed with the child's name."""
    while line := await stream.readline():
        sys.stdout.write(f"{name:<{WIDTH}} | {line.decode(errors='replace')}")
        sys.stdout.flush()


async def spawn(service: Service, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        service.module,
        *args,
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Its own process group: a Ctrl-C in the terminal reaches this supervisor,
        # which then stops each child in order, instead of every process at once.
        start_new_session=True,
    )
    assert process.stdout is not None
    service.relay = asyncio.create_task(relay(service.name, process.stdout))
    return process


async def migrate(service: Service) -> None:
    process = await spawn(service, "migrate")
    code = await process.wait()
    if service.relay is not None:
        await service.relay
    if code != 0:
        raise SystemExit(f"{service.name}: `python -m {service.module} migrate` failed ({code})")


async def ensure_gateway_account(users: Service) -> None:
    """Give the gateway its service account, its secret in a file only it reads.

    Run on every start: a file that already holds a working secret is kept.
    """
    if os.environ.get("GATEWAY_CLIENT_SECRET"):
        return
    process = await spawn(
        users,
        "create-service-account",
        os.environ.get("GATEWAY_CLIENT_ID", "gateway"),
        "--scope",
        ",".join(GATEWAY_SCOPES),
        "--secret-file",
        GATEWAY_SECRET_FILE,
        "--replace",
    )
    code = await process.wait()
    if users.relay is not None:
        await users.relay
    if code != 0:
        raise SystemExit(f"users: creating the gateway's service account failed ({code})")


def ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://{GATEWAY_ADDR}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def wait_ready(services: list[Service], died: asyncio.Task[Service]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not await asyncio.to_thread(ready):
        if died.done():
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the stack was not ready after {READY_TIMEOUT:.0f}s")
        await asyncio.sleep(0.2)


def banner() -> None:
    rest = f"http://{GATEWAY_ADDR}"
    print(
        f"""
  REST API        {rest}
  API docs        {rest}/docs
  users (gRPC)    {USERS_ADDR}
  ai (gRPC)       {AI_ADDR}

  try:
    curl -s -X POST {rest}/v1/users -H 'content-type: application/json' \\
      -d '{{"email": "ada@example.com", "name": "Ada", "password": "correct horse"}}'
    curl -s -X POST {rest}/v1/auth/token -d grant_type=password \\
      -d username=ada@example.com -d 'password=correct horse'
    TOKEN=...   # the access_token of the answer above
    .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" {AI_ADDR} list
    .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" \\
      -d '{{"page_size": 5}}' {AI_ADDR} ai.v1.AnalysisService/ListAnalyses

  Ctrl-C stops everything.
""",
        flush=True,
    )
    # Last, so whoever waits for this line has the addresses above already.
    say("ready")


async def first_exit(services: list[Service]) -> Service:
    waits = {asyncio.ensure_future(s.process.wait()): s for s in services if s.process is not None}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return waits[next(iter(done))]


async def stop(services: list[Service]) -> None:
    """Stop the children one by one, the gateway first.

    The gateway drains its in-flight requests while the services still answer them;
    only then are the services stopped, so no accepted request loses its upstream.
    """
    for service in reversed(services):
        process = service.process
        if process is None:
            continue
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            say(f"{service.name} did not stop within {STOP_TIMEOUT:.0f}s; killing it")
            process.kill()
            await process.wait()
        if service.relay is not None:
            await service.relay


async def main() -> int:
    services = [
        Service("users", "users_service"),
        Service("ai", "ai_service"),
        Service("gateway", "gateway"),
    ]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)

    for service in services[:2]:
        await migrate(service)
    await ensure_gateway_account(services[0])
    for service in services:
        service.process = await spawn(service)
    died = asyncio.ensure_future(first_exit(services))
    stop_requested = asyncio.ensure_future(stopping.wait())
    try:
        starting = asyncio.ensure_future(wait_ready(services, died))
        await asyncio.wait({starting, died, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and not died.done():
            starting.result()
            banner()
        else:
            starting.cancel()
        await asyncio.wait({died, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_requested.cancel()
        if not died.done():
            died.cancel()
        say("stopping")
        await stop(services)

    if died.done() and not died.cancelled() and not stopping.is_set():
        dead = died.result()
        assert dead.process is not None
        say(f"{dead.name} exited with code {dead.process.returncode}; stopped the others")
        return 1
    say("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
