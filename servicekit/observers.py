"""What a process records of its calls to another service (a tandem_client.CallObserver).

Per call: its client span, whose context travels in the metadata as W3C `traceparent`
while tracing is on (servicekit.telemetry); its count by status and its duration while
the process serves metrics (servicekit.metrics); and whether the upstream is out: the
first call that finds it UNAVAILABLE logs one WARNING, the first that succeeds after
that another, with how long it lasted (servicekit.outages).
"""

from __future__ import annotations

import logging
import time

import grpc

from servicekit import metrics, telemetry
from servicekit.outages import Outage
from tandem_client import CallEnd

log = logging.getLogger("servicekit.upstreams")


class UpstreamObserver:
    def __init__(self, upstream: str, target: str) -> None:
        """`upstream`: the name the metrics and logs give it ("users", "ai");
        `target`: its address."""
        self._upstream = upstream
        self._target = target
        self._methods: dict[str, metrics.CallMetrics] = {}
        self.outage = Outage(
            f"{upstream} service at {target}",
            log=log,
            began="the %s is unavailable: %s",
            over="the %s is back after %.1fs (%d calls failed meanwhile)",
        )

    def begin(self, method: str, metadata: list[tuple[str, str]], *, stream: bool) -> CallEnd:
        recorded: metrics.CallMetrics | None = None
        if metrics.recording():
            recorded = self._methods.get(method)
            if recorded is None:
                recorded = self._methods[method] = metrics.CallMetrics.client(
                    self._upstream, method
                )
        span = telemetry.grpc_client_span(method, self._target, metadata)
        started = time.perf_counter()

        def end(code: grpc.StatusCode) -> None:
            if code is grpc.StatusCode.OK:
                self.outage.ended()
            elif code is grpc.StatusCode.UNAVAILABLE:
                self.outage.failed(f"{method.rsplit('/', 1)[-1]} answered UNAVAILABLE")
            if recorded is not None:
                recorded.ended(code, time.perf_counter() - started, stream=stream)
            if span is not None:
                telemetry.end_grpc_client_span(span, code)

        return end
