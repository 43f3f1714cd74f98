"""The README's first steps, run as a newcomer runs them, against `make run`; and what
`make run` promises around them: quiet start-up, SIGHUP, no orphans, taken ports."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from pathlib import Path

from tests.conftest import ROOT
from tests.support.harness import free_port, run
from tests.support.processes import clean_env
from tests.support.stack import (
    RunningStack,
    assert_stops_cleanly,
    command_line,
    descendants,
    exited,
    make_run,
    readme_first_steps,
)


def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {
        "USERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/users.db",
        "AI_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/ai.db",
    }


def first_steps_for(stack: RunningStack) -> str:
    """The README's block with this stack's addresses in place of the defaults."""
    block = readme_first_steps()
    for default, own in (
        ("http://127.0.0.1:8000", stack.url),
        ("127.0.0.1:50051", stack.users),
        ("127.0.0.1:50052", stack.ai),
    ):
        assert default in block
        block = block.replace(default, own)
    return block


async def test_the_readmes_first_steps_work_as_written(tmp_path: Path) -> None:
    async with make_run(sqlite_env(tmp_path)) as stack:
        # Start-up asked /readyz once or twice, not once per 200 ms.
        ready = next(i for i, line in enumerate(stack.lines) if line.endswith("| ready"))
        polls = [
            line for line in stack.lines[:ready] if "/readyz" in line or "Health/Check" in line
        ]
        assert 1 <= len(polls) <= 6, polls
        script = tmp_path / "first-steps.sh"
        script.write_text("set -euo pipefail\n" + first_steps_for(stack))
        code, output = await run(["bash", str(script)], stack.env, cwd=ROOT, timeout=120)
    assert code == 0, output
    # Signed up, logged in, read, analysed (plain and streamed with partials), refreshed.
    assert '"email":"ada@example.com"' in output
    assert re.search(r'"sentiment":"positive"', output), output
    events = re.findall(r"^event: (\w+)$", output, re.MULTILINE)
    assert events[0] == "partial" and events[-2:] == ["analysis", "done"], events
    assert output.count('"access_token"') == 1 and '"refresh_token"' in output
    # grpcurl: the rename with the field mask, and a stream with its partials.
    assert '"name": "Ada L."' in output, output
    assert '"partial"' in output and '"analysis"' in output


async def test_closing_the_terminal_stops_the_stack(tmp_path: Path) -> None:
    async with make_run(sqlite_env(tmp_path)) as stack:
        services = service_pids(stack)
        # A closed terminal hangs up its whole foreground process group.
        os.killpg(stack.process.pid, signal.SIGHUP)
        await assert_stops_cleanly(stack)
    async with asyncio.timeout(5):
        await asyncio.gather(*(exited(pid) for pid in services))


async def test_the_services_die_with_make_run_however_it_dies(tmp_path: Path) -> None:
    async with make_run(sqlite_env(tmp_path)) as stack:
        services = service_pids(stack)
        assert len(services) == 3
        # No handler runs on SIGKILL: only the kernel's parent-death signal is left.
        (supervisor,) = [p for p in descendants(stack.process.pid) if "stack.py" in command_line(p)]
        os.kill(supervisor, signal.SIGKILL)
        async with asyncio.timeout(30):
            await asyncio.gather(*(exited(pid) for pid in services))


async def test_killing_make_stops_the_stack_gracefully(tmp_path: Path) -> None:
    async with make_run(sqlite_env(tmp_path)) as stack:
        services = service_pids(stack)
        # make dies at once; its child, the supervisor, gets SIGTERM from the kernel.
        os.kill(stack.process.pid, signal.SIGKILL)
        await stack.make.wait_for_line(re.compile(r"^stack\s+\| stopped$"), 30)
        async with asyncio.timeout(30):
            await asyncio.gather(*(exited(pid) for pid in services))
    assert any("Finished server process" in line for line in stack.prefixed("gateway"))


async def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        env = {**sqlite_env(tmp_path), "GATEWAY_ADDR": taken}
        code, output = await make_run_to_its_end(env)
    assert code != 0
    assert f"{taken} (GATEWAY_ADDR, the gateway service) is in use" in output
    assert "ready" not in output and "users   |" not in output and "migration" not in output
    assert not (tmp_path / "users.db").exists()


async def make_run_to_its_end(env: dict[str, str]) -> tuple[int, str]:
    """`make run` on free ports but for what `env` says, run to its end."""
    users, ai = (f"127.0.0.1:{free_port()}" for _ in range(2))
    full = clean_env({"USERS_ADDR": users, "AI_ADDR": ai, **env})
    return await run(["make", "--no-print-directory", "run"], full, cwd=ROOT, timeout=60)


def service_pids(stack: RunningStack) -> list[int]:
    modules = ("-m users_service", "-m ai_service", "-m gateway")
    return [p for p in descendants(stack.process.pid) if any(m in command_line(p) for m in modules)]
