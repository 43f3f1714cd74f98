"""deploy/kubernetes against the Kubernetes API's own schemas, offline, and the
hardening the manifests promise: default-deny networking with only the flows the stack
needs, a disruption budget and a CPU autoscaler per Deployment, replica bounds that fit
PostgreSQL's connections.

The schemas come with kubernetes-validate (the dev extra): the OpenAPI schemas of each
Kubernetes release, in their strict form, which also refuses fields the API does not
know (a misspelt key would otherwise be dropped silently by `kubectl apply`).
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from kubernetes_validate import utils as kubernetes_schemas
from packaging.version import Version

from tests.support import deploy
from tests.support.deploy import COMPONENTS

NAMESPACE = "tandem"
# The oldest release the manifests are checked against: the first where everything
# they use is GA (PodDisruptionBudget's unhealthyPodEvictionPolicy, 1.31).
OLDEST = Version("1.31")
# PostgreSQL's default max_connections, less superuser_reserved_connections (3).
POSTGRES_CONNECTIONS = 100 - 3
POSTGRES_PORT = 5432
DNS_PORT = 53
HTTPS_PORT = 443
REDIS_PORT = 6379
NAME = "app.kubernetes.io/name"


def releases() -> list[str]:
    """The oldest release the manifests support and the newest the validator ships
    (the releases between change nothing the manifests use)."""
    shipped = sorted({Version(v) for v in kubernetes_schemas.all_versions()})
    assert shipped[0] <= OLDEST <= shipped[-1], f"the validator has no schemas for {OLDEST}"
    return [str(OLDEST), str(shipped[-1])]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return deploy.kubernetes_objects()


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def label(o: Mapping[str, Any]) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


@pytest.mark.parametrize("release", releases())
def test_every_manifest_is_valid_for_the_kubernetes_api(
    objects: list[dict[str, Any]], release: str
) -> None:
    assert objects
    for o in objects:
        try:
            kubernetes_validate.validate(o, release, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            pytest.fail(
                f"{label(o)} is invalid for Kubernetes {release} at {path}: {error.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{label(o)}: {error.message}")


def test_the_validator_refuses_what_the_api_would() -> None:
    """The check is real: an unknown field, a wrong type and a missing required
    field each fail, in the same Deployment that passes as written."""
    (deployment,) = (
        o
        for o in deploy.kubernetes_objects()
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "users"
    )
    release = releases()[-1]
    kubernetes_validate.validate(deployment, release, strict=True)
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    missing = copy.deepcopy(deployment)
    del missing["spec"]["selector"]
    for broken in (unknown, wrong_type, missing):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, release, strict=True)


# Network policies --------------------------------------------------------------------


def pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each workload's pod template (Deployments and Jobs), by workload name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    }


def pod_labels(template: Mapping[str, Any]) -> dict[str, str]:
    return dict(template["metadata"]["labels"])


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector's verdict on `labels` (an empty selector selects everything)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def container_ports(template: Mapping[str, Any]) -> dict[str, int]:
    """The pod's named container ports."""
    return {
        port["name"]: port["containerPort"]
        for c in template["spec"]["containers"]
        for port in c.get("ports", [])
        if "name" in port
    }


def resolved_ports(rule: Mapping[str, Any], template: Mapping[str, Any] | None) -> set[Any]:
    """A rule's ports as (protocol, number), named ports resolved on `template` (the
    destination pod); None in the set means every port."""
    if not rule.get("ports"):
        return {None}
    found: set[Any] = set()
    named = container_ports(template) if template is not None else {}
    for port in rule["ports"]:
        protocol = port.get("protocol", "TCP")
        number = port.get("port")
        if number is None:
            found.add(None)
        elif isinstance(number, str):
            if number in named:
                found.add((protocol, named[number]))
        else:
            found.add((protocol, number))
    return found


@dataclass(frozen=True)
class Peer:
    """Where a rule lets traffic go (or come from) outside the namespace's own pods."""

    kind: str  # "pods of another namespace", "addresses" or "anywhere"
    where: str
    ports: frozenset[Any]


def policies_for(
    objects: list[dict[str, Any]], template: Mapping[str, Any], kind: str
) -> Iterator[dict[str, Any]]:
    for policy in of_kind(objects, "NetworkPolicy").values():
        spec = policy["spec"]
        if kind in spec.get("policyTypes", ["Ingress"]) and selects(
            spec["podSelector"], pod_labels(template)
        ):
            yield spec


def in_namespace_peers(rule: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The podSelectors of a rule's peers in this namespace; None: every pod (no peers)."""
    key = "to" if "to" in rule or "from" not in rule else "from"
    peers = rule.get(key)
    if peers is None:
        return None
    return [p["podSelector"] for p in peers if set(p) == {"podSelector"}]


def outside_peers(rule: Mapping[str, Any], template: Mapping[str, Any] | None) -> set[Peer]:
    key = "to" if "to" in rule else "from"
    ports = frozenset(resolved_ports(rule, template))
    if key not in rule:
        return {Peer("anywhere", "*", ports)}
    found = set()
    for peer in rule[key]:
        if "namespaceSelector" in peer:
            namespaces = peer["namespaceSelector"].get("matchLabels", {})
            where = f"{namespaces}/{peer.get('podSelector', {}).get('matchLabels', {})}"
            found.add(Peer("pods of another namespace", where, ports))
        elif "ipBlock" in peer:
            block = peer["ipBlock"]
            found.add(Peer("addresses", f"{block['cidr']} except {block.get('except', [])}", ports))
    return found


def allowed_ports(
    objects: list[dict[str, Any]],
    direction: str,
    pod: Mapping[str, Any],
    other: Mapping[str, Any],
    receiver: Mapping[str, Any],
) -> set[Any]:
    """The ports on `receiver` the policies selecting `pod` allow in `direction`
    (Egress: `pod` sends to `other`; Ingress: `pod` hears from `other`); None: all."""
    ports: set[Any] = set()
    for spec in policies_for(objects, pod, direction):
        for rule in spec.get(direction.lower(), []):
            peers = in_namespace_peers(rule)
            if peers is None or any(selects(p, pod_labels(other)) for p in peers):
                ports |= resolved_ports(rule, receiver)
    return ports


def allowed_flows(objects: list[dict[str, Any]]) -> set[tuple[str, str, Any]]:
    """(from workload, to workload, (protocol, port)) for every pod-to-pod flow in the
    namespace that both the sender's egress and the receiver's ingress allow, on the
    ports the receiver listens on."""
    templates = pods(objects)
    flows = set()
    for source, sender in templates.items():
        for target, receiver in templates.items():
            listening = {("TCP", p) for p in container_ports(receiver).values()}
            both = listening
            for direction, pod, other in (
                ("Egress", sender, receiver),
                ("Ingress", receiver, sender),
            ):
                ports = allowed_ports(objects, direction, pod, other, receiver)
                both = both if None in ports else both & ports
            flows |= {(source, target, port) for port in both}
    return flows


def expected_flows(objects: list[dict[str, Any]]) -> set[tuple[str, str, Any]]:
    """Each gRPC client to the Service its settings target, on that Service's port:
    derived from the ConfigMaps' *_TARGET settings, as the clients dial them."""
    configs = of_kind(objects, "ConfigMap")
    services = of_kind(objects, "Service")
    deployments = of_kind(objects, "Deployment")
    flows = set()
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(configs[source["configMapRef"]["name"]]["data"])
        for variable, value in env.items():
            if not variable.endswith("_TARGET"):
                continue
            host, port = deploy.dns_target(value)
            service_name, service_namespace = host.split(".")[:2]
            assert service_namespace == NAMESPACE, value
            service = services[service_name]
            for target, other in deployments.items():
                if selects(
                    {"matchLabels": service["spec"]["selector"]},
                    pod_labels(other["spec"]["template"]),
                ):
                    flows.add((name, target, ("TCP", port)))
    return flows


def test_everything_is_denied_unless_a_policy_allows_it(objects: list[dict[str, Any]]) -> None:
    denying = [
        p
        for p in of_kind(objects, "NetworkPolicy").values()
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(denying) == 1, "one default-deny policy for every pod, both directions"
    # Every pod is selected by it, so every flow needs a rule.
    for name, template in pods(objects).items():
        assert selects(denying[0]["spec"]["podSelector"], pod_labels(template)), name


def test_pods_reach_only_the_services_their_settings_call(objects: list[dict[str, Any]]) -> None:
    expected = expected_flows(objects)
    # The gateway calls both services; the ai service calls the users service.
    assert {(a, b) for a, b, _ in expected} == {
        ("gateway", "users"),
        ("gateway", "ai"),
        ("ai", "users"),
    }
    assert allowed_flows(objects) == expected
    for _, target, (_, port) in expected:
        assert port == COMPONENTS[target].port


def outside(objects: list[dict[str, Any]], direction: str) -> dict[str, set[Peer]]:
    """Per workload, the peers outside the namespace's pods it may talk to (egress) or
    hear from (ingress)."""
    found: dict[str, set[Peer]] = {}
    for name, template in pods(objects).items():
        peers: set[Peer] = set()
        for spec in policies_for(objects, template, direction):
            for rule in spec.get(direction.lower(), []):
                peers |= outside_peers(rule, template if direction == "Ingress" else None)
        found[name] = peers
    return found


def test_egress_leaves_the_namespace_for_dns_postgresql_and_anthropic_only(
    objects: list[dict[str, Any]],
) -> None:
    dns = Peer(
        "pods of another namespace",
        "{'kubernetes.io/metadata.name': 'kube-system'}/{'k8s-app': 'kube-dns'}",
        frozenset({("UDP", DNS_PORT), ("TCP", DNS_PORT)}),
    )
    postgres = Peer("anywhere", "*", frozenset({("TCP", POSTGRES_PORT)}))
    egress = outside(objects, "Egress")
    for name, peers in egress.items():
        assert dns in peers, f"{name} cannot resolve names"
        rest = peers - {dns}
        if name == "gateway":
            assert rest == set(), f"the gateway calls only its upstreams: {rest}"
        elif name == "ai":
            (https,) = rest - {postgres}
            assert postgres in rest
            assert https.kind == "addresses" and https.ports == {("TCP", HTTPS_PORT)}
        else:
            # users and the migration Jobs: their database only.
            assert rest == {postgres}, f"{name}: {rest}"


def test_redis_is_reachable_exactly_where_it_is_configured(
    objects: list[dict[str, Any]],
) -> None:
    configs = of_kind(objects, "ConfigMap")
    egress = outside(objects, "Egress")
    for name, template in pods(objects).items():
        (container,) = template["spec"]["containers"]
        names = [
            s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s
        ]
        configured = any(k.endswith("_REDIS_URL") for n in names for k in configs[n]["data"])
        reaches = any(("TCP", REDIS_PORT) in peer.ports for peer in egress[name])
        assert reaches == configured, f"{name}: Redis configured {configured}, reachable {reaches}"


def test_anthropic_is_reached_on_public_addresses_only(objects: list[dict[str, Any]]) -> None:
    ai = of_kind(objects, "NetworkPolicy")["ai"]
    (block,) = [
        peer["ipBlock"]
        for rule in ai["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]
    assert block["cidr"] == "0.0.0.0/0"
    excepted = [ipaddress.IPv4Network(c) for c in block["except"]]
    for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"):
        assert any(ipaddress.IPv4Network(private).subnet_of(e) for e in excepted), private


def test_only_the_gateway_and_the_metrics_port_are_reachable_from_outside(
    objects: list[dict[str, Any]],
) -> None:
    prometheus = (
        "{'kubernetes.io/metadata.name': 'monitoring'}/{'app.kubernetes.io/name': 'prometheus'}"
    )
    ingress = outside(objects, "Ingress")
    gateway_port = ("TCP", COMPONENTS["gateway"].port)
    metrics = {
        name: container_ports(template).get("metrics") for name, template in pods(objects).items()
    }
    for name, peers in ingress.items():
        expected = set()
        if name == "gateway":
            expected.add(Peer("anywhere", "*", frozenset({gateway_port})))
        if metrics[name] is not None:
            expected.add(
                Peer("pods of another namespace", prometheus, frozenset({("TCP", metrics[name])}))
            )
        # A rule whose named port this pod lacks opens nothing on it.
        assert {p for p in peers if p.ports != frozenset()} == expected, name
    # The ai service serves metrics where its settings say, on the port named so.
    config = of_kind(objects, "ConfigMap")["ai-config"]["data"]
    assert metrics["ai"] == deploy.split_addr(config["AI_METRICS_ADDR"])[1]


# Disruption budgets and autoscalers -------------------------------------------------


def test_each_deployment_has_a_disruption_budget_that_keeps_one_pod(
    objects: list[dict[str, Any]],
) -> None:
    budgets = of_kind(objects, "PodDisruptionBudget")
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    for name, deployment in of_kind(objects, "Deployment").items():
        labels = pod_labels(deployment["spec"]["template"])
        (budget,) = [b for b in budgets.values() if selects(b["spec"]["selector"], labels)]
        # Selects this Deployment's pods and no other's.
        for other, template in pods(objects).items():
            if other != name:
                assert not selects(budget["spec"]["selector"], pod_labels(template)), other
        unavailable = budget["spec"]["maxUnavailable"]
        assert isinstance(unavailable, int), "a count: a percentage of 2 rounds to 0 or 1"
        assert unavailable < autoscalers[name]["spec"]["minReplicas"], name
        assert budget["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", name


def test_each_deployment_scales_on_cpu_from_its_replicas_up(objects: list[dict[str, Any]]) -> None:
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    deployments = of_kind(objects, "Deployment")
    assert sorted(autoscalers) == sorted(deployments)
    for name, hpa in autoscalers.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        deployment = deployments[name]
        assert spec["minReplicas"] == deployment["spec"]["replicas"] >= 2, name
        assert spec["maxReplicas"] > spec["minReplicas"], name
        ((metric),) = spec["metrics"]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu", name
        target = metric["resource"]["target"]
        assert target["type"] == "Utilization" and 50 <= target["averageUtilization"] <= 90, name
        # Utilization is a share of the request: there must be one.
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert deploy.quantity(container["resources"]["requests"]["cpu"]) > 0, name


def test_the_replica_bounds_fit_postgresqls_connections(objects: list[dict[str, Any]]) -> None:
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    configs = of_kind(objects, "ConfigMap")
    used = 0
    for component in COMPONENTS.values():
        if "database_url" not in component.settings.model_fields:
            continue
        config = configs[f"{component.name}-config"]["data"]
        fields = component.settings.model_fields
        pool = int(config.get(f"{component.prefix}DB_POOL_SIZE", fields["db_pool_size"].default))
        overflow = int(
            config.get(f"{component.prefix}DB_MAX_OVERFLOW", fields["db_max_overflow"].default)
        )
        # Each pod: its pool, any overflow, and one more (config.yaml's rule).
        used += autoscalers[component.name]["spec"]["maxReplicas"] * (pool + overflow + 1)
        # The migration Job, one connection while it runs.
        used += 1
    assert used <= POSTGRES_CONNECTIONS, f"{used} connections at the HPAs' maximum"


def test_the_cpu_requests_match_what_the_benchmarks_measured(
    objects: list[dict[str, Any]],
) -> None:
    deployments = of_kind(objects, "Deployment")

    def cpu(name: str, kind: str) -> float:
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        return deploy.quantity(container["resources"][kind]["cpu"])

    # make bench-gateway: one gateway process at ~2,200 req/s uses about one core
    # (1.06-1.13 with gRPC's threads), the users service behind it about 0.3 core.
    assert cpu("gateway", "requests") == 1.0
    assert cpu("gateway", "limits") > 1.13
    assert cpu("users", "requests") == pytest.approx(0.3)
