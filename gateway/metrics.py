"""The gateway's HTTP metrics: RED per route template (servicekit.metrics has the rest).

A route is labelled by its template (`/v1/users/{user_id}`), never by the path a client
sent; a request no route matched is `unmatched`, and a method outside HTTP's own is
`OTHER`, so no client can grow the number of series.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import Scope

from servicekit import metrics
from servicekit.metrics import LATENCY_BUCKETS, REGISTRY

HTTP_REQUESTS = Counter(
    "tandem_http_requests",
    "HTTP requests the gateway answered, by route template, method and status "
    "(499: the client left before the answer).",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "tandem_http_request_duration_seconds",
    "How long the gateway took over requests, by route template and method (a stream: "
    "until its last event).",
    ["route", "method"],
    buckets=(*LATENCY_BUCKETS, 120.0),
    registry=REGISTRY,
)

UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_of(scope: Scope) -> str | None:
    """The template of the route that handled the request (set by the router)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else None


class HttpMetrics:
    """Records each request, while the process serves metrics; label children kept."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}

    def ended(self, route: str | None, method: str, status: int, seconds: float) -> None:
        if not metrics.recording():
            return
        route = route or UNMATCHED
        method = method if method in _METHODS else "OTHER"
        key = (route, method, status)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = HTTP_REQUESTS.labels(route, method, str(status))
        counter.inc()
        duration = self._durations.get(key[:2])
        if duration is None:
            duration = self._durations[key[:2]] = HTTP_DURATION.labels(route, method)
        duration.observe(seconds)
