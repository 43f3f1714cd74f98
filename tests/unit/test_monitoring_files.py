"""deploy/prometheus/alerts.yml and deploy/grafana/tandem.json name only metrics that
Tandem's processes export (with the suffixes Prometheus gives them)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

import gateway.metrics  # noqa: F401 - registers the gateway's HTTP metrics
import users_service.passwords  # noqa: F401 - registers the password-hash gauge
from ai_service.metrics import Metrics
from servicekit.metrics import REGISTRY
from tests.conftest import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tandem.json"
_NAME = re.compile(r"\b(tandem_[a-z_]+)\b")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def exported(*registries: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def rule_expressions() -> Iterator[str]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def panel_expressions(panels: list[dict[str, Any]]) -> Iterator[str]:
    for panel in panels:
        yield from (target["expr"] for target in panel.get("targets", ()))
        yield from panel_expressions(panel.get("panels", []))


def test_every_metric_the_rules_and_the_dashboard_name_is_exported() -> None:
    names = exported(REGISTRY, Metrics().registry)
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [*rule_expressions(), *panel_expressions(dashboard["panels"])]
    used = {name for expr in expressions for name in _NAME.findall(expr)}
    assert len(used) >= 10
    assert used <= names, sorted(used - names)


def test_the_dashboard_has_the_red_panels_of_both_kinds_of_process() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = " ".join(panel_expressions(dashboard["panels"]))
    for metric in (
        "tandem_http_requests_total",
        "tandem_http_request_duration_seconds_bucket",
        "tandem_rpc_server_calls_total",
        "tandem_rpc_server_duration_seconds_bucket",
    ):
        assert metric in expressions
