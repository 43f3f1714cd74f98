"""What observability costs the gateway path (issue 13), measured in the gateway benchmark's
own run. Each round starts a users service and a gateway per variant, all at once on the
same database, warms each up, loads them in turns with the same wrk load as the main rounds
(the others idle meanwhile), and stops them.

- off: no *_METRICS_ADDR, no OTEL_* (the main rounds' settings);
- metrics: GATEWAY_METRICS_ADDR and USERS_METRICS_ADDR set, so both record every request;
- metrics + traces: also OTEL_EXPORTER_OTLP_ENDPOINT, sampling 10% of the traces
  (parent-based, so the users service follows the gateway's decision), exported over
  OTLP/gRPC to a sink in this process that only counts the spans it is sent.

The targets: each variant within 5% of off's req/s, and the gateway path with metrics on
at least as many times the monolith's req/s (main rounds) as the gateway's own target.

A variant's cost is its req/s over off's, taken turn by turn. This machine's speed swings
by up to 2x between half-seconds with nothing else busy (a pure Python loop, timed in CPU
time): phases minutes apart, or a round's seconds apart, measure that, not the variants.
So each round is made of turns: in a turn every variant is loaded for a slice of one
second, in an order rotated each turn, and a variant's figure is the geometric mean over
all turns of all rounds of its slice's req/s over off's slice in the same turn, with a 95%
interval from a bootstrap of rounds and their turns (bench/_turns.py says why not the
median turn, which is reported beside it). Three identical "off" paths measured so differ
by about 0.17 (sd) a turn, at random from turn to turn, so a few hundred turns are needed
to tell a 3% cost from a 6% one. A process's speed also varies from one start to the
next: where its strings land in dicts (the hash seed decides) and where its stack and objects
land in memory. A round's three paths share one hash seed (PYTHONHASHSEED, a new one each
round), so that what it does to their speed is common to the ratios taken in that round;
each process gets a memory layout drawn at random (bench/_layout.py), since anything else
that differs between two paths, their imports or environment, moves where everything
lands, and that alone moved a path's req/s by 2%. How much a process's speed varies so
outweighs the turns' noise (one round's ratio of the traced path to off, over 20 turns,
ranged from 0.91 to 1.01), so the turns are spread over many processes: four times the
main rounds' count of rounds, of --duration turns each.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Protocol, TypedDict

import _gwload
import _report
import _turns
import grpc
from _gwstack import GatewayPath
from _report import Target, fmt, target
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

VARIANTS = ("off", "metrics", "metrics+traces")
TRACED = "metrics+traces"
# The issue's bound: what observability may cost in req/s, against off.
MAX_LOSS = 0.05
SAMPLE_RATIO = "0.1"
# Seconds of one measured slice: the variants take turns this often.
SLICE_S = 1


class ObservedRound(TypedDict):
    variant: str
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU of the gateway and the users service per request, together and each.
    serving_us: float | None
    by_process_us: dict[str, float | None]
    load_average: float
    # Its req/s in each turn of the round, in turn order (each turn loads every variant
    # for one slice).
    turns_rps: list[float]


class AddedCost(TypedDict):
    """CPU µs per request of the code observability adds, timed in this process: one
    gateway request's worth (gateway and users service parts together)."""

    metrics_us: float
    traces_unsampled_us: float
    traces_sampled_us: float
    traces_at_ratio_us: float


class Observability(TypedDict):
    phases: list[ObservedRound]
    medians: dict[str, ObservedRound]
    # Each variant's req/s over off's: the geometric mean over all turns of all rounds of
    # its slice's over off's slice in the same turn, and its 95% interval (bench/_turns.py);
    # and the median turn's ratio, for comparison.
    rps_vs_off: dict[str, float | None]
    rps_interval: dict[str, tuple[float, float] | None]
    rps_median_turn: dict[str, float | None]
    turns: int
    # Serving CPU per request each variant adds to off's (µs).
    us_added: dict[str, float | None]
    # The same, per process (gateway, users): the gateway's loop is the path's bottleneck.
    us_added_by_process: dict[str, dict[str, float | None]]
    # P1 with metrics on: the main rounds' gateway / monolith ratio times metrics' to off.
    metrics_vs_monolith: float | None
    # Spans the traced variant's processes exported per request, by service name.
    spans_per_request: dict[str, float]
    targets: list[Target]
    added: AddedCost


class Loader(Protocol):
    async def __call__(
        self, path: GatewayPath, duration: int, *, measured: bool
    ) -> _gwload.WrkResult: ...


class PathOpener(Protocol):
    def __call__(self, env: dict[str, str]) -> AbstractAsyncContextManager[GatewayPath]: ...


class SpanCount:
    """Spans received by an OTLP sink, by the sending process's `service.name`."""

    def __init__(self) -> None:
        self.by_service: dict[str, int] = {}

    def export(self, request: bytes, _context: Any) -> bytes:
        decoded = ExportTraceServiceRequest.FromString(request)
        for of_resource in decoded.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in of_resource.resource.attributes
                    if a.key == "service.name"
                ),
                "?",
            )
            spans = sum(len(of_scope.spans) for of_scope in of_resource.scope_spans)
            self.by_service[service] = self.by_service.get(service, 0) + spans
        return b""  # an empty ExportTraceServiceResponse


@asynccontextmanager
async def otlp_sink() -> AsyncIterator[tuple[str, SpanCount]]:
    """An OTLP/gRPC trace endpoint that accepts every export and counts its spans."""
    count = SpanCount()
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(count.export)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", count
    finally:
        await server.stop(None)


def variant_env(variant: str, endpoint: str, new_port: Callable[[], int]) -> dict[str, str]:
    if variant == "off":
        return {}
    env = {
        "GATEWAY_METRICS_ADDR": f"127.0.0.1:{new_port()}",
        "USERS_METRICS_ADDR": f"127.0.0.1:{new_port()}",
    }
    if variant == TRACED:
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": SAMPLE_RATIO,
        }
    return env


async def measure(
    other_path: PathOpener,
    load: Loader,
    new_port: Callable[[], int],
    *,
    rounds: int,
    warmup: int,
    turns: int,
    log: Any,
) -> tuple[list[ObservedRound], dict[str, float]]:
    """The rounds (`turns` each: a slice of `SLICE_S` of every variant), and the spans
    exported per request of the traced variant, by process."""
    phases: list[ObservedRound] = []
    sent = 0  # requests answered by the traced path, warm-ups included
    async with otlp_sink() as (endpoint, spans):
        for n in range(rounds):
            async with AsyncExitStack() as running:
                # One hash seed for the round's three paths, another each round: see
                # the module's docstring.
                seed = {"PYTHONHASHSEED": str(_seeds.randrange(1, 1 << 32))}
                log(
                    f"observability round {n + 1}/{rounds}: starting a path per variant "
                    f"(PYTHONHASHSEED={seed['PYTHONHASHSEED']})"
                )
                started = await asyncio.gather(
                    *(
                        running.enter_async_context(
                            other_path(variant_env(v, endpoint, new_port) | seed)
                        )
                        for v in VARIANTS
                    )
                )
                paths = dict(zip(VARIANTS, started, strict=True))
                # All warmed up first: what a process does once it has started (and
                # the other paths' starting) is over before the first measured slice.
                for variant in _rotated(n):
                    warmed = await load(paths[variant], warmup, measured=False)
                    sent += warmed["requests"] if variant == TRACED else 0
                log(f"observability round {n + 1}/{rounds}: {turns} turns of {SLICE_S} s each")
                measured: dict[str, list[_gwload.WrkResult]] = {v: [] for v in VARIANTS}
                for k in range(turns):
                    # Rotated each slice, so that no variant always follows another.
                    for variant in _rotated(n + k):
                        result = await load(paths[variant], SLICE_S, measured=True)
                        measured[variant].append(result)
                        sent += result["requests"] if variant == TRACED else 0
                for variant in VARIANTS:
                    phase = _observed(variant, n + 1, measured[variant])
                    each = ", ".join(f"{k} {fmt(v, 0)}" for k, v in phase["by_process_us"].items())
                    log(
                        f"  {variant}: {phase['requests_per_s']:,.0f} req/s, "
                        f"{fmt(phase['serving_us'], 0)} µs/req ({each})"
                    )
                    phases.append(phase)
            # Stopped, each process has flushed what it had not exported yet.
    by_service = spans.by_service if sent else {}
    return phases, {name: count / sent for name, count in by_service.items()}


_seeds = random.SystemRandom()


def _rotated(n: int) -> tuple[str, ...]:
    n %= len(VARIANTS)
    return VARIANTS[n:] + VARIANTS[:n]


def _observed(variant: str, n: int, slices: Sequence[_gwload.WrkResult]) -> ObservedRound:
    """A variant's round, from its slices: req/s over their time together; CPU per
    request weighted by their requests; their median p50 and p99."""
    requests = sum(s["requests"] for s in slices)
    seconds = sum(s["requests"] / s["requests_per_s"] for s in slices if s["requests_per_s"])
    weights = [s["requests"] for s in slices if s["cpu"] is not None]
    cpu = [s["cpu"] for s in slices if s["cpu"] is not None]
    processes = cpu[0]["by_group_us_per_request"] if cpu else {}
    return {
        "variant": variant,
        "round": n,
        "requests_per_s": requests / seconds if seconds else 0.0,
        "p50_ms": statistics.median(s["p50_ms"] for s in slices),
        "p99_ms": statistics.median(s["p99_ms"] for s in slices),
        "errors": sum(_gwload.errors(s) for s in slices),
        "serving_us": _weighted([c["serving_us_per_request"] for c in cpu], weights),
        "by_process_us": {
            name: _weighted([c["by_group_us_per_request"].get(name) for c in cpu], weights)
            for name in processes
        },
        "load_average": os.getloadavg()[0],
        "turns_rps": [s["requests_per_s"] for s in slices],
    }


def _weighted(values: Sequence[float | None], weights: Sequence[int]) -> float | None:
    """The mean of `values` weighted by `weights`; None if any value is unknown."""
    known = [v for v in values if v is not None]
    if not values or len(known) < len(values) or not sum(weights):
        return None
    return sum(v * w for v, w in zip(known, weights, strict=True)) / sum(weights)


def summarise(
    measured: tuple[Sequence[ObservedRound], dict[str, float]],
    gateway_vs_monolith: float | None,
    rps_ratio_min: float,
) -> Observability:
    """`measured`: what `measure` returns; `gateway_vs_monolith`: the main rounds' req/s
    ratio (the gateway path, both off, against the monolith); `rps_ratio_min`: what the
    gateway path must reach over the monolith's req/s."""
    phases, spans_per_request = measured
    medians = {
        variant: _report.median_round(
            [p for p in phases if p["variant"] == variant], lambda p: p["requests_per_s"]
        )
        for variant in VARIANTS
    }
    rounds = _by_round(phases)
    by_turn = {v: _turn_ratios(rounds, v) for v in VARIANTS}
    rps = {v: _turns.geometric_mean(ratios) for v, ratios in by_turn.items()}
    added = {
        v: _report.median_known(
            [_minus(r[v]["serving_us"], r["off"]["serving_us"]) for r in rounds]
        )
        for v in VARIANTS
    }
    by_process = {
        v: {
            name: _report.median_known(
                [
                    _minus(r[v]["by_process_us"].get(name), r["off"]["by_process_us"].get(name))
                    for r in rounds
                ]
            )
            for name in medians[v]["by_process_us"]
        }
        for v in VARIANTS
    }
    # Two ratios, each to a baseline measured seconds apart, not the metrics path's req/s
    # over the main rounds' monolith: those are minutes apart, in which this machine's
    # speed drifts by more than the margin (on 7 December the off path here ran 17% below
    # the same path in the main rounds, and that ratio came out at 1.17 against 1.38).
    with_metrics = (
        None
        if gateway_vs_monolith is None or rps["metrics"] is None
        else gateway_vs_monolith * rps["metrics"]
    )
    errors = sum(p["errors"] for p in phases)
    return {
        "phases": list(phases),
        "medians": medians,
        "rps_vs_off": rps,
        "rps_interval": {v: _turns.interval(ratios) for v, ratios in by_turn.items()},
        "rps_median_turn": {
            v: _report.median_known(r for turns in ratios for r in turns)
            for v, ratios in by_turn.items()
        },
        "turns": sum(map(len, by_turn["off"])),
        "us_added": added,
        "us_added_by_process": by_process,
        "metrics_vs_monolith": with_metrics,
        "spans_per_request": spans_per_request,
        "added": added_cost(),
        "targets": [
            target("metrics on: req/s / off's", rps["metrics"], ">=", 1 - MAX_LOSS),
            target(
                f"metrics + traces at {SAMPLE_RATIO}: req/s / off's",
                rps[TRACED],
                ">=",
                1 - MAX_LOSS,
            ),
            target(
                "gateway with metrics req/s / monolith req/s", with_metrics, ">=", rps_ratio_min
            ),
            target("non-2xx responses and socket errors (observability)", errors, "<=", 0),
        ],
    }


def _minus(us: float | None, off_us: float | None) -> float | None:
    return None if us is None or off_us is None else us - off_us


def _by_round(phases: Sequence[ObservedRound]) -> list[dict[str, ObservedRound]]:
    """Each round's phases by variant (the rounds that have them all)."""
    rounds: dict[int, dict[str, ObservedRound]] = {}
    for phase in phases:
        rounds.setdefault(phase["round"], {})[phase["variant"]] = phase
    return [r for r in rounds.values() if len(r) == len(VARIANTS)]


def _turn_ratios(rounds: Sequence[dict[str, ObservedRound]], variant: str) -> list[list[float]]:
    """`variant`'s req/s over off's in each turn, by round."""
    return _turns.ratios_by_round(
        [r[variant]["turns_rps"] for r in rounds], [r["off"]["turns_rps"] for r in rounds]
    )


def render(observed: Observability | None) -> list[str]:
    if observed is None:
        return []
    out = [
        "",
        "What observability costs (issue 13): a gateway path per variant, loaded in turns",
        "  of one second each with the same load. vs off: req/s over off's in the same round",
        "  (the median rows: the turns' geometric mean of the turn's ratio); +µs/req: serving",
        "  CPU (gateway + users) per request over off's (the median rows: over the rounds).",
        f"  {'':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'µs/req':>8}{'vs off':>8}"
        f"{'+µs/req':>9}{'load':>6}",
    ]
    offs = {p["round"]: p for p in observed["phases"] if p["variant"] == "off"}
    for phase in observed["phases"]:
        off = offs.get(phase["round"])
        vs_off = _report.ratio(phase["requests_per_s"], off["requests_per_s"]) if off else None
        plus = _minus(phase["serving_us"], off["serving_us"]) if off else None
        out.append(_row(f"r{phase['round']} {phase['variant']}", phase, vs_off, plus))
    for variant, median in observed["medians"].items():
        vs_off, plus = observed["rps_vs_off"][variant], observed["us_added"][variant]
        out.append(_row(f"median {variant}", median, vs_off, plus))
    for variant in VARIANTS[1:]:
        interval = observed["rps_interval"][variant]
        if interval is not None:
            out.append(
                f"  {variant} req/s / off's: {fmt(observed['rps_vs_off'][variant])}, 95% "
                f"interval {interval[0]:.3f}-{interval[1]:.3f} ({observed['turns']} turns; "
                f"the median turn {fmt(observed['rps_median_turn'][variant])})"
            )
            if interval[0] < 1 - MAX_LOSS <= interval[1]:
                # Whichever side the figure fell on, another run may fall on the other.
                out.append(
                    f"    its interval reaches both sides of {1 - MAX_LOSS:.2f}: this run "
                    "cannot tell whether it is within the bound"
                )
    for variant in VARIANTS[1:]:
        each = observed["us_added_by_process"][variant]
        out.append(
            f"  {variant} adds, µs/req: "
            + ", ".join(f"{name} {fmt(us, 1)}" for name, us in each.items())
        )
    spans = observed["spans_per_request"]
    out.append(
        f"  {TRACED} exported, spans per request: "
        + ", ".join(f"{name} {n:.3f}" for name, n in sorted(spans.items()))
    )
    added = observed["added"]
    out += [
        f"  gateway with metrics / monolith (the main rounds' ratio times metrics' to off): "
        f"x{fmt(observed['metrics_vs_monolith'])}",
        "  the code added per request, timed in process (CPU µs, gateway and users parts):",
        f"    metrics {added['metrics_us']:.1f}; traces unsampled "
        f"{added['traces_unsampled_us']:.1f}, sampled {added['traces_sampled_us']:.1f} "
        f"(encoded for export, not sent), at {SAMPLE_RATIO} {added['traces_at_ratio_us']:.1f}",
    ]
    return out


def _row(label: str, phase: ObservedRound, vs_off: float | None, plus: float | None) -> str:
    return (
        f"  {label:<24}{fmt(phase['requests_per_s'], 0):>9}{fmt(phase['p50_ms']):>9}"
        f"{fmt(phase['p99_ms']):>9}{fmt(phase['serving_us'], 0):>8}{fmt(vs_off):>8}"
        f"{fmt(plus, 0):>9}{phase['load_average']:>6.2f}"
    )


def added_cost(requests: int = 20_000) -> AddedCost:
    """What one GET /v1/users/{id} adds, timed without the load's noise: the metrics it
    records, and its spans and propagation unsampled and sampled (into a processor that
    batches and encodes them, as the OTLP one batches, encodes and sends)."""
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased  # noqa: PLC0415

    from gateway.metrics import HttpMetrics  # noqa: PLC0415
    from servicekit import (  # noqa: PLC0415
        metrics,
        otlp_export,
        telemetry,
    )

    class Encoded(SpanExporter):
        """Encodes what it is given as the OTLP exporter does, and sends nothing."""

        reads_records = True  # as the OTLP one: Tandem's spans come as records

        def export(self, spans: Any) -> SpanExportResult:
            otlp_export.encode(spans)
            return SpanExportResult.SUCCESS

    method = "/users.v1.UsersService/GetUser"
    statement = {
        "db.system": "postgresql",
        "db.system.name": "postgresql",
        "db.namespace": "tandem",
        "db.operation.name": "SELECT",
        "db.query.text": "SELECT users.id, users.email FROM users WHERE users.id IN ($1)",
    }

    def one_request_metrics(http: HttpMetrics, client: Any, server: Any) -> None:
        metrics.BATCH_SIZE.labels("gateway.user_reads").observe(1)
        client.ended(grpc.StatusCode.OK, 0.001)
        server.ended(grpc.StatusCode.OK, 0.0008)
        metrics.DB_POOL_WAIT.labels("users").observe(0.00001)
        http.ended("/v1/users/{id}", "GET", 200, 0.002)

    def one_request_spans() -> None:
        http = telemetry.http_server_span("GET")
        assert http is not None
        link = telemetry.current_link()
        sent: list[tuple[str, str]] = [("x-request-id", "r")]
        # The gateway's coalesced read's call (linked to the request), the users
        # service's server span and one statement's span (the statement spans have the
        # same few attributes).
        with telemetry.fan_in("gateway.user_reads", 1, [link] if link else []):
            client = telemetry.grpc_client_span(method, "users", sent)
            served = telemetry.grpc_server_span(method, tuple(sent))
            assert served is not None
            with telemetry.span("SELECT tandem", statement):
                pass
            telemetry.end_grpc_server_span(served, grpc.StatusCode.OK)
            if client is not None:
                telemetry.end_grpc_client_span(client, grpc.StatusCode.OK)
        telemetry.end_http_server_span(http, "/v1/users/{id}", 200)

    def timed(work: Any, n: int, then: Any = None) -> float:
        started = time.process_time()
        for _ in range(n):
            work()
        if then is not None:
            then()
        return (time.process_time() - started) / n * 1e6

    served_metrics = metrics.serve("127.0.0.1:0")
    try:
        http, client = HttpMetrics(), metrics.CallMetrics.client("users", method)
        server = metrics.CallMetrics.server(method)
        metrics_us = timed(lambda: one_request_metrics(http, client, server), requests)
    finally:
        served_metrics.close()
    figures = {}
    for name, sampler in (("unsampled", ALWAYS_OFF), ("sampled", ALWAYS_ON)):
        provider = TracerProvider(sampler=ParentBased(sampler))
        # A queue that holds them all: none is dropped before the flush encodes it.
        queue = requests * 2
        provider.add_span_processor(BatchSpanProcessor(Encoded(), max_queue_size=queue))
        # As the gateway and the users service install it: no mirror in OpenTelemetry's
        # context (only the ai service has code that makes spans through the API).
        telemetry.use_tracer(provider.get_tracer("bench"), mirror=False)
        try:
            # process_time counts the export thread too: flushed within the timing.
            figures[name] = timed(one_request_spans, requests // 4, provider.force_flush)
        finally:
            telemetry.use_tracer(None)
            provider.shutdown()
    ratio = float(SAMPLE_RATIO)
    return {
        "metrics_us": metrics_us,
        "traces_unsampled_us": figures["unsampled"],
        "traces_sampled_us": figures["sampled"],
        "traces_at_ratio_us": (1 - ratio) * figures["unsampled"] + ratio * figures["sampled"],
    }
