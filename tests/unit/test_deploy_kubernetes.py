"""deploy/kubernetes, checked without a cluster, against the project itself.

The same consistency as for docker-compose.yml: each container runs a real entry point,
every variable it gets (from its ConfigMap, its Secret or `env`) is a real setting of
that component, and the settings load from them; probes, ports and Services agree with
the settings' defaults; the gateway's targets name the headless Services. Files
(the users service's signing key, each pod's certificate) come from Secrets mounted
read-only, where the settings that name them point.

The manifests are for production: with the placeholders replaced, production mode
(TANDEM_ENV=production) finds nothing to refuse in any Deployment; with them left in,
it refuses to start. Every gRPC hop is mTLS, and the probes check health over it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import grpc
import pytest
import trustme
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ai_service import cli as ai_cli
from gateway.settings import GATEWAY_SCOPES, GatewaySettings
from servicekit import healthcheck, production
from servicekit.errors import StartupError
from servicekit.settings import SettingsError
from servicekit.tls import TlsFilesError, server_credentials
from tests.support import deploy
from tests.support.deploy import COMPONENTS
from users_service import cli as users_cli
from users_service.server import signing_keys_from

NAMESPACE = "tandem"
PLACEHOLDER = "REPLACE-ME"
# Each pod's certificate: a Secret in cert-manager's layout.
TLS_SECRET_TYPE = "kubernetes.io/tls"
TLS_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# The cluster domain the manifests assume.
CLUSTER_DOMAIN = "svc.cluster.local"
# Each migrating component's `python -m` entry, called in this process.
MAINS: Mapping[str, Callable[[Sequence[str]], int]] = {
    "users_service": users_cli.main,
    "ai_service": ai_cli.main,
}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return deploy.kubernetes_objects()


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    found = {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}
    assert len(found) == sum(o["kind"] == kind for o in objects), f"duplicate {kind} names"
    return found


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Mapping[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    assert isinstance(only, dict)
    return only


def runs(workload: Mapping[str, Any]) -> deploy.EntryPoint:
    c = container(workload)
    return deploy.entry_point([*c["command"], *c.get("args", [])])


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            yield o


def deployment_for(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    found = [
        d
        for d in of_kind(objects, "Deployment").values()
        if deploy.component_of_module(runs(d).module).name == component
    ]
    assert len(found) == 1, f"expected one Deployment of {component}"
    return found[0]


def container_env(objects: list[dict[str, Any]], workload: Mapping[str, Any]) -> dict[str, str]:
    """The variables the container gets, resolved from the manifests' ConfigMaps and
    Secrets; fails on a reference to an object or a key that does not exist."""
    sources = {
        "configMapRef": of_kind(objects, "ConfigMap"),
        "secretRef": of_kind(objects, "Secret"),
        "configMapKeyRef": of_kind(objects, "ConfigMap"),
        "secretKeyRef": of_kind(objects, "Secret"),
    }
    c = container(workload)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        ((kind, ref),) = source.items()
        target = sources[kind].get(ref["name"])
        assert target is not None, f"{kind} {ref['name']} is not in the manifests"
        env.update(data(target))
    for variable in c.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
            continue
        ((kind, ref),) = variable["valueFrom"].items()
        target = sources[kind].get(ref["name"])
        assert target is not None, f"{kind} {ref['name']} is not in the manifests"
        assert ref["key"] in data(target), f"{ref['name']} has no key {ref['key']}"
        env[variable["name"]] = data(target)[ref["key"]]
    return env


def env_sources(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret some container reads variables from."""
    kinds = {
        "configMapRef": "ConfigMap",
        "secretRef": "Secret",
        "configMapKeyRef": "ConfigMap",
        "secretKeyRef": "Secret",
    }
    found = set()
    for workload in workloads(objects):
        c = container(workload)
        refs = list(c.get("envFrom", []))
        refs += [v["valueFrom"] for v in c.get("env", []) if "valueFrom" in v]
        for ref in refs:
            ((kind, target),) = ref.items()
            found.add((kinds[kind], target["name"]))
    return found


@dataclass(frozen=True)
class MountedFile:
    secret: str
    key: str
    mode: int
    read_only: bool


def mounted_files(
    objects: list[dict[str, Any]], workload: Mapping[str, Any]
) -> dict[str, MountedFile]:
    """Each file the container sees from a mounted Secret, by its path. Fails on a
    mount of a volume, Secret or key that does not exist."""
    secrets = of_kind(objects, "Secret")
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    files = {}
    for mount in container(workload).get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        assert volume is not None, f"no volume {mount['name']}"
        if "secret" not in volume:
            continue
        source = volume["secret"]
        secret = secrets.get(source["secretName"])
        assert secret is not None, f"Secret {source['secretName']} is not in the manifests"
        keys = data(secret)
        items = source.get("items") or [{"key": key, "path": key} for key in keys]
        for item in items:
            assert item["key"] in keys, f"{source['secretName']} has no key {item['key']}"
            path = str(PurePosixPath(mount["mountPath"]) / item["path"])
            files[path] = MountedFile(
                source["secretName"],
                item["key"],
                int(item.get("mode", source.get("defaultMode", 0o644))),
                bool(mount.get("readOnly", False)),
            )
    return files


def data(config: Mapping[str, Any]) -> dict[str, str]:
    assert "data" not in config or config["kind"] == "ConfigMap", "Secrets: use stringData"
    values = config.get("data") or config.get("stringData") or {}
    return {name: str(value) for name, value in values.items()}


def filled_in(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with every placeholder replaced by a usable value."""
    return {
        name: value.replace(PLACEHOLDER, f"replaced-{name.lower()}-0123456789abcdef")
        for name, value in env.items()
    }


def settings_of(objects: list[dict[str, Any]], workload: Mapping[str, Any]) -> Any:
    """The workload's settings, as it loads them once the placeholders are replaced."""
    component = deploy.component_of_module(runs(workload).module)
    return deploy.load_with_env(component.settings, filled_in(container_env(objects, workload)))


def readable_by_the_pod(workload: Mapping[str, Any], file: MountedFile) -> bool:
    """Whether the image's non-root user reads `file`: group-readable and the pod's
    fsGroup, or readable by everyone."""
    security = pod_spec(workload)["securityContext"]
    image_group = int(deploy.dockerfile().final.all("USER")[-1].args.split(":")[1])
    by_group = bool(file.mode & 0o040) and security.get("fsGroup") == image_group
    return by_group or bool(file.mode & 0o004)


def on_disk(
    objects: list[dict[str, Any]], workload: Mapping[str, Any], root: Path
) -> dict[str, str]:
    """The workload's files from its mounted Secrets, written under `root` as the pod
    would see them, and its environment (placeholders replaced) pointing there."""
    secrets = of_kind(objects, "Secret")
    files = mounted_files(objects, workload)
    for path, file in files.items():
        local = root / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(data(secrets[file.secret])[file.key])
    return {
        name: str(root / value.lstrip("/")) if value in files else value
        for name, value in filled_in(container_env(objects, workload)).items()
    }


def tls_secret_of(objects: list[dict[str, Any]], workload: Mapping[str, Any]) -> str:
    """The one certificate Secret the workload mounts."""
    secrets = of_kind(objects, "Secret")
    found = {
        f.secret
        for f in mounted_files(objects, workload).values()
        if secrets[f.secret].get("type") == TLS_SECRET_TYPE
    }
    assert len(found) == 1, f"{workload['metadata']['name']} mounts certificates {found}"
    return found.pop()


def service_host(objects: list[dict[str, Any]], component: str) -> str:
    """The DNS name of the component's Service, which clients target and its
    certificate must carry."""
    service = service_of(objects, component)
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    return f"{name}.{namespace}.{CLUSTER_DOMAIN}"


def test_kustomization_applies_every_manifest() -> None:
    listed = deploy.kustomization()["resources"]
    assert sorted(listed) == [p.name for p in deploy.kubernetes_files()]
    # The Namespace first, for `kubectl apply -f` of the files in this order too.
    assert listed[0] == "namespace.yaml"


def test_everything_lives_in_the_namespace(objects: list[dict[str, Any]]) -> None:
    assert list(of_kind(objects, "Namespace")) == [NAMESPACE]
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, o["metadata"]["name"]


def test_a_deployment_per_component_runs_its_real_entry_point(
    objects: list[dict[str, Any]],
) -> None:
    deployments = of_kind(objects, "Deployment")
    assert sorted(deployments) == sorted(COMPONENTS)
    for name, deployment in deployments.items():
        point = runs(deployment)
        assert deploy.component_of_module(point.module).name == name
        assert point.subcommand in (None, "serve")
        assert deployment["spec"]["replicas"] >= 2, "more than one, or it is not a service"


def test_a_job_migrates_each_database(objects: list[dict[str, Any]]) -> None:
    jobs = of_kind(objects, "Job")
    migrated = {}
    for name, job in jobs.items():
        point = runs(job)
        assert point.subcommand == "migrate", f"{name} does not migrate"
        component = deploy.component_of_module(point.module)
        migrated[component.name] = job
        assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    assert sorted(migrated) == sorted(c.name for c in COMPONENTS.values() if c.migrates)
    for name, job in migrated.items():
        # The database the Job migrates is the one the Deployment serves from.
        variable = f"{COMPONENTS[name].prefix}DATABASE_URL"
        served = container_env(objects, deployment_for(objects, name))
        assert container_env(objects, job)[variable] == served[variable]


def test_every_variable_is_a_real_setting_of_its_component(
    objects: list[dict[str, Any]],
) -> None:
    for workload in workloads(objects):
        component = deploy.component_of_module(runs(workload).module)
        unknown = set(container_env(objects, workload)) - component.variables
        assert not unknown, f"{workload['metadata']['name']} gets non-settings {unknown}"
    # What containers read variables from: one ConfigMap and at most one Secret per
    # component, named after it (`users-config`, `users-secrets`).
    for kind, name in env_sources(objects):
        config = of_kind(objects, kind)[name]
        component_name, suffix = name.rsplit("-", 1)
        assert suffix == {"ConfigMap": "config", "Secret": "secrets"}[kind], name
        unknown = set(data(config)) - COMPONENTS[component_name].variables
        assert not unknown, f"{name} holds non-settings {unknown}"
    # Every other Secret holds files, mounted into a container; nothing is left over.
    mounted = {
        file.secret
        for workload in workloads(objects)
        for file in mounted_files(objects, workload).values()
    }
    sources = {name for kind, name in env_sources(objects) if kind == "Secret"}
    assert not sources & mounted, "a Secret is either variables or files"
    assert sources | mounted == set(of_kind(objects, "Secret"))
    assert {n for k, n in env_sources(objects) if k == "ConfigMap"} == set(
        of_kind(objects, "ConfigMap")
    )


def test_configuration_comes_from_configmaps_and_secrets_only(
    objects: list[dict[str, Any]],
) -> None:
    for workload in workloads(objects):
        for variable in container(workload).get("env", []):
            assert "valueFrom" in variable, "a literal value belongs in the ConfigMap"
    for name, secret in of_kind(objects, "Secret").items():
        for key, value in data(secret).items():
            assert PLACEHOLDER in value or value == "", f"{name}.{key}: a real secret in git?"
    for name, config in of_kind(objects, "ConfigMap").items():
        for key in data(config):
            assert not key.endswith(("_SECRET", "_API_KEY", "DATABASE_URL")), f"{name}.{key}"


def test_the_settings_load_once_the_placeholders_are_replaced(
    objects: list[dict[str, Any]],
) -> None:
    for workload in workloads(objects):
        component = deploy.component_of_module(runs(workload).module)
        settings = settings_of(objects, workload)
        if workload["kind"] == "Deployment":
            assert settings.addr == f"0.0.0.0:{component.port}"


def test_every_workload_runs_in_production_mode(objects: list[dict[str, Any]]) -> None:
    for workload in workloads(objects):
        env = container_env(objects, workload)
        assert env.get(production.ENV_VARIABLE) == "production", workload["metadata"]["name"]


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_production_mode_accepts_the_manifests_once_the_placeholders_are_replaced(
    objects: list[dict[str, Any]], component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = deployment_for(objects, component)
    env = container_env(objects, deployment)
    monkeypatch.setenv(production.ENV_VARIABLE, env[production.ENV_VARIABLE])
    assert production.environment() == "production"
    settings = settings_of(objects, deployment)
    assert settings.production_problems() == []
    production.check(settings.production_problems())


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_production_mode_refuses_the_placeholders(
    objects: list[dict[str, Any]], component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = container_env(objects, deployment_for(objects, component))
    monkeypatch.setenv(production.ENV_VARIABLE, env[production.ENV_VARIABLE])
    held = {name for name, value in env.items() if PLACEHOLDER in value}
    assert held, f"{component} has no placeholder to replace?"
    settings_class = COMPONENTS[component].settings
    # As they are: the settings do not load (a placeholder is shorter than a secret),
    # or production mode refuses them.
    try:
        settings = deploy.load_with_env(settings_class, env)
    except SettingsError:
        pass
    else:
        with pytest.raises(StartupError):
            production.check(settings.production_problems())
    # And however long a value that still holds the placeholder, production mode
    # names each secret that does (the host in a database URL is no secret).
    padded = {n: v.replace(PLACEHOLDER, f"{PLACEHOLDER}-0123456789abcdef") for n, v in env.items()}
    settings = deploy.load_with_env(settings_class, padded)
    with pytest.raises(StartupError) as caught:
        production.check(settings.production_problems())
    message = str(caught.value)
    assert "\n" not in message
    assert all(name in message for name in held), (held, message)
    assert PLACEHOLDER not in message, "the values themselves stay out of the message"


@pytest.mark.parametrize("component", [c.name for c in COMPONENTS.values() if c.migrates])
def test_production_mode_does_not_stop_the_migrations(
    objects: list[dict[str, Any]],
    component: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = COMPONENTS[component].module
    (job,) = [j for j in of_kind(objects, "Job").values() if runs(j).module == module]
    env = filled_in(container_env(objects, job))
    assert env[production.ENV_VARIABLE] == "production"
    # It mounts nothing: no certificate, no key. Served with these settings, production
    # mode would refuse (no page-token secret, for one) ...
    assert not mounted_files(objects, job)
    assert deploy.load_with_env(COMPONENTS[component].settings, env).production_problems()
    # ... but `migrate` is not `serve`: the module's own command line, run for real
    # (in this process: a subprocess would spend seconds importing the service) on a
    # database of its own.
    variable = f"{COMPONENTS[component].prefix}DATABASE_URL"
    env[variable] = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    point = runs(job)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with mock.patch.dict(os.environ, env, clear=True):
            code = MAINS[point.module](list(point.args))
    finally:
        # The command configures the root logger for its process: put it back.
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "refuses" not in err


@pytest.mark.parametrize("component", ["users", "ai"])
def test_a_placeholder_secret_stops_start_up(objects: list[dict[str, Any]], component: str) -> None:
    env = container_env(objects, deployment_for(objects, component))
    with pytest.raises(SettingsError) as caught:
        deploy.load_with_env(COMPONENTS[component].settings, env)
    secrets = {n for n, v in env.items() if PLACEHOLDER in v and n.endswith("_SECRET")}
    assert secrets and all(name in str(caught.value) for name in secrets)


def test_the_gateway_holds_its_service_account_secret_and_no_signing_material(
    objects: list[dict[str, Any]],
) -> None:
    gateway = deployment_for(objects, "gateway")
    env = container_env(objects, gateway)
    # Its one secret variable: its service account's, from gateway-secrets.
    c = container(gateway)
    refs = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
    refs += [
        v["valueFrom"]["secretKeyRef"]["name"]
        for v in c.get("env", [])
        if "secretKeyRef" in v.get("valueFrom", {})
    ]
    assert refs == ["gateway-secrets"]
    assert set(data(of_kind(objects, "Secret")["gateway-secrets"])) == {"GATEWAY_CLIENT_SECRET"}
    assert PLACEHOLDER in env["GATEWAY_CLIENT_SECRET"]
    settings = settings_of(objects, gateway)
    assert settings.service_secret() == filled_in(env)["GATEWAY_CLIENT_SECRET"]
    # Its only files are its own certificate: no signing key, nothing of the users pods.
    users = deployment_for(objects, "users")
    own = {f.secret for f in mounted_files(objects, gateway).values()}
    assert own == {tls_secret_of(objects, gateway)}
    assert not own & {f.secret for f in mounted_files(objects, users).values()}
    assert not [n for n in env if "SIGNING" in n or n.endswith("_KEY")]
    # The account it logs in as is the one secrets.yaml says how to make.
    command = (
        f"python -m users_service create-service-account {settings.client_id} "
        f"--scope {','.join(GATEWAY_SCOPES)}"
    )
    assert command in (deploy.KUBERNETES / "secrets.yaml").read_text()
    # It verifies the users service's tokens with its public keys.
    deploy.check_tokens_agree(settings_of(objects, users), settings)
    assert not any("JWT_SECRET" in p.read_text() for p in deploy.kubernetes_files())


def test_the_users_pods_sign_with_the_key_mounted_from_a_secret(
    objects: list[dict[str, Any]],
) -> None:
    users = deployment_for(objects, "users")
    settings = deploy.load_with_env(
        COMPONENTS["users"].settings, filled_in(container_env(objects, users))
    )
    # One key for every pod, from the Secret: never a generated one per pod.
    assert settings.token_signing_key_file is not None
    files = mounted_files(objects, users)
    key = files.get(str(settings.token_signing_key_file))
    assert key is not None, f"{settings.token_signing_key_file} is not mounted"
    assert key.read_only
    for path in settings.verify_key_paths:
        assert str(path) in files, f"{path} is not mounted"
    # The pod's non-root user can read it.
    assert readable_by_the_pod(users, key), oct(key.mode)
    # Only the pods that sign hold the private key.
    for workload in workloads(objects):
        if workload is not users:
            holders = {f.secret for f in mounted_files(objects, workload).values()}
            assert key.secret not in holders, workload["metadata"]["name"]


def test_the_placeholder_signing_key_stops_start_up(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    users = deployment_for(objects, "users")
    env = filled_in(container_env(objects, users))
    # The mounted files, as they would be, under tmp_path.
    secrets = of_kind(objects, "Secret")
    for path, file in mounted_files(objects, users).items():
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(data(secrets[file.secret])[file.key])
    signing = env["USERS_TOKEN_SIGNING_KEY_FILE"]
    assert PLACEHOLDER in (tmp_path / signing.lstrip("/")).read_text()
    env["USERS_TOKEN_SIGNING_KEY_FILE"] = str(tmp_path / signing.lstrip("/"))
    env["USERS_TOKEN_DEV_KEY_FILE"] = str(tmp_path / "dev" / "key.pem")
    settings = deploy.load_with_env(COMPONENTS["users"].settings, env)
    with pytest.raises(StartupError) as caught:
        signing_keys_from(settings)
    assert env["USERS_TOKEN_SIGNING_KEY_FILE"] in str(caught.value)
    # Never a generated key in its place.
    assert not (tmp_path / "dev").exists()


def test_the_ai_service_runs_offline_until_a_key_is_set(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = filled_in(container_env(objects, deployment_for(objects, "ai")))
    assert env["ANTHROPIC_API_KEY"] == ""
    settings = deploy.load_with_env(COMPONENTS["ai"].settings, env)
    monkeypatch.setenv("ANTHROPIC_API_KEY", env["ANTHROPIC_API_KEY"])
    assert settings.resolved_provider() == "offline"


def grpc_ports(c: Mapping[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


GRPC_SERVERS = [c.name for c in COMPONENTS.values() if c.grpc_service]


@pytest.mark.parametrize("name", GRPC_SERVERS)
def test_each_grpc_server_requires_mtls_with_the_certificate_mounted_where_it_points(
    objects: list[dict[str, Any]], name: str
) -> None:
    deployment = deployment_for(objects, name)
    tls = settings_of(objects, deployment).server_tls()
    assert tls is not None, f"{name} serves plaintext"
    assert tls.mutual, f"{name} serves TLS without requiring client certificates"
    files = mounted_files(objects, deployment)
    secret = tls_secret_of(objects, deployment)
    assert set(data(of_kind(objects, "Secret")[secret])) == TLS_KEYS
    for path in tls.files:
        mounted = files.get(str(path))
        assert mounted is not None, f"{path} is not mounted"
        assert mounted.secret == secret and mounted.read_only
        assert readable_by_the_pod(deployment, mounted), f"{path}: {oct(mounted.mode)}"
    # Each pod its own certificate: no other workload mounts this one.
    for workload in workloads(objects):
        if workload is not deployment:
            held = {f.secret for f in mounted_files(objects, workload).values()}
            assert secret not in held, workload["metadata"]["name"]
    # Rotated in place only if mounted whole: the kubelet never updates a subPath.
    assert not [m for m in container(deployment)["volumeMounts"] if "subPath" in m]


@pytest.mark.parametrize(
    ("client", "upstreams"), [("gateway", ("users", "ai")), ("ai", ("users",))]
)
def test_clients_call_over_mtls_with_their_own_certificate(
    objects: list[dict[str, Any]], client: str, upstreams: tuple[str, ...]
) -> None:
    deployment = deployment_for(objects, client)
    settings = settings_of(objects, deployment)
    tls = settings.client_tls()
    assert tls is not None and tls.cert_file is not None, f"{client} calls without mTLS"
    files = mounted_files(objects, deployment)
    secret = tls_secret_of(objects, deployment)
    for path in tls.files:
        mounted = files.get(str(path))
        assert mounted is not None, f"{path} is not mounted"
        assert mounted.secret == secret and mounted.read_only
        assert readable_by_the_pod(deployment, mounted), f"{path}: {oct(mounted.mode)}"
    # The name each upstream's certificate is checked against is its target's host:
    # the Service's DNS name, which that certificate must carry.
    assert tls.server_name is None
    for upstream in upstreams:
        host, _ = deploy.dns_target(getattr(settings, f"{upstream}_target"))
        assert host == service_host(objects, upstream)
    if client in GRPC_SERVERS:
        # One certificate for both ends: the one it serves with.
        server = settings.server_tls()
        assert (tls.cert_file, tls.key_file) == (server.cert_file, server.key_file)
        assert tls.ca_file == server.client_ca_file


@pytest.mark.parametrize("name", GRPC_SERVERS)
def test_a_placeholder_certificate_stops_start_up(
    objects: list[dict[str, Any]], name: str, tmp_path: Path
) -> None:
    deployment = deployment_for(objects, name)
    env = on_disk(objects, deployment, tmp_path)
    tls = deploy.load_with_env(COMPONENTS[name].settings, env).server_tls()
    assert PLACEHOLDER in tls.cert_file.read_text()
    with pytest.raises(TlsFilesError) as caught:
        server_credentials(tls)
    message = str(caught.value)
    assert str(tls.cert_file) in message and "\n" not in message


def probes(objects: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    c = container(deployment_for(objects, name))
    return {kind: c[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}


def probe_args(probe: Mapping[str, Any]) -> Any:
    """An exec probe's `python -m servicekit.healthcheck` arguments, parsed by it."""
    assert set(probe) & {"exec", "grpc", "httpGet", "tcpSocket"} == {"exec"}, probe
    point = deploy.entry_point(probe["exec"]["command"])
    assert point.module == deploy.HEALTHCHECK_MODULE
    return deploy.healthcheck_args(point.args)


@pytest.mark.parametrize("name", GRPC_SERVERS)
def test_grpc_probes_ask_the_right_service_on_the_right_port_over_mtls(
    objects: list[dict[str, Any]], name: str
) -> None:
    component = COMPONENTS[name]
    deployment = deployment_for(objects, name)
    c = container(deployment)
    assert grpc_ports(c)["grpc"] == component.port
    tls = settings_of(objects, deployment).server_tls()
    files = mounted_files(objects, deployment)
    for kind, probe in probes(objects, name).items():
        args = probe_args(probe)
        # The pod's own server, on its port, checked against the name its
        # certificate carries (the Service's, as clients target it).
        assert args.target == f"127.0.0.1:{component.port}", kind
        assert args.server_name == service_host(objects, name), kind
        # Its own certificate as the client's, and the CA its server trusts.
        assert (args.cert, args.key) == (tls.cert_file, tls.key_file), kind
        assert args.cacert == tls.client_ca_file, kind
        assert all(str(p) in files for p in (args.cacert, args.cert, args.key)), kind
        # Ready while the service itself is SERVING; alive while the server answers.
        expected = component.grpc_service if kind == "readiness" else ""
        assert args.service == expected, kind
        # Starting Python takes ~0.15 s on top of the check's own timeout.
        assert probe["timeoutSeconds"] >= max(3, args.timeout + 1), kind
        assert probe["periodSeconds"] >= probe["timeoutSeconds"], kind


@pytest.mark.parametrize("name", GRPC_SERVERS)
def test_the_probes_pass_against_mtls_with_certificates_for_the_service_name(
    objects: list[dict[str, Any]], name: str, tmp_path: Path
) -> None:
    """The probes as the pod runs them, against a server with the pod's TLS settings,
    once the placeholders are real certificates naming the Service."""
    component = COMPONENTS[name]
    deployment = deployment_for(objects, name)
    env = on_disk(objects, deployment, tmp_path)
    tls = deploy.load_with_env(component.settings, env).server_tls()
    authority = trustme.CA()
    leaf = authority.issue_cert(service_host(objects, name))
    assert tls.client_ca_file is not None
    authority.cert_pem.write_to_path(str(tls.client_ca_file))
    leaf.private_key_pem.write_to_path(str(tls.key_file))
    tls.cert_file.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    assert component.grpc_service is not None
    # The whole server is SERVING from the start (the empty name); the service too.
    servicer = health.HealthServicer()
    servicer.set(component.grpc_service, health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    server.start()
    try:
        # The pod's paths, as on_disk wrote them; the port the test server got.
        local = {p: str(tmp_path / p.lstrip("/")) for p in mounted_files(objects, deployment)}
        for kind, probe in probes(objects, name).items():
            args = probe_args(probe)
            local[args.target] = f"127.0.0.1:{port}"
            argv = [local.get(a, a) for a in probe["exec"]["command"][3:]]
            assert healthcheck.main(argv) == 0, kind
        # And the check is real: another name, or no client certificate, fails.
        name_at = argv.index("--server-name") + 1
        assert healthcheck.main([*argv[:name_at], "elsewhere.invalid", *argv[name_at + 1 :]])
        cert_at = argv.index("--cert")
        key_at = argv.index("--key")
        anonymous = [
            a for i, a in enumerate(argv) if i not in {cert_at, cert_at + 1, key_at, key_at + 1}
        ]
        assert healthcheck.main(anonymous)
    finally:
        server.stop(None)


def test_the_gateway_is_ready_on_readyz_and_alive_on_healthz(
    objects: list[dict[str, Any]],
) -> None:
    gateway = COMPONENTS["gateway"]
    deployment = deployment_for(objects, "gateway")
    c = container(deployment)
    assert grpc_ports(c)["http"] == gateway.port
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": gateway.port}
    assert {"/readyz", "/healthz"} <= deploy.gateway_routes()
    # Alive on the health port the settings serve (gateway.health_port), not the API's.
    settings = settings_of(objects, deployment)
    assert isinstance(settings, GatewaySettings)
    assert settings.health_host_port == ("0.0.0.0", grpc_ports(c)["health"])
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": grpc_ports(c)["health"]}
    # Only the kubelet calls it: the Service does not expose it.
    exposed = {p["targetPort"] for p in service_of(objects, "gateway")["spec"]["ports"]}
    assert exposed == {"http"}


def service_of(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The Service that selects the component's pods."""
    labels = deployment_for(objects, component)["spec"]["template"]["metadata"]["labels"]
    found = [
        s
        for s in of_kind(objects, "Service").values()
        if s["spec"]["selector"].items() <= labels.items()
    ]
    assert len(found) == 1, f"expected one Service for {component}"
    return found[0]


def test_services_select_their_pods_on_the_default_ports(objects: list[dict[str, Any]]) -> None:
    for name, component in COMPONENTS.items():
        deployment = deployment_for(objects, name)
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        service = service_of(objects, name)
        (port,) = service["spec"]["ports"]
        assert port["port"] == component.port
        named = grpc_ports(container(deployment))
        assert named[port["targetPort"]] == component.port
        headless = service["spec"].get("clusterIP") == "None"
        # gRPC: headless, so DNS lists every ready pod for the gateway's round-robin.
        assert headless == (component.grpc_service is not None), name


def test_the_gateway_targets_every_pod_through_the_headless_services(
    objects: list[dict[str, Any]],
) -> None:
    env = container_env(objects, deployment_for(objects, "gateway"))
    for upstream in ("users", "ai"):
        service = service_of(objects, upstream)
        host, port = deploy.dns_target(env[f"GATEWAY_{upstream.upper()}_TARGET"])
        name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
        assert host == f"{name}.{namespace}.svc.cluster.local"
        assert port == service["spec"]["ports"][0]["port"] == COMPONENTS[upstream].port


def test_every_container_has_requests_and_limits(objects: list[dict[str, Any]]) -> None:
    for workload in workloads(objects):
        resources = container(workload)["resources"]
        for kind in ("cpu", "memory"):
            request = deploy.quantity(resources["requests"][kind])
            limit = deploy.quantity(resources["limits"][kind])
            assert 0 < request <= limit, f"{workload['metadata']['name']} {kind}"


def test_password_hashing_threads_fit_the_cpu_limit(objects: list[dict[str, Any]]) -> None:
    users = deployment_for(objects, "users")
    workers = int(container_env(objects, users)["USERS_PASSWORD_HASH_WORKERS"])
    cpus = deploy.quantity(container(users)["resources"]["limits"]["cpu"])
    # Fewer than the cores (so the event loop keeps one), and at least one.
    assert 1 <= workers <= max(1, math.ceil(cpus) - 1)


def test_pods_run_as_the_images_non_root_user(objects: list[dict[str, Any]]) -> None:
    image_user = int(deploy.dockerfile().final.all("USER")[-1].args.split(":")[0])
    images = set()
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == image_user
        assert spec["automountServiceAccountToken"] is False
        c = container(workload)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        images.add(c["image"])
    # One image runs everything, as the Dockerfile builds it.
    (image,) = images
    assert not image.endswith(":latest") and ":" in image


def test_pods_outlive_the_graceful_shutdown(objects: list[dict[str, Any]]) -> None:
    for name, component in COMPONENTS.items():
        deployment = deployment_for(objects, name)
        grace = component.settings.model_fields["shutdown_grace_seconds"].default
        pre_stop = container(deployment).get("lifecycle", {}).get("preStop", {})
        delay = float(pre_stop["exec"]["command"][-1]) if pre_stop else 0.0
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > grace + delay, name
