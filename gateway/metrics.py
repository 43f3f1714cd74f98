"""The gateway's HTTP metrics: RED per route template (servicekit.metrics has the rest).

A route is labelled by its template (`/v1/users/{user_id}`), never by the path a client
sent; a request no route matched is `unmatched`, and a method outside HTTP's own is
`OTHER`, so no client can grow the number of series.
"""

from __future__ import annotations

from starlette.types import Scope

from servicekit import metrics
from servicekit.hot_metrics import CounterCell, HistogramCell, HotCounter, HotHistogram
from servicekit.metrics import LATENCY_BUCKETS, REGISTRY

HTTP_REQUESTS = HotCounter(
    "tandem_http_requests",
    "HTTP requests the gateway answered, by route template, method and status "
    "(499: the client left before the answer).",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = HotHistogram(
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
        # Per route, method and status: its count, and its route and method's durations.
        self._cells: dict[tuple[str, str, int], tuple[CounterCell, HistogramCell]] = {}

    def ended(self, route: str | None, method: str, status: int, seconds: float) -> None:
        if not metrics.recording():
            return
        key = (route or UNMATCHED, method if method in _METHODS else "OTHER", status)
        cells = self._cells.get(key)
        if cells is None:
            route, method = key[:2]
            cells = self._cells[key] = (
                HTTP_REQUESTS.labels(route, method, str(status)),
                HTTP_DURATION.labels(route, method),
            )
        cells[0].inc()
        cells[1].observe(seconds)
