"""deploy/kubernetes, checked without a cluster, against the project itself.

The same consistency as for docker-compose.yml: each container runs a real entry point,
every variable it gets (from its ConfigMap, its Secret or `env`) is a real setting of
that component, and the settings load from them; probes, ports and Services agree with
the settings' defaults; the gateway's targets name the headless Services.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from servicekit.settings import SettingsError
from tests.support import deploy
from tests.support.deploy import COMPONENTS

NAMESPACE = "tandem"
PLACEHOLDER = "REPLACE-ME"


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
    for config in [*of_kind(objects, "ConfigMap").values(), *of_kind(objects, "Secret").values()]:
        # One ConfigMap and one Secret per component, named after it.
        component = COMPONENTS[config["metadata"]["name"].rsplit("-", 1)[0]]
        unknown = set(data(config)) - component.variables
        assert not unknown, f"{config['metadata']['name']} holds non-settings {unknown}"


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
        settings = deploy.load_with_env(
            component.settings, filled_in(container_env(objects, workload))
        )
        if workload["kind"] == "Deployment":
            assert settings.addr == f"0.0.0.0:{component.port}"


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_a_placeholder_secret_stops_start_up(objects: list[dict[str, Any]], component: str) -> None:
    env = container_env(objects, deployment_for(objects, component))
    with pytest.raises(SettingsError) as caught:
        deploy.load_with_env(COMPONENTS[component].settings, env)
    secrets = {n for n, v in env.items() if PLACEHOLDER in v and n.endswith("_SECRET")}
    assert secrets and all(name in str(caught.value) for name in secrets)


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


@pytest.mark.parametrize("name", ["users", "ai"])
def test_grpc_probes_ask_the_right_service_on_the_right_port(
    objects: list[dict[str, Any]], name: str
) -> None:
    component = COMPONENTS[name]
    c = container(deployment_for(objects, name))
    assert grpc_ports(c)["grpc"] == component.port
    readiness = c["readinessProbe"]["grpc"]
    # Ready while the service itself is SERVING; alive while the server answers.
    assert readiness == {"port": component.port, "service": component.grpc_service}
    assert c["livenessProbe"]["grpc"] == {"port": component.port}
    assert c["startupProbe"]["grpc"]["port"] == component.port


def test_the_gateway_is_ready_on_readyz_and_alive_on_healthz(
    objects: list[dict[str, Any]],
) -> None:
    gateway = COMPONENTS["gateway"]
    c = container(deployment_for(objects, "gateway"))
    assert grpc_ports(c)["http"] == gateway.port
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": gateway.port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": gateway.port}
    assert {"/readyz", "/healthz"} <= deploy.gateway_routes()


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
