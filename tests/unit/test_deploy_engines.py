"""The Dockerfile and docker-compose.yml work the same on Docker and on podman.

Defects a real run found (`make compose-e2e`, deploy/compose-e2e), checked here without
an engine so they cannot come back unnoticed:

- podman's Docker-compatible API before 5.8 joins a healthcheck's CMD arguments and
  splits them again on whitespace (containers/podman#26519);
- `# syntax=docker/dockerfile:1` makes BuildKit pull its frontend from Docker Hub, so
  an offline Docker build fails;
- pip's isolated build environment ignores `-c constraints.txt`, so the build backend
  was resolved fresh on every build;
- `useradd --system` with uid 10001 warns on every build (above SYS_UID_MAX).

And the override make compose-e2e runs the stack with changes where its images come
from and the gateway's host port, nothing else.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.support import deploy

E2E_OVERRIDE = deploy.ROOT / "deploy" / "compose-e2e" / "compose.e2e.yml"
# shadow's login.defs defaults on Debian: system accounts live in 100-999.
SYS_ID_MIN, SYS_ID_MAX = 100, 999
# What the override may set on a service.
OVERRIDDEN = {"image", "pull_policy"}


def podman_compat_split(test: list[str]) -> list[str]:
    """A healthcheck test as podman < 5.8's Docker API turns it into its own.

    It joins the test with spaces (pkg/api/handlers/compat), then splits the string at
    the first space: `CMD` is split again on every whitespace (strings.Fields),
    `CMD-SHELL` keeps the rest as one shell command.
    """
    joined = " ".join(test)
    kind, _, rest = joined.partition(" ")
    if kind == "CMD":
        return ["CMD", *joined.split()[1:]]
    assert kind == "CMD-SHELL", kind
    return ["CMD-SHELL", rest]


@pytest.mark.parametrize(
    ("test", "survives"),
    [
        (["CMD", "pg_isready", "-h", "127.0.0.1"], True),
        (["CMD", "python", "-c", "import sys; sys.exit(0)"], False),
        (["CMD-SHELL", "python -c 'import sys; sys.exit(0)'"], True),
    ],
)
def test_the_podman_split_is_emulated_as_it_breaks(test: list[str], survives: bool) -> None:
    assert (podman_compat_split(test) == test) is survives


def test_every_healthcheck_reaches_podman_as_docker_runs_it() -> None:
    services = deploy.compose()["services"]
    checked = 0
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        if test is None:
            continue
        assert isinstance(test, list), f"{name}: a string test means CMD-SHELL; say so"
        assert podman_compat_split(test) == test, (
            f"{name}: podman's Docker API would run {podman_compat_split(test)}; write the "
            "check without spaces inside its arguments, or as CMD-SHELL"
        )
        checked += 1
    assert checked >= 4, "postgres, users, ai and the gateway each have one"


def test_the_dockerfile_needs_no_frontend_image() -> None:
    # A parser directive is only read before the first instruction or comment line
    # that is not one; any `# syntax=` there makes BuildKit pull that image.
    for line in deploy.DOCKERFILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*syntax\s*=", line, re.IGNORECASE), line


def constraints_path_in_builder(builder: deploy.Stage) -> tuple[str, int]:
    """Where the builder copies constraints.txt, and the index of that COPY."""
    workdir = PurePosixPath("/")
    for index, instruction in enumerate(builder.instructions):
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.args.strip()
        if instruction.keyword == "COPY":
            _, sources, destination = deploy.copy_parts(instruction)
            if "constraints.txt" in sources:
                target = workdir / destination
                if destination.endswith("/") or len(sources) > 1:
                    target = target / "constraints.txt"
                return str(target), index
    raise AssertionError("the builder never copies constraints.txt")


def test_the_build_backend_is_pinned_inside_pips_isolated_build() -> None:
    builder = deploy.dockerfile().stages[0]
    path, copied_at = constraints_path_in_builder(builder)
    first_install = next(
        i
        for i, instruction in enumerate(builder.instructions)
        if instruction.keyword == "RUN" and "pip install" in instruction.args
    )
    env: dict[str, str] = {}
    for instruction in builder.instructions[copied_at:first_install]:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                env[key] = value
    # pip < 25.3 constrains the build environment with PIP_CONSTRAINT, pip >= 25.3
    # with PIP_BUILD_CONSTRAINT only: both, once the file is there (before it, the
    # venv's ensurepip would fail on the missing file).
    assert env.get("PIP_CONSTRAINT") == path
    assert env.get("PIP_BUILD_CONSTRAINT") == path
    for instruction in builder.instructions[:copied_at]:
        assert "CONSTRAINT" not in instruction.args, "set before the file exists"
    # ... and the file pins every build requirement.
    with (deploy.ROOT / "pyproject.toml").open("rb") as f:
        requires = tomllib.load(f)["build-system"]["requires"]
    pins = pinned(deploy.ROOT / "constraints.txt")
    for requirement in requires:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        assert name in pins, f"constraints.txt does not pin the build requirement {name}"


def pinned(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def account_commands(stage: deploy.Stage) -> list[list[str]]:
    commands = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run.args):
            words = shlex.split(command)
            if words and words[0] in ("useradd", "groupadd"):
                commands.append(words)
    return commands


def test_the_image_user_is_made_without_a_warning() -> None:
    commands = account_commands(deploy.dockerfile().final)
    assert {c[0] for c in commands} == {"useradd", "groupadd"}
    for words in commands:
        flags = {"--uid", "-u"} if words[0] == "useradd" else {"--gid", "-g"}
        ids = [int(words[i + 1]) for i, w in enumerate(words) if w in flags]
        system = "--system" in words or "-r" in words
        for number in ids:
            # A system account outside SYS_*_MIN..MAX makes shadow warn on every build.
            assert not system or SYS_ID_MIN <= number <= SYS_ID_MAX, (words[0], number)
    user = deploy.dockerfile().final.all("USER")[-1].args.split(":")[0]
    useradd = next(c for c in commands if c[0] == "useradd")
    assert user in useradd, "the USER is the account useradd makes"


class _ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads it: with its `!override` and `!reset` merge tags."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!override", _tagged)
_ComposeLoader.add_constructor("!reset", _tagged)


def test_the_e2e_override_changes_only_the_images_and_the_gateways_port() -> None:
    raw = E2E_OVERRIDE.read_text()
    # A SafeLoader subclass: no arbitrary objects.
    override = yaml.load(raw, Loader=_ComposeLoader)
    services = deploy.raw_compose()["services"]
    assert set(override) <= {"services"} | {k for k in override if k.startswith("x-")}
    assert set(override["services"]) == set(services), "every service, and no other"
    for name, service in override["services"].items():
        changed = set(service) - OVERRIDDEN
        if name == "gateway":
            assert changed == {"ports"}
            (port,) = service["ports"]
            # The gateway's own port inside; only the host's side moves.
            assert port["target"] == deploy.ports(services["gateway"])[0].target
            assert port["host_ip"] == "127.0.0.1"
            assert "ports: !override" in raw, "merged, the fixed 8000 would stay"
        else:
            assert not changed, f"{name}: {changed}"
        assert service["pull_policy"] == "never"
        assert re.fullmatch(r"\$\{E2E_\w+:\?[^}]+\}", service["image"]), service["image"]
