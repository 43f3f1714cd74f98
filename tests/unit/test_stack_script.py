"""deploy/stack.py's pieces that need no running stack: the first steps it prints (the
README's), and the port check that runs before it starts anything."""

from __future__ import annotations

import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.stack import readme_first_steps, stack_module

stack = stack_module()


def test_the_readme_shows_the_first_steps_the_banner_prints() -> None:
    defaults = stack.journey("http://127.0.0.1:8000", "127.0.0.1:50051", "127.0.0.1:50052")
    assert readme_first_steps() == defaults
    # What the issue asks of them: a token variable, a stream, grpcurl's mask form.
    for needed in ("$TOKEN", "curl -sN", "/v1/analyses:stream", '"update_mask": {"paths"'):
        assert needed in defaults


def test_the_banner_prints_the_first_steps_for_its_addresses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack.banner()
    printed = capsys.readouterr().out
    steps = stack.journey(f"http://{stack.GATEWAY_ADDR}", stack.USERS_ADDR, stack.AI_ADDR)
    shown = [line.strip() for line in printed.splitlines()]
    assert all(line.strip() in shown for line in steps.splitlines())
    assert printed.rstrip().endswith("stack   | ready")


def test_a_port_in_use_is_named_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        assert stack.port_in_use(address)
        services = [stack.Service("users", "users_service", "127.0.0.1:0")]
        services.append(stack.Service("gateway", "gateway", address))
        with pytest.raises(SystemExit) as refused:
            stack.check_ports(services)
        message = str(refused.value)
        assert address in message and "GATEWAY_ADDR" in message and "in use" in message
    # Closed: free again (a stopped stack's ports in TIME_WAIT count as free too).
    assert not stack.port_in_use(address)
    assert not stack.port_in_use("127.0.0.1:0")


def make_dry_run(target: str, venv: Path) -> str:
    done = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_make_run_installs_what_running_needs_and_make_test_adds_the_rest(tmp_path: Path) -> None:
    run = make_dry_run("run", tmp_path / "venv")
    # The first run says what it does and how long it took; no dev tools.
    assert "creating" in run and "took" in run
    assert "-e '.[run]'" in run and ".[dev]" not in run
    checks = make_dry_run("lint", tmp_path / "venv")
    assert "-e '.[run]'" in checks and "-e '.[dev]'" in checks
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    run_extra = extras["optional-dependencies"]["run"]
    assert [r for r in run_extra if r.startswith("grpcurl")], run_extra
    assert "tandem[run]" in extras["optional-dependencies"]["dev"]
