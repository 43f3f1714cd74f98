"""Prometheus metrics: one registry per process, served on an address of its own.

Every process (users, ai, gateway) records into `REGISTRY` and serves it, with the
process collector's CPU, memory and file descriptors, on `<PREFIX>METRICS_ADDR` when set
(`serve`), never on a port that serves the API. What is measured where:

- RED per gRPC method, server side (servicekit.interceptor) and client side
  (servicekit.observers), and per route template at the gateway (gateway.metrics);
- stream durations, batch sizes (reads per coalesced call, rows per group insert),
  calls refused for load or rate limits, database pool checkouts and their waits;
- the rest where it happens (password-hash queue, provider calls, tokens and cost).

Label values are bounded: method and route names, status codes and reasons, never an
id, a path with ids in it, or anything a client chose.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from servicekit.errors import StartupError
from servicekit.hot_metrics import CounterCell, HistogramCell, HotCounter, HotHistogram

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# Seconds. A read through the gateway takes 1-3 ms unloaded and tens of ms at its
# capacity (bench/gateway_bench.py), a gRPC call inside a service a few hundred µs, a
# login tens of ms (argon2), an analysis seconds (the provider): fine steps where most
# calls land, coarse ones up to the longest deadline (60 s).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# A whole stream: a provider's answer takes seconds, up to the 120 s stream deadline.
STREAM_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# Items per batch: MAX_BATCH reads per coalesced call (32), up to 256 rows per insert.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

RPC_SERVER_CALLS = HotCounter(
    "tandem_rpc_server_calls",
    "gRPC calls this server handled, by method and status.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_SERVER_DURATION = HotHistogram(
    "tandem_rpc_server_duration_seconds",
    "How long this server took over unary calls, by method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RPC_CLIENT_CALLS = HotCounter(
    "tandem_rpc_client_calls",
    "gRPC calls this process made to an upstream, by method and status.",
    ["upstream", "service", "method", "code"],
    registry=REGISTRY,
)
RPC_CLIENT_DURATION = HotHistogram(
    "tandem_rpc_client_duration_seconds",
    "How long unary calls to an upstream took, as this process saw them.",
    ["upstream", "service", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
STREAM_DURATION = HotHistogram(
    "tandem_stream_duration_seconds",
    "How long whole server-streaming calls lasted, by side and method.",
    ["side", "service", "method"],
    buckets=STREAM_BUCKETS,
    registry=REGISTRY,
)
REFUSED = Counter(
    "tandem_refused",
    "Requests refused before any work for load or a rate limit, by reason "
    "(SERVER_OVERLOADED, LOGIN_RATE_LIMITED, TOO_MANY_REQUESTS_IN_FLIGHT, ...).",
    ["reason"],
    registry=REGISTRY,
)
# Observed on the event loop only (a batch's start; a checkout, in SQLAlchemy's greenlet on
# the loop's thread), once per users call on the gateway path: hot families, not
# prometheus_client's (its lock and bucket walk cost 18,000 instructions an observation).
BATCH_SIZE = HotHistogram(
    "tandem_batch_size",
    "Items per batch: reads per coalesced call, rows per group insert.",
    ["batch"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
DB_POOL_WAIT = HotHistogram(
    "tandem_db_pool_wait_seconds",
    "How long a database checkout waited for a connection (its _count: checkouts).",
    ["database"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DB_POOL_CONNECTIONS = Gauge(
    "tandem_db_pool_connections",
    "Connections of the database pool, checked out or idle.",
    ["database", "state"],
    registry=REGISTRY,
)


# Whether this process records metrics: from the moment it serves them (`serve`). Off,
# nothing on the hot path records anything (the benchmark's "both off").
_recording = False


def recording() -> bool:
    return _recording


def refused(reason: str, count: int = 1) -> None:
    """`count` requests were refused for load or a rate limit (`reason`: their ErrorInfo
    reason)."""
    if _recording:
        REFUSED.labels(reason).inc(count)


def gauge_of(gauge: Gauge, read: Callable[[], float], *labels: str) -> None:
    """Make `gauge` (with `labels`) read its value from `read` at each scrape."""
    (gauge.labels(*labels) if labels else gauge).set_function(read)


def split_method(method: str) -> tuple[str, str]:
    """("users.v1.UsersService", "GetUser") from "/users.v1.UsersService/GetUser"."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class CallMetrics:
    """What one gRPC method's calls record, on one side: a count by status, and the
    duration of a unary call or of a whole stream. Label children are resolved once."""

    __slots__ = ("_calls", "_codes", "_duration", "_labels", "_stream")

    def __init__(
        self,
        method: str,
        *,
        calls: HotCounter,
        duration: HotHistogram,
        side: str,
        upstream: str | None = None,
    ) -> None:
        service, name = split_method(method)
        prefix = () if upstream is None else (upstream,)
        self._labels = (*prefix, service, name)
        self._calls = calls
        self._codes: dict[int, CounterCell] = {}
        self._duration: HistogramCell = duration.labels(*self._labels)
        self._stream: HistogramCell = STREAM_DURATION.labels(side, service, name)

    @classmethod
    def server(cls, method: str) -> CallMetrics:
        return cls(method, calls=RPC_SERVER_CALLS, duration=RPC_SERVER_DURATION, side="server")

    @classmethod
    def client(cls, upstream: str, method: str) -> CallMetrics:
        return cls(
            method,
            calls=RPC_CLIENT_CALLS,
            duration=RPC_CLIENT_DURATION,
            side="client",
            upstream=upstream,
        )

    def ended(self, code: grpc.StatusCode, seconds: float, *, stream: bool = False) -> None:
        # By identity: an Enum member hashes in Python code (its members live as long).
        counter = self._codes.get(id(code))
        if counter is None:
            counter = self._codes[id(code)] = self._calls.labels(*self._labels, code.name)
        counter.inc()
        (self._stream if stream else self._duration).observe(seconds)


class _Union(Collector):
    """The metrics of several registries as one (the ai service keeps its own)."""

    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self._registries = tuple(registries)

    def collect(self) -> Iterator[Metric]:
        for registry in self._registries:
            yield from registry.collect()


class MetricsServer:
    """/metrics over HTTP on its own address, from a daemon thread."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_address[1]

    def close(self) -> None:
        """Stop serving (blocks up to the server's half-second poll: see aclose)."""
        self._server.shutdown()
        self._server.server_close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def serve(addr: str, *extra: CollectorRegistry) -> MetricsServer:
    """Serve REGISTRY (and `extra` registries) at http://`addr`/metrics, and record
    from now on; port 0 picks one."""
    global _recording  # noqa: PLW0603 - the process's registry is the process's
    host, _, port = addr.rpartition(":")
    registry = REGISTRY
    if extra:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Union((REGISTRY, *extra)))
    try:
        server, thread = start_http_server(
            int(port),
            addr=host.strip("[]") or "0.0.0.0",  # noqa: S104 - ":9100" means every interface
            registry=registry,
        )
    except OSError as exc:
        raise StartupError(f"cannot serve metrics on {addr}: {exc}") from None
    _recording = True
    return MetricsServer(server, thread)
