"""docker-compose.yml, the Dockerfile and .dockerignore, checked without a Docker engine.

No engine runs here, so what can go wrong is checked against the project itself: the
commands are the real `python -m` entry points, every variable is a real setting of
the component that gets it (and the settings load from what compose gives), the ports
are the settings' defaults, the healthchecks call modules that exist, and depends_on
starts things in the order the services need. The stack is for development: not in
production mode, and with no working secret in the file beyond its public try-out
defaults (the gateway's service-account secret is made by a one-shot job at start).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import pytest
from google.protobuf import descriptor_pool
from sqlalchemy.engine import make_url

from gateway.paths import TOKEN_URL
from gateway.settings import GATEWAY_SCOPES
from servicekit import production
from tests.support import deploy
from tests.support.deploy import COMPONENTS, Component

POSTGRES = "postgres"
INITDB = "/docker-entrypoint-initdb.d"
# The command that makes a service account (users_service.cli).
CREATE_SERVICE_ACCOUNT = "create-service-account"
# The gateway has none in the file: it signs nothing, verifies with the users service's
# keys, and its service account's secret is written by a job (see below).
SECRETS = {
    "users": ["USERS_PAGE_TOKEN_SECRET"],
    "ai": ["AI_PAGE_TOKEN_SECRET"],
}
# Passed through from the host when set there (no value in the file), for a key of
# the operator's own; unset, the users service uses its generated key.
KEY_FILES = ["USERS_TOKEN_SIGNING_KEY_FILE", "USERS_TOKEN_VERIFY_KEY_FILES"]


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    services = deploy.compose()["services"]
    assert isinstance(services, dict)
    return services


def tandem_services(services: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the Tandem image (everything but PostgreSQL)."""
    return {name: s for name, s in services.items() if "build" in s}


def runs(service: Mapping[str, Any]) -> deploy.EntryPoint:
    return deploy.entry_point(deploy.as_argv(service["command"]))


def servers(services: Mapping[str, Any]) -> dict[str, Component]:
    """Long-running Tandem services, each with the component it serves."""
    found = {}
    for name, service in tandem_services(services).items():
        point = runs(service)
        if point.subcommand in (None, "serve"):
            found[name] = deploy.component_of_module(point.module)
    return found


def migrations(services: Mapping[str, Any]) -> dict[str, Component]:
    return {
        name: deploy.component_of_module(runs(service).module)
        for name, service in tandem_services(services).items()
        if runs(service).subcommand == "migrate"
    }


def account_jobs(services: Mapping[str, Any]) -> dict[str, Any]:
    """One-shot services that make a service account: name -> their parsed arguments."""
    return {
        name: deploy.command_args(runs(service))
        for name, service in tandem_services(services).items()
        if runs(service).subcommand == CREATE_SERVICE_ACCOUNT
    }


def gateway_account_job(services: Mapping[str, Any]) -> tuple[str, Any]:
    """The job that makes the gateway's account, and its arguments."""
    gateway = loaded(services, "gateway")
    found = [(n, a) for n, a in account_jobs(services).items() if a.name == gateway.client_id]
    assert len(found) == 1, f"expected one job making the account {gateway.client_id}"
    return found[0]


def scopes(args: Any) -> set[str]:
    """The scopes of `--scope` (repeated, or comma- or space-separated)."""
    return {s for value in args.scope for s in value.replace(",", " ").split()}


def service_for(services: Mapping[str, Any], component: str) -> str:
    names = [name for name, c in servers(services).items() if c.name == component]
    assert len(names) == 1, f"expected one service serving {component}, found {names}"
    return names[0]


def test_it_parses_into_the_stack(services: dict[str, dict[str, Any]]) -> None:
    assert deploy.raw_compose()["name"] == "tandem"
    assert "version" not in deploy.raw_compose(), "obsolete; compose warns about it"
    assert sorted(c.name for c in servers(services).values()) == ["ai", "gateway", "users"]
    assert sorted(c.name for c in migrations(services).values()) == ["ai", "users"]
    assert len(account_jobs(services)) == 1, "the gateway's service account"
    assert set(services) == {
        POSTGRES,
        *servers(services),
        *migrations(services),
        *account_jobs(services),
    }


def test_every_tandem_container_is_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in tandem_services(services).items():
        build = service["build"]
        assert build == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert (deploy.ROOT / build["context"] / build["dockerfile"]).is_file()
        # A tag shared by several builds races in compose's parallel builds.
        assert "image" not in service, f"{name}: a shared image tag races between builds"
    assert set(tandem_services(services)) == set(services) - {POSTGRES}


@pytest.mark.parametrize(
    "name", ["migrate-users", "migrate-ai", "gateway-account", "users", "ai", "gateway"]
)
def test_every_command_is_a_real_entry_point(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    point = runs(services[name])
    component = deploy.component_of_module(point.module)
    if name.startswith("migrate-"):
        assert point.subcommand == "migrate"
        assert component.name == name.removeprefix("migrate-")
    elif name.endswith("-account"):
        # Made by the users service's own command line, on the users database.
        assert point.subcommand == CREATE_SERVICE_ACCOUNT
        assert component.name == "users"
        assert deploy.command_args(point).name == name.removesuffix("-account")
    else:
        assert component.name == name
        assert point.subcommand in (None, "serve")


def test_every_environment_variable_is_a_real_setting_of_its_component(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in tandem_services(services).items():
        component = deploy.component_of_module(runs(service).module)
        unknown = set(deploy.environment(service)) - component.variables
        assert not unknown, f"{name} sets variables {component.name} does not read: {unknown}"


@pytest.mark.parametrize("host_env", [{}, {"POSTGRES_PASSWORD": "s3cret"}])
def test_the_settings_load_from_what_compose_gives(host_env: dict[str, str]) -> None:
    services = deploy.compose(host_env)["services"]
    for name, service in tandem_services(services).items():
        component = deploy.component_of_module(runs(service).module)
        env = {k: v for k, v in deploy.environment(service).items() if v is not None}
        settings = deploy.load_with_env(component.settings, env)
        if name in servers(services):
            # Every interface inside the container; the port is the default.
            assert settings.addr == f"0.0.0.0:{component.port}", name


def test_secrets_come_from_the_host_environment_with_dev_only_defaults() -> None:
    raw = deploy.raw_compose()["services"]
    for component, names in SECRETS.items():
        service = raw[service_for(deploy.compose()["services"], component)]
        for variable in names:
            value = deploy.environment(service)[variable]
            assert value is not None
            match = re.fullmatch(r"\$\{(\w+):-(dev-only-[\w-]+)\}", value)
            assert match and match.group(1) == variable, f"{variable}: {value}"
    # What the shell (or .env) says wins over the defaults.
    overrides = {
        name: f"from-the-host-{name.lower()}-0123456789abcdef"
        for names in SECRETS.values()
        for name in names
    }
    services = deploy.compose(overrides)["services"]
    for component, names in SECRETS.items():
        env = deploy.environment(services[service_for(services, component)])
        for variable in names:
            assert env[variable] == overrides[variable]


def test_replicas_share_their_secrets_and_can_be_scaled(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, component in servers(services).items():
        env = deploy.environment(services[name])
        for variable in SECRETS.get(component.name, []):
            # Unset, each replica would sign with a random key of its own.
            assert env.get(variable), f"{name}: {variable} must be set for replicas to agree"
        assert "container_name" not in services[name], f"{name}: a fixed name cannot scale"


def loaded(services: Mapping[str, Any], component: str) -> Any:
    """The settings of the service serving `component`, as compose starts it."""
    env = deploy.environment(services[service_for(services, component)])
    return deploy.load_with_env(
        COMPONENTS[component].settings, {k: v for k, v in env.items() if v is not None}
    )


def test_users_replicas_share_one_generated_signing_key_in_a_named_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    name = service_for(services, "users")
    env = deploy.environment(services[name])
    for variable in KEY_FILES:
        assert variable in env and env[variable] is None, f"{variable}: pass it through"
    settings = loaded(services, "users")
    # No key in the file: the first replica generates one, every replica reads it.
    assert settings.token_signing_key_file is None
    assert settings.verify_key_paths == []
    key_file = PurePosixPath(settings.token_dev_key_file)
    assert key_file.is_absolute(), "relative to the working directory, inside the image"
    (mount,) = [m for m in deploy.volume_mounts(services[name]) if m.target == str(key_file.parent)]
    # A named volume is one for all replicas (and outlives them); an anonymous one,
    # or none, would be one key per container.
    assert mount.kind == "volume" and mount.source in deploy.raw_compose()["volumes"]
    assert not mount.read_only, "the first replica writes the key there"
    # A new named volume takes the image directory's ownership: it must be the
    # non-root user's, or the service could not create its key in it.
    dockerfile = deploy.dockerfile()
    uid = dockerfile.final.all("USER")[-1].args.split(":")[0]
    directory = deploy.created_directories(dockerfile.final).get(mount.target)
    assert directory is not None, f"{mount.target} must exist in the image"
    assert directory.owner == uid, f"{mount.target} must belong to uid {uid}"


def test_a_signing_key_of_ones_own_replaces_the_generated_one(
    services: dict[str, dict[str, Any]],
) -> None:
    env = deploy.environment(services[service_for(services, "users")])
    mine = {
        "USERS_TOKEN_SIGNING_KEY_FILE": "/run/secrets/users-token-key.pem",
        "USERS_TOKEN_VERIFY_KEY_FILES": "/run/secrets/old-key.pem",
    }
    settings = deploy.load_with_env(
        COMPONENTS["users"].settings,
        {**{k: v for k, v in env.items() if v is not None}, **mine},
    )
    assert str(settings.token_signing_key_file) == mine["USERS_TOKEN_SIGNING_KEY_FILE"]
    assert [str(p) for p in settings.verify_key_paths] == [mine["USERS_TOKEN_VERIFY_KEY_FILES"]]


def test_the_gateway_holds_its_account_secret_only_and_accepts_the_users_tokens(
    services: dict[str, dict[str, Any]],
) -> None:
    name = service_for(services, "gateway")
    env = deploy.environment(services[name])
    # No signing material, and its service account's secret as a file the job writes,
    # never a value in this file.
    assert not [v for v in env if v.endswith(("_KEY", "_KEY_FILE")) or "SIGNING" in v], env
    secrets = [v for v in env if "SECRET" in v]
    assert secrets == ["GATEWAY_CLIENT_SECRET_FILE"], secrets
    assert "GATEWAY_CLIENT_SECRET:" not in deploy.COMPOSE_FILE.read_text()
    assert "JWT_SECRET" not in deploy.COMPOSE_FILE.read_text()
    users = service_for(services, "users")
    users_volumes = {m.source for m in deploy.volume_mounts(services[users])}
    assert not users_volumes & {m.source for m in deploy.volume_mounts(services[name])}
    deploy.check_tokens_agree(loaded(services, "users"), loaded(services, "gateway"))


def test_a_one_shot_job_makes_the_gateways_account_into_a_volume_it_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    gateway_name = service_for(services, "gateway")
    gateway = loaded(services, "gateway")
    job_name, args = gateway_account_job(services)
    job = services[job_name]
    # The scopes the gateway needs, and a secret written where the gateway reads it.
    assert scopes(args) == set(GATEWAY_SCOPES)
    assert args.secret_file is not None, "--secret-file, or the secret is only printed"
    assert str(args.secret_file) == str(gateway.client_secret_file)
    # Run on every start: a file holding the working secret is kept; --replace renews
    # an account whose secret was lost with its volume, instead of failing.
    assert args.replace
    assert job.get("restart") == "no"
    # One named volume, written by the job, read-only in the gateway.
    directory = str(PurePosixPath(str(gateway.client_secret_file)).parent)
    (written,) = [m for m in deploy.volume_mounts(job) if m.target == directory]
    (read,) = [m for m in deploy.volume_mounts(services[gateway_name]) if m.target == directory]
    assert written.kind == read.kind == "volume"
    assert written.source == read.source and written.source in deploy.raw_compose()["volumes"]
    assert not written.read_only and read.read_only
    # The new volume takes the image directory's ownership: the non-root user's, or
    # the job could not write the secret (nor the gateway, as that user, read it).
    dockerfile = deploy.dockerfile()
    uid = dockerfile.final.all("USER")[-1].args.split(":")[0]
    created = deploy.created_directories(dockerfile.final).get(directory)
    assert created is not None, f"{directory} must exist in the image"
    assert created.owner == uid, f"{directory} must belong to uid {uid}"
    # The users database, migrated, and nothing else: no signing key, no mount of it.
    env = deploy.environment(job)
    users_env = deploy.environment(services[service_for(services, "users")])
    assert set(env) == {"USERS_DATABASE_URL"}
    assert env["USERS_DATABASE_URL"] == users_env["USERS_DATABASE_URL"]
    migrate_users = next(n for n, c in migrations(services).items() if c.name == "users")
    assert deploy.depends_on(job) == {migrate_users: "service_completed_successfully"}
    # The gateway starts only once its secret is there.
    assert deploy.depends_on(services[gateway_name])[job_name] == "service_completed_successfully"


def test_the_ai_service_passes_the_anthropic_key_through(
    services: dict[str, dict[str, Any]],
) -> None:
    env = deploy.environment(services[service_for(services, "ai")])
    # No value: set in the container only when set on the host, so the offline
    # analyzer runs without one.
    assert env["ANTHROPIC_API_KEY"] is None
    settings = deploy.load_with_env(
        COMPONENTS["ai"].settings, {k: v for k, v in env.items() if v is not None}
    )
    assert settings.provider == "auto"


def test_database_urls_point_at_the_databases_postgres_creates(
    services: dict[str, dict[str, Any]],
) -> None:
    postgres = services[POSTGRES]
    pg_env = deploy.environment(postgres)
    created = created_databases(postgres)
    urls: dict[str, set[str]] = {}
    for name, service in tandem_services(services).items():
        component = deploy.component_of_module(runs(service).module)
        if component.name == "gateway":
            assert not any("DATABASE_URL" in v for v in deploy.environment(service))
            continue
        url = make_url(deploy.environment(service)[f"{component.prefix}DATABASE_URL"] or "")
        assert url.drivername == "postgresql+asyncpg"
        assert (url.host, url.port) == (POSTGRES, 5432)
        assert url.username == pg_env["POSTGRES_USER"]
        assert url.password == pg_env["POSTGRES_PASSWORD"]
        assert url.database in created, f"{name}: {url.database} is never created"
        urls.setdefault(component.name, set()).add(url.render_as_string(hide_password=False))
    # Each migration runs on the database its service serves from, and no two share one.
    assert all(len(u) == 1 for u in urls.values()), urls
    assert len({next(iter(u)) for u in urls.values()}) == len(urls)


def created_databases(postgres: Mapping[str, Any]) -> set[str]:
    """The databases the init scripts mounted into the postgres container create."""
    created = set()
    for volume in postgres["volumes"]:
        source, target, *_ = volume.split(":")
        if target.startswith(INITDB):
            assert target.endswith(".sql")
            script = (deploy.ROOT / source).read_text()
            created |= set(re.findall(r"CREATE DATABASE (\w+);", script))
    env = deploy.environment(postgres)
    created.add(env.get("POSTGRES_DB") or env["POSTGRES_USER"] or "postgres")
    return created


def test_the_state_lives_in_named_volumes_of_postgres_the_users_keys_and_the_gateway_secret(
    services: dict[str, dict[str, Any]],
) -> None:
    declared = deploy.raw_compose()["volumes"]
    assert "pgdata:/var/lib/postgresql/data" in services[POSTGRES]["volumes"]
    assert services[POSTGRES]["image"].startswith("postgres:17")
    users = service_for(services, "users")
    gateway = service_for(services, "gateway")
    job, _ = gateway_account_job(services)
    key_dir = str(PurePosixPath(loaded(services, "users").token_dev_key_file).parent)
    secret_dir = str(PurePosixPath(str(loaded(services, "gateway").client_secret_file)).parent)
    used = {"pgdata"}
    for name, service in tandem_services(services).items():
        mounts = deploy.volume_mounts(service)
        if name == users:
            # The signing key only: accounts and sessions live in PostgreSQL.
            assert [m.target for m in mounts] == [key_dir], name
        elif name in (gateway, job):
            # The gateway's service-account secret only.
            assert [m.target for m in mounts] == [secret_dir], name
        else:
            assert not mounts, f"{name} must be stateless"
        used |= {m.source for m in mounts if m.source}
    assert sorted(declared) == sorted(used)


def test_the_scaled_grpc_services_publish_no_fixed_host_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, component in servers(services).items():
        mappings = deploy.ports(services[name])
        assert [m.target for m in mappings] == [component.port], name
        (mapping,) = mappings
        assert mapping.host_ip == "127.0.0.1"
        if component.grpc_service:
            # Docker picks a free host port per replica; a fixed one fits one replica.
            assert mapping.published is None, f"{name}: --scale needs an unpublished host port"
        else:
            assert mapping.published == str(component.port)
    for name in migrations(services):
        assert "ports" not in services[name]
    assert "ports" not in services[POSTGRES]


def test_grpc_healthchecks_ask_for_the_right_service_on_the_right_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, component in servers(services).items():
        if component.grpc_service is None:
            continue
        point = deploy.entry_point(deploy.healthcheck_argv(services[name]["healthcheck"]["test"]))
        assert point.module == deploy.HEALTHCHECK_MODULE
        args = deploy.healthcheck_args(point.args)
        assert args.service == component.grpc_service
        assert args.target == f"127.0.0.1:{component.port}"


def test_the_gateway_healthcheck_asks_readyz(services: dict[str, dict[str, Any]]) -> None:
    gateway = COMPONENTS["gateway"]
    argv = deploy.healthcheck_argv(
        services[service_for(services, "gateway")]["healthcheck"]["test"]
    )
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    code = argv[2]
    compile(code, "<healthcheck>", "exec")
    url = f"http://127.0.0.1:{gateway.port}/readyz"
    assert f"'{url}'" in code or f'"{url}"' in code
    assert "/readyz" in deploy.gateway_routes()


def test_postgres_is_healthy_only_once_it_serves_tcp(
    services: dict[str, dict[str, Any]],
) -> None:
    argv = deploy.healthcheck_argv(services[POSTGRES]["healthcheck"]["test"])
    assert argv[0] == "pg_isready"
    # Through the socket, the image's temporary init-time server already answers.
    assert argv[argv.index("-h") + 1] == "127.0.0.1"


def test_depends_on_starts_each_thing_after_what_it_needs(
    services: dict[str, dict[str, Any]],
) -> None:
    order = deploy.start_order(services)
    for name, service in services.items():
        for dependency, condition in deploy.depends_on(service).items():
            target = services[dependency]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dependency}'s health"
            else:
                assert condition == "service_completed_successfully", (name, dependency)
                assert target.get("restart") == "no", f"{dependency} must be a one-shot"
    for name in migrations(services):
        assert deploy.depends_on(services[name]) == {POSTGRES: "service_healthy"}
    migrated = {c.name: m for m, c in migrations(services).items()}
    users, ai = service_for(services, "users"), service_for(services, "ai")
    job, _ = gateway_account_job(services)
    expected = {
        # Each service once its database is migrated; the ai service asks the users
        # service about every call's token, so it waits for it too.
        users: {migrated["users"]: "service_completed_successfully"},
        ai: {migrated["ai"]: "service_completed_successfully", users: "service_healthy"},
        # The gateway once both answer, and its service account's secret is written.
        service_for(services, "gateway"): {
            users: "service_healthy",
            ai: "service_healthy",
            job: "service_completed_successfully",
        },
    }
    for name in servers(services):
        deps = deploy.depends_on(services[name])
        assert deps == expected[name], name
        assert all(order.index(d) < order.index(name) for d in deps)
    # The account is made in the migrated database.
    assert deploy.depends_on(services[job]) == {migrated["users"]: "service_completed_successfully"}
    assert order.index(migrated["users"]) < order.index(job)


@pytest.mark.parametrize(
    ("client", "variable", "upstream"),
    [
        ("gateway", "GATEWAY_USERS_TARGET", "users"),
        ("gateway", "GATEWAY_AI_TARGET", "ai"),
        ("ai", "AI_USERS_TARGET", "users"),
    ],
)
def test_clients_target_every_replica_of_the_right_services(
    services: dict[str, dict[str, Any]], client: str, variable: str, upstream: str
) -> None:
    env = deploy.environment(services[service_for(services, client)])
    host, port = deploy.dns_target(env[variable] or "")
    assert host == service_for(services, upstream)
    served = deploy.load_with_env(
        COMPONENTS[upstream].settings,
        {k: v for k, v in deploy.environment(services[host]).items() if v is not None},
    )
    assert port == deploy.split_addr(served.addr)[1] == COMPONENTS[upstream].port
    # The setting that variable sets is the one the client dials.
    settings = loaded(services, client)
    field = variable.removeprefix(COMPONENTS[client].prefix).lower()
    assert getattr(settings, field) == env[variable]


def test_the_stack_runs_in_development_mode(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Production mode would refuse its plaintext, reflection and public secrets.
    for name, service in tandem_services(services).items():
        assert production.ENV_VARIABLE not in deploy.environment(service), name
    monkeypatch.delenv(production.ENV_VARIABLE, raising=False)
    for name, component in servers(services).items():
        settings = loaded(services, component.name)
        assert settings.production_problems(), f"{name} would pass production mode?"
        production.check(settings.production_problems())


def header_commands() -> list[str]:
    """The shell commands the header comment of docker-compose.yml shows."""
    lines = []
    for line in deploy.COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   "):
            lines.append(line.removeprefix("#   "))
    commands: list[str] = []
    pending = ""
    for line in lines:
        # A trailing comment ends a command; a backslash continues it.
        text = line.split("  #", 1)[0].rstrip()
        if text.endswith("\\"):
            pending += text[:-1]
            continue
        commands.append(pending + text)
        pending = ""
    assert not pending, "the header ends inside a continued command"
    return commands


def test_the_header_shows_how_to_call_with_a_token() -> None:
    commands = header_commands()
    grpcurls = [shlex.split(c) for c in commands if c.startswith("grpcurl")]
    assert grpcurls, "no grpcurl example"
    for argv in grpcurls:
        methods = [a for a in argv if re.fullmatch(r"[\w.]+\.\w+/\w+", a)]
        if methods:
            # Every RPC but reflection and health needs a bearer token.
            assert argv[argv.index("-H") + 1] == "authorization: Bearer $TOKEN", argv
            # A real method, on a replica of the service that has it.
            (method,) = methods
            service, name = method.split("/")
            assert name in descriptor_pool.Default().FindServiceByName(service).methods_by_name
            (component,) = [c for c in COMPONENTS.values() if c.grpc_service == service]
            address = next(a for a in argv if "docker compose port" in a)
            assert address.endswith(f" {component.name} {component.port})"), address
        else:
            assert argv[-1] == "list", f"reflection needs no token: {argv}"
    assert any(re.search(r"authorization: Bearer", " ".join(argv)) for argv in grpcurls), (
        "show a call with a token"
    )
    # The token comes from logging in through the gateway.
    (login,) = [c for c in commands if c.startswith("TOKEN=")]
    assert f"http://127.0.0.1:{COMPONENTS['gateway'].port}{TOKEN_URL}" in login
    assert "grant_type=password" in login


def test_containers_outlive_the_shutdown_grace_period(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, component in servers(services).items():
        grace = component.settings.model_fields["shutdown_grace_seconds"].default
        period = services[name]["stop_grace_period"]
        assert period.endswith("s") and float(period[:-1]) > grace, name


# The Dockerfile ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> deploy.Dockerfile:
    return deploy.dockerfile()


def test_the_image_is_multi_stage_on_one_slim_python(dockerfile: deploy.Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    bases = {dockerfile.resolve(stage.base) for stage in dockerfile.stages}
    # One interpreter for both: the venv built in the first runs in the last.
    assert len(bases) == 1, bases
    (base,) = bases
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base


def test_the_builder_installs_the_project_pinned_without_dev_extras(
    dockerfile: deploy.Dockerfile,
) -> None:
    builder = dockerfile.stages[0]
    assert any("python -m venv /opt/venv" in run.args for run in builder.all("RUN"))
    installs = [run.args for run in builder.all("RUN") if "pip install" in run.args]
    assert any(re.search(r"pip install -c constraints\.txt \.$", cmd) for cmd in installs)
    for cmd in installs:
        assert "-e " not in cmd and "--editable" not in cmd and "[dev]" not in cmd, cmd
        assert "-c constraints.txt" in cmd, f"unpinned: {cmd}"
    copied = {src for i in builder.all("COPY") for src in deploy.copy_parts(i)[1]}
    needed = {"pyproject.toml", "constraints.txt", "README.md", *deploy.wheel_sources()}
    # The client folder is copied whole: its two packages come with it.
    needed = {"client" if s.startswith("client/") else s for s in needed}
    assert needed <= copied, f"the builder never copies {needed - copied}"


def test_the_final_stage_holds_only_the_venv_and_runs_as_non_root(
    dockerfile: deploy.Dockerfile,
) -> None:
    final = dockerfile.final
    copies = [deploy.copy_parts(i) for i in final.all("COPY") + final.all("ADD")]
    assert copies == [({"from": dockerfile.stages[0].name or "0"}, ["/opt/venv"], "/opt/venv")]
    for run in final.all("RUN"):
        assert not re.search(r"apt-get install|apk add|pip install|gcc|build-essential", run.args)
    user = final.all("USER")[-1].args.split(":")[0]
    assert user.isdigit() and int(user) != 0, "run as a numeric, non-root uid"
    last_user = max(i for i, ins in enumerate(final.instructions) if ins.keyword == "USER")
    last_cmd = max(i for i, ins in enumerate(final.instructions) if ins.keyword == "CMD")
    assert last_user < last_cmd
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_the_image_settings_listen_on_every_interface_at_the_default_ports(
    dockerfile: deploy.Dockerfile,
) -> None:
    env = dockerfile.final.env()
    for component in COMPONENTS.values():
        assert env[f"{component.prefix}ADDR"] == f"0.0.0.0:{component.port}"
    prefixed = {n for n in env if n.startswith(tuple(c.prefix for c in COMPONENTS.values()))}
    known = set().union(*(c.variables for c in COMPONENTS.values()))
    assert prefixed <= known, f"not settings: {prefixed - known}"
    exposed = {int(p) for i in dockerfile.final.all("EXPOSE") for p in i.args.split()}
    assert exposed == {c.port for c in COMPONENTS.values()}


def test_the_default_command_is_a_real_entry_point(dockerfile: deploy.Dockerfile) -> None:
    (cmd,) = dockerfile.final.all("CMD")
    assert cmd.args.startswith("["), "exec form, so the service gets SIGTERM itself"
    deploy.entry_point(cmd.argv())
    assert not dockerfile.final.all("ENTRYPOINT")


def test_no_image_level_healthcheck_guesses_which_service_runs(
    dockerfile: deploy.Dockerfile, services: dict[str, dict[str, Any]]
) -> None:
    assert not any(s.all("HEALTHCHECK") for s in dockerfile.stages)
    for name in servers(services):
        assert "healthcheck" in services[name], f"{name} needs its own healthcheck"


def test_the_build_context_holds_what_the_builder_copies_and_no_local_state(
    dockerfile: deploy.Dockerfile,
) -> None:
    for instruction in dockerfile.stages[0].all("COPY"):
        for source in deploy.copy_parts(instruction)[1]:
            path = deploy.ROOT / source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            assert files, f"{source} does not exist"
            kept = [
                f
                for f in files
                if not deploy.excluded_from_context(str(f.relative_to(deploy.ROOT)))
            ]
            assert kept, f"{source} is left out of the build context"
    for source in (*deploy.wheel_sources(), "client/tandem_protos/users/v1/users_pb2.py"):
        assert not deploy.excluded_from_context(source)
    for private in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        "data/users.db",
        "tests/conftest.py",
        "servicekit/__pycache__/cli.cpython-311.pyc",
        "protos/users/v1/users.proto",
        "docker-compose.yml",
    ):
        assert deploy.excluded_from_context(private), f"{private} reaches the build context"
