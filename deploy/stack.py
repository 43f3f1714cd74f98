"""Runs the whole stack - users, ai and the gateway - as three processes: `make run`.

    python deploy/stack.py

Checks that its three ports are free (naming the one that is not) before it starts
anything, applies both services' migrations (SQLite under ./data unless
USERS_DATABASE_URL / AI_DATABASE_URL say otherwise), starts the three services with
their output prefixed by their name, waits until each of its own processes says it
serves and the gateway's /readyz answers 200, and prints where everything is and the
first steps to try. Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops all three
gracefully and exits 0; if one of them dies, the others are stopped and the command
exits 1, naming the one that died. The services die with this process however it dies,
and it stops as on SIGTERM when make, its parent, dies (servicekit.children), so none
is ever left serving without it.

Every setting comes from the environment, as for the services themselves; the gateway
is pointed at the users and ai addresses unless GATEWAY_USERS_TARGET / GATEWAY_AI_TARGET
are set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from servicekit.children import die_with_parent, stop_with_parent
from servicekit.server import parse_serving

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
# Signals that stop the stack: Ctrl-C, a `kill`, the terminal closed.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The first steps, as the README's quick start shows them for the default addresses
# (tests/unit/test_stack_journey.py keeps the two the same).
JOURNEY = """\
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
curl -s -w '\\n' {rest}/v1/users -H 'content-type: application/json' \\
  -d '{"email": "ada@example.com", "name": "Ada", "password": "correct horse"}'
LOGIN=$(curl -s {rest}/v1/auth/token -d grant_type=password \\
  -d username=ada@example.com -d 'password=correct horse')
TOKEN=$(echo "$LOGIN" | field access_token); REFRESH=$(echo "$LOGIN" | field refresh_token)
AUTH="authorization: Bearer $TOKEN"
curl -s -w '\\n' {rest}/v1/users/me -H "$AUTH"
curl -s -w '\\n' {rest}/v1/analyses -H "$AUTH" -H 'content-type: application/json' \\
  -d '{"text": "The update is fast. The new screen is lovely."}'
curl -sN {rest}/v1/analyses:stream -H "$AUTH" -H 'content-type: application/json' \\
  -d '{"text": "Setup was slow. Support was kind and quick."}'
curl -s -w '\\n' {rest}/v1/auth/token -d grant_type=refresh_token -d "refresh_token=$REFRESH"
ME=$(curl -s {rest}/v1/users/me -H "$AUTH" | field id)
.venv/bin/grpcurl -plaintext -H "$AUTH" \\
  -d '{"user": {"id": "'$ME'", "name": "Ada L."}, "update_mask": {"paths": ["name"]}}' \\
  {users} users.v1.UsersService/UpdateUser
.venv/bin/grpcurl -plaintext -H "$AUTH" -d '{"text": "Setup was slow. Support was kind."}' \\
  {ai} ai.v1.AnalysisService/StreamAnalyzeText
"""


def journey(rest: str, users: str, ai: str) -> str:
    """The first steps against a stack at these addresses (`rest`: the gateway's URL)."""
    # Not str.format: the JSON bodies are full of braces.
    return JOURNEY.replace("{rest}", rest).replace("{users}", users).replace("{ai}", ai)


@dataclass
class Service:
    name: str
    module: str
    # The address the service logs once it serves.
    address: str
    process: asyncio.subprocess.Process | None = None
    relay: asyncio.Task[None] | None = field(default=None, repr=False)
    serving: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


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


def port_in_use(address: str) -> bool:
    """Whether something listens on `address` (host:port) already; port 0 never is."""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return False
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers bind: a port left in TIME_WAIT by a stopped stack is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return True
    return False


def check_ports(services: list[Service]) -> None:
    """Refuse to start, naming the address, when a port is taken (another stack?)."""
    for service in services:
        if port_in_use(service.address):
            variable = f"{service.name.upper()}_ADDR"
            raise SystemExit(
                f"stack   | {service.address} ({variable}, the {service.name} service) is "
                f"in use, by another `make run` perhaps: stop it, or set {variable} to "
                "another address"
            )


async def relay(service: Service, stream: asyncio.StreamReader) -> None:
    """Copy a child's output line by line, each prefixed with the child's name; note
    when it says that it serves."""
    while line := await stream.readline():
        text = line.decode(errors="replace")
        sys.stdout.write(f"{service.name:<{WIDTH}} | {text}")
        sys.stdout.flush()
        if not service.serving.is_set() and parse_serving(text.rstrip()) is not None:
            service.serving.set()


async def spawn(service: Service, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *die_with_parent([sys.executable, "-m", service.module, *args]),
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Its own process group: a Ctrl-C in the terminal reaches this supervisor,
        # which then stops each child in order, instead of every process at once.
        start_new_session=True,
    )
    assert process.stdout is not None
    service.relay = asyncio.create_task(relay(service, process.stdout))
    return process


async def run_once(service: Service, *args: str) -> int:
    """`python -m <service> <args>` to completion, its output relayed; its exit code."""
    process = await spawn(service, *args)
    code = await process.wait()
    if service.relay is not None:
        await service.relay
    return code


async def migrate(service: Service) -> None:
    code = await run_once(service, "migrate")
    if code != 0:
        raise SystemExit(f"{service.name}: `python -m {service.module} migrate` failed ({code})")


async def ensure_gateway_account(users: Service) -> None:
    """Give the gateway its service account, its secret in a file only it reads.

    Run on every start: a file that already holds a working secret is kept.
    """
    if os.environ.get("GATEWAY_CLIENT_SECRET"):
        return
    code = await run_once(
        users,
        "create-service-account",
        os.environ.get("GATEWAY_CLIENT_ID", "gateway"),
        "--scope",
        ",".join(GATEWAY_SCOPES),
        "--secret-file",
        GATEWAY_SECRET_FILE,
        "--replace",
    )
    if code != 0:
        raise SystemExit(f"users: creating the gateway's service account failed ({code})")


def ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://{GATEWAY_ADDR}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def wait_ready(services: list[Service]) -> None:
    """Until every process of this stack serves and the gateway finds both upstreams
    serving. /readyz is asked only once all three said they serve, on the ports checked
    free before: so it reaches this stack's gateway, and each log gets a line or two
    rather than one per poll of the whole start."""
    async with asyncio.timeout(READY_TIMEOUT):
        for service in services:
            await service.serving.wait()
        # Another process's HTTP answer: there is no event to await.
        while not await asyncio.to_thread(ready):  # noqa: ASYNC110
            await asyncio.sleep(0.2)


def banner() -> None:
    rest = f"http://{GATEWAY_ADDR}"
    steps = journey(rest, USERS_ADDR, AI_ADDR).replace("\n", "\n    ").rstrip()
    print(
        f"""
  REST API        {rest}
  API docs        {rest}/docs
  users (gRPC)    {USERS_ADDR}
  ai (gRPC)       {AI_ADDR}

  first steps (the README's quick start explains each):
    {steps}

  Ctrl-C stops everything; `rm -rf data` (stopped) starts afresh.
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
        Service("users", "users_service", USERS_ADDR),
        Service("ai", "ai_service", AI_ADDR),
        Service("gateway", "gateway", GATEWAY_ADDR),
    ]
    check_ports(services)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    # Killing make (its parent) stops the stack as a SIGTERM does.
    stop_with_parent()

    started = time.monotonic()
    for service in services[:2]:
        await migrate(service)
    await ensure_gateway_account(services[0])
    for service in services:
        service.process = await spawn(service)
    died = asyncio.ensure_future(first_exit(services))
    stop_requested = asyncio.ensure_future(stopping.wait())
    try:
        starting = asyncio.ensure_future(wait_ready(services))
        await asyncio.wait({starting, died, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and not died.done():
            if starting.exception() is not None:
                raise SystemExit(f"the stack was not ready after {READY_TIMEOUT:.0f}s")
            say(f"started in {time.monotonic() - started:.1f}s")
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
