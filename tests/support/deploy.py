"""What the deploy files (Dockerfile, docker-compose.yml, deploy/kubernetes) must agree with.

No Docker engine or cluster runs the tests, so the deploy tests check the files against
the project itself: the commands they run are the project's real `python -m` entry
points (the ones the e2e tests start), every environment variable they set is a real
setting of that component, the ports are the settings' defaults. Everything here is
derived from the code (settings classes, protos, argparse) rather than restated.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from pydantic_settings import BaseSettings

from ai_service.settings import AiSettings
from gateway.routes import health as gateway_health
from gateway.settings import GatewaySettings
from servicekit import healthcheck, production
from servicekit.cli import Command
from servicekit.settings import load_settings
from tandem_protos.ai.v1 import analysis_pb2
from tandem_protos.users.v1 import users_pb2
from users_service import cli as users_cli
from users_service.settings import UsersSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes"

HEALTHCHECK_MODULE = "servicekit.healthcheck"
# Modules whose `python -m` reads no arguments at all: `--help` would start serving.
NO_ARGUMENTS = frozenset({"gateway"})
# Read by every process itself rather than by its settings class: production mode.
PROCESS_VARIABLES = frozenset({production.ENV_VARIABLE})
# The commands a module adds to servicekit.cli's serve and migrate, as it declares them.
EXTRA_COMMANDS: Mapping[str, Mapping[str, Command[Any]]] = {"users_service": users_cli.COMMANDS}


def settings_variables(settings: type[BaseSettings]) -> frozenset[str]:
    """Every environment variable `settings` reads: its prefix plus each field's name,
    or the field's alias (`ANTHROPIC_API_KEY`, a name kept from the SDK) instead."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for name, info in settings.model_fields.items():
        assert info.alias is None, f"{name} has an alias; derive its variable"
        alias = info.validation_alias
        assert alias is None or isinstance(alias, str), f"{name}: derive its variables"
        names.add((alias or prefix + name).upper())
    return frozenset(names)


def default_port(settings: type[BaseSettings]) -> int:
    addr = settings.model_fields["addr"].default
    assert isinstance(addr, str), f"{settings.__name__}.addr has no plain default"
    return int(addr.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Component:
    """One thing the image runs: its `python -m` module, settings and gRPC service."""

    name: str
    module: str
    settings: type[BaseSettings]
    grpc_service: str | None = None

    @property
    def prefix(self) -> str:
        return str(self.settings.model_config.get("env_prefix", ""))

    @property
    def variables(self) -> frozenset[str]:
        return settings_variables(self.settings) | PROCESS_VARIABLES

    @property
    def port(self) -> int:
        return default_port(self.settings)

    @property
    def migrates(self) -> bool:
        return "migrate" in subcommands(self.module)


COMPONENTS: Mapping[str, Component] = {
    c.name: c
    for c in (
        Component(
            "users",
            "users_service",
            UsersSettings,
            users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name,
        ),
        Component(
            "ai",
            "ai_service",
            AiSettings,
            analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name,
        ),
        Component("gateway", "gateway", GatewaySettings),
    )
}


def component_of_module(module: str) -> Component:
    for component in COMPONENTS.values():
        if component.module == module:
            return component
    raise AssertionError(f"no component runs `python -m {module}`")


def gateway_routes() -> frozenset[str]:
    return frozenset(route.path for route in gateway_health.router.routes)  # type: ignore[attr-defined]


# Entry points ---------------------------------------------------------------------


@dataclass(frozen=True)
class EntryPoint:
    module: str
    args: tuple[str, ...]

    @property
    def subcommand(self) -> str | None:
        return self.args[0] if self.args else None


def wheel_packages() -> frozenset[str]:
    """The top-level packages the wheel (and so the image) holds, from pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return frozenset(Path(p).name for p in packages)


def wheel_sources() -> tuple[str, ...]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    return tuple(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])


def subcommands(module: str) -> tuple[str, ...]:
    """The subcommands `python -m module --help` offers (`{serve,migrate}`), run for real."""
    if module in NO_ARGUMENTS:
        return ()
    usages = _usages()
    assert module in usages, f"{module} is not a component's module"
    match = re.search(r"\{([\w,-]+)\}", usages[module])
    return tuple(match.group(1).split(",")) if match else ()


@functools.cache
def _usages() -> dict[str, str]:
    """The usage line of each component module's `--help`, all run at once (each pays
    for importing its service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("USERS_", "AI_"))}
    modules = [c.module for c in COMPONENTS.values() if c.module not in NO_ARGUMENTS]
    running = {
        module: subprocess.Popen(
            [sys.executable, "-m", module, "--help"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in modules
    }
    usages = {}
    for module, process in running.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, f"python -m {module} --help failed:\n{err}"
        usage = out.split("\n\n", 1)[0]
        assert usage.startswith(f"usage: python -m {module}"), usage
        usages[module] = usage
    return usages


def entry_point(argv: Sequence[str]) -> EntryPoint:
    """`argv` as the entry point it runs; fails unless it is a real one of this project.

    Real means: `python -m <module>` of a package the wheel installs, whose `__main__`
    exists, with arguments that module's command line accepts.
    """
    argv = list(argv)
    assert len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1] == "-m", (
        f"not a `python -m` command: {argv}"
    )
    point = EntryPoint(argv[2], tuple(argv[3:]))
    top = point.module.split(".", 1)[0]
    assert top in wheel_packages(), f"{point.module} is not in the wheel, so not in the image"
    spec = importlib.util.find_spec(point.module)
    assert spec is not None, f"no module {point.module}"
    if spec.submodule_search_locations is not None:
        assert importlib.util.find_spec(f"{point.module}.__main__") is not None, (
            f"{point.module} has no __main__"
        )
    if point.module == HEALTHCHECK_MODULE:
        healthcheck_args(point.args)
    elif point.module in NO_ARGUMENTS:
        # Arguments would be silently ignored: whatever they meant would not happen.
        assert point.args == (), f"python -m {point.module} takes no arguments: {point.args}"
    else:
        choices = subcommands(point.module)
        assert not point.args or point.args[0] in choices, (
            f"python -m {point.module} accepts {choices}, not {point.args}"
        )
        if point.subcommand in EXTRA_COMMANDS.get(point.module, {}):
            command_args(point)
    return point


def healthcheck_args(args: Sequence[str]) -> Any:
    """`args` parsed by the healthcheck's own command line; fails on what it rejects."""
    try:
        return healthcheck.parse_args(list(args))
    except SystemExit:
        raise AssertionError(f"python -m {HEALTHCHECK_MODULE} rejects {list(args)}") from None


def command_args(point: EntryPoint) -> argparse.Namespace:
    """The arguments of a module's own command (`create-service-account NAME --scope
    ...`), parsed from the command's declaration the way servicekit.cli.run_service
    adds it to its parser; fails on what that parser would reject."""
    assert point.subcommand is not None, f"python -m {point.module} runs no command"
    command = EXTRA_COMMANDS.get(point.module, {}).get(point.subcommand)
    assert command is not None, f"python -m {point.module} has no command {point.subcommand}"
    parser = argparse.ArgumentParser(prog=f"python -m {point.module} {point.subcommand}")
    for argument in command.arguments:
        parser.add_argument(argument.lower(), metavar=argument)
    for option in command.options:
        parser.add_argument(*option.flags, **option.settings)
    try:
        return parser.parse_args(list(point.args[1:]))
    except SystemExit:
        raise AssertionError(f"{point.subcommand} rejects {list(point.args[1:])}") from None


def load_with_env(settings: type[BaseSettings], env: Mapping[str, str]) -> Any:
    """`settings` as the component would load them from exactly `env`."""
    with mock.patch.dict(os.environ, dict(env), clear=True):
        return load_settings(settings)


def check_tokens_agree(users: Any, gateway: Any) -> None:
    """The gateway accepts the access tokens the users service issues: same issuer and
    audience, and a lifetime the gateway does not refuse as too long."""
    assert gateway.token_issuer == users.token_issuer
    assert gateway.token_audience == users.token_audience
    assert users.access_token_ttl_seconds <= gateway.token_max_lifetime_seconds


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def dns_target(target: str) -> tuple[str, int]:
    """`dns:///host:port` as (host, port)."""
    match = re.fullmatch(r"dns:///([A-Za-z0-9.-]+):(\d+)", target)
    assert match, f"not a dns:/// target: {target}"
    return match.group(1), int(match.group(2))


# docker-compose.yml ---------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `$$`."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset_or_empty = not value
        missing = unset_or_empty if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if missing else str(value)
        if op in (":?", "?"):
            if missing:
                raise AssertionError(f"${{{name}}} must be set: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if missing else arg
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as compose sees it with `env` as the host's environment."""
    return dict(_interpolate_tree(raw_compose(), env or {}))


def as_argv(command: str | Sequence[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    """A service's `environment` as a mapping (None: passed through from the host)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        listed: dict[str, str | None] = {}
        for item in raw:
            name, sep, value = str(item).partition("=")
            listed[name] = value if sep else None
        return listed
    return {name: None if value is None else str(value) for name, value in raw.items()}


def healthcheck_argv(test: str | Sequence[str]) -> list[str]:
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    if kind == "CMD":
        return list(rest)
    assert kind == "CMD-SHELL" and len(rest) == 1, f"unexpected healthcheck test: {test}"
    return shlex.split(rest[0])


@dataclass(frozen=True)
class PortMapping:
    target: int
    published: str | None
    host_ip: str | None


def ports(service: Mapping[str, Any]) -> list[PortMapping]:
    mappings = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            published = port.get("published")
            mappings.append(
                PortMapping(
                    int(port["target"]),
                    None if published is None else str(published),
                    port.get("host_ip"),
                )
            )
            continue
        # Short syntax: [[host_ip:]published:]target[/protocol]
        parts = str(port).split("/", 1)[0].rsplit(":", 2)
        target = int(parts[-1])
        published = parts[-2] if len(parts) >= 2 and parts[-2] else None
        host_ip = parts[-3] if len(parts) == 3 else None
        mappings.append(PortMapping(target, published, host_ip))
    return mappings


@dataclass(frozen=True)
class VolumeMount:
    kind: str  # "volume" (named, or anonymous without a source), "bind" or "tmpfs"
    source: str | None
    target: str
    read_only: bool


def volume_mounts(service: Mapping[str, Any]) -> list[VolumeMount]:
    """A service's `volumes`, short (`source:target[:mode]`) or long syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append(
                VolumeMount(
                    str(volume.get("type", "volume")),
                    volume.get("source"),
                    str(volume["target"]),
                    bool(volume.get("read_only", False)),
                )
            )
            continue
        source, sep, rest = str(volume).partition(":")
        if not sep:
            mounts.append(VolumeMount("volume", None, source, False))
            continue
        target, _, mode = rest.partition(":")
        # A path (relative, absolute or from home) is a bind mount; a name, a volume.
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        mounts.append(VolumeMount(kind, source, target, "ro" in mode.split(",")))
    return mounts


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Each dependency with its condition (a plain list means service_started)."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def start_order(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The services in an order that respects depends_on; fails on a cycle."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        assert name not in visiting, f"depends_on cycle through {name}"
        visiting.add(name)
        for dependency in depends_on(services[name]):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            visit(dependency)
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name)
    return order


# Dockerfile -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def argv(self) -> list[str]:
        """Exec form (JSON array) or shell form, as an argument vector."""
        text = self.args.strip()
        if text.startswith("["):
            parsed = yaml.safe_load(text)
            assert isinstance(parsed, list)
            return [str(a) for a in parsed]
        return shlex.split(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.args):
                name, sep, value = pair.partition("=")
                assert sep, f"ENV {name} without '=': use the KEY=VALUE form"
                values[name] = value
        return values


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def resolve(self, text: str) -> str:
        """`text` with the global ARGs' defaults filled in."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), text)


def _logical_lines(text: str) -> Iterator[str]:
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            # Comments and blank lines may sit inside a continued instruction.
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        yield current + stripped
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"


def dockerfile() -> Dockerfile:
    result = Dockerfile(args={}, stages=[])
    for line in _logical_lines(DOCKERFILE.read_text()):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.stages.append(Stage(base=words[0], name=name))
        elif not result.stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            name, _, default = args.partition("=")
            result.args[name.strip()] = default.strip()
        else:
            result.stages[-1].instructions.append(Instruction(keyword, args))
    return result


def copy_parts(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """A COPY's --flags, its sources and its destination."""
    words = shlex.split(instruction.args)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


@dataclass(frozen=True)
class Directory:
    owner: str | None
    group: str | None
    mode: str | None


def created_directories(stage: Stage) -> dict[str, Directory]:
    """The directories the stage's RUN steps create with `install -d`, with the owner,
    group and mode each gets (None: install's default, root and 0755)."""
    created = {}
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run.args):
            words = shlex.split(command)
            if not words or words[0] != "install" or "-d" not in words:
                continue
            options: dict[str, str] = {}
            paths = []
            rest = iter(words[1:])
            for word in rest:
                if word in ("-o", "-g", "-m"):
                    options[word] = next(rest)
                elif not word.startswith("-"):
                    paths.append(word)
            for path in paths:
                created[path] = Directory(options.get("-o"), options.get("-g"), options.get("-m"))
    return created


# .dockerignore ---------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) in file order, as Docker reads .dockerignore."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        patterns.append((negated, _glob_regex(line)))
    return patterns


def excluded_from_context(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context (last match wins; a
    pattern that matches a parent folder matches everything in it)."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


# Kubernetes ------------------------------------------------------------------------


def kubernetes_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def kubernetes_objects() -> list[dict[str, Any]]:
    objects = []
    for path in kubernetes_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict), f"{path.name}: not an object"
                objects.append(document)
    return objects


def kustomization() -> dict[str, Any]:
    document = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert isinstance(document, dict)
    return document


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (`250m`, `2`, `512Mi`) as a number."""
    match = _QUANTITY.match(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]
