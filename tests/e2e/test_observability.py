"""Every process observable, as `make run` starts them: traces into an OTLP receiver in
the test, metrics scraped by Debian's real Prometheus, JSON log lines (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_stack import GOOD, PASSWORD, bearer
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.harness import free_port
from tests.support.otlp import ReceivedSpan, otlp_receiver
from tests.support.prometheus import running_prometheus
from tests.support.stack import RunningStack, make_run

TEXT = "The quiet motor is a joy; the battery, sadly, is not."
# A client's own trace: the gateway continues it.
CLIENT_TRACE = uuid.uuid4().hex
CLIENT_PARENT = uuid.uuid4().hex[:16]
PROCESSES = ("gateway", "users", "ai")


def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {
        "USERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/users.db",
        "AI_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/ai.db",
    }


async def sign_up_and_log_in(client: httpx.AsyncClient) -> tuple[str, list[str]]:
    """A new user's access token, and every token issued (none may leak)."""
    email = f"obs-{uuid.uuid4().hex[:8]}@example.com"
    created = await client.post(
        "/v1/users", json={"email": email, "name": "Observed", "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    login = await client.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    body = login.json()
    return body["access_token"], [body["access_token"], body["refresh_token"]]


def json_records(stack: RunningStack, name: str) -> list[dict[str, Any]]:
    """Every log line `name` printed, each parsed as the JSON object it must be."""
    records = []
    for line in stack.prefixed(name):
        text = line.split(" | ", 1)[1]
        if text.startswith("service account "):
            continue  # what `create-service-account` answers on stdout: not a log line
        record = json.loads(text)
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message", "request_id"} <= record.keys(), line
        records.append(record)
    return records


def strings_in(spans: Iterable[ReceivedSpan]) -> list[str]:
    found: list[str] = []
    for span in spans:
        for value in span.attributes.values():
            found.extend(str(v) for v in (value if isinstance(value, list) else [value]))
        found.append(span.name)
    return found


def assert_one_tree(spans: list[ReceivedSpan]) -> ReceivedSpan:
    """The spans form one tree under the gateway's HTTP server span; that span."""
    by_id = {span.span_id: span for span in spans}
    (root,) = [s for s in spans if s.parent_id not in by_id]
    assert root.service == "tandem-gateway" and root.is_server, root
    for span in spans:
        seen = span
        while seen is not root:
            seen = by_id[seen.parent_id]
    return root


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [span for span in spans if span.parent_id == parent.span_id]


def assert_hop(spans: list[ReceivedSpan], method: str, service: str) -> ReceivedSpan:
    """The server span of `method` in `service`, child of a client span of it; it."""
    (server,) = [s for s in spans if s.name == method and s.is_server]
    assert server.service == service
    client = next(s for s in spans if s.span_id == server.parent_id)
    assert client.is_client and client.name == method
    assert server.attributes["rpc.grpc.status_code"] == 0
    return server


async def test_one_trace_per_request_across_the_processes_and_json_logs(tmp_path: Path) -> None:
    async with otlp_receiver() as (receiver, endpoint):
        with FakeAnthropic() as fake:
            fake.set_default(Reply.json_output(GOOD))
            env = {
                **sqlite_env(tmp_path),
                **fake.env(),
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
                "GATEWAY_LOG_FORMAT": "json",
                "USERS_LOG_FORMAT": "json",
                "AI_LOG_FORMAT": "json",
            }
            async with (
                make_run(env) as stack,
                httpx.AsyncClient(base_url=stack.url, timeout=30) as client,
            ):
                token, issued = await sign_up_and_log_in(client)
                me = await client.get(
                    "/v1/users/me",
                    headers={
                        **bearer(token),
                        "X-Request-ID": "obs-me",
                        "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01",
                    },
                )
                assert me.status_code == 200, me.text
                analysis = await client.post(
                    "/v1/analyses",
                    json={"text": TEXT},
                    headers={**bearer(token), "X-Request-ID": "obs-analysis"},
                )
                assert analysis.status_code == 201, analysis.text
                os.killpg(stack.process.pid, signal.SIGINT)
                assert await stack.process.wait() in (0, -signal.SIGINT), stack.output
                assert "stack   | stopped" in stack.output

    # GET /v1/users/me: the client's trace, continued through the gateway to the users
    # service and its database.
    me_spans = receiver.trace(CLIENT_TRACE)
    root = assert_one_tree(me_spans)
    assert root.parent_id == CLIENT_PARENT
    assert root.name == "GET /v1/users/me"
    assert root.attributes["http.route"] == "/v1/users/me"
    assert root.attributes["http.response.status_code"] == 200
    users_hop = assert_hop(me_spans, "users.v1.UsersService/GetUser", "tandem-users")
    assert any(s.attributes.get("db.system") == "sqlite" for s in children(me_spans, users_hop))
    # The gateway's reads go through its coalescing batcher: the shared call links to
    # every request it answers.
    call = next(s for s in me_spans if s.span_id == users_hop.parent_id)
    assert call.service == "tandem-gateway"
    assert call.attributes["tandem.batch"] == "gateway.user_reads"
    assert (CLIENT_TRACE, root.span_id) in call.links

    # The analysis: gateway, ai service, the provider's HTTP call and the database, one trace.
    (post,) = [s for s in receiver.spans if s.name == "POST /v1/analyses"]
    analysis_spans = receiver.trace(post.trace_id)
    assert assert_one_tree(analysis_spans) == post
    ai_hop = assert_hop(analysis_spans, "ai.v1.AnalysisService/AnalyzeText", "tandem-ai")
    (backend,) = [s for s in analysis_spans if s.name == "ai.analyze claude-sonnet-5-5"]
    assert backend.attributes["gen_ai.request.model"] == "claude-sonnet-5-5"
    assert backend.attributes["gen_ai.usage.input_tokens"] > 0
    assert backend.attributes["gen_ai.usage.output_tokens"] > 0
    # The provider's HTTP call, the anthropic SDK's own span: model and tokens, no content.
    (provider_call,) = children(analysis_spans, backend)
    assert provider_call.is_client and provider_call.service == "tandem-ai"
    assert provider_call.attributes["http.request.method"] == "POST"
    assert provider_call.attributes["gen_ai.request.model"] == "claude-sonnet-5-5"
    assert provider_call.attributes["gen_ai.usage.output_tokens"] > 0
    assert any(s.attributes.get("db.system") == "sqlite" for s in analysis_spans)
    assert {s.service for s in analysis_spans} >= {"tandem-gateway", "tandem-ai"}
    assert ai_hop.parent_id != ""

    # No text, password or token in any span.
    everything = " ".join(strings_in(receiver.spans))
    for secret in (TEXT, "quiet motor", PASSWORD, *issued, *(t.split(".")[-1] for t in issued)):
        assert secret not in everything

    # JSON logs: every line of every process parses, each request's lines carry its trace.
    records = {name: json_records(stack, name) for name in PROCESSES}
    for name in PROCESSES:
        assert records[name], name
    gateway_me = [r for r in records["gateway"] if r["request_id"] == "obs-me"]
    users_me = [r for r in records["users"] if r["request_id"] == "obs-me"]
    assert gateway_me and users_me
    assert {r.get("trace_id") for r in gateway_me + users_me} == {CLIENT_TRACE}
    ai_lines = [r for r in records["ai"] if r["request_id"] == "obs-analysis"]
    assert ai_lines and {r.get("trace_id") for r in ai_lines} == {post.trace_id}
    for record in ai_lines + users_me + gateway_me:
        assert len(record["span_id"]) == 16
    lines = stack.output
    for secret in (PASSWORD, TEXT, *issued, *(t.split(".")[-1] for t in issued)):
        assert secret not in lines
    assert "PRIVATE KEY" not in lines and fake.api_key not in lines


async def test_prometheus_scrapes_the_request_counters_of_every_process(tmp_path: Path) -> None:
    ports = {name: free_port() for name in PROCESSES}
    env = {
        **sqlite_env(tmp_path),
        "AI_PROVIDER": "offline",
        **{f"{name.upper()}_METRICS_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()},
    }
    targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    async with (
        make_run(env) as stack,
        running_prometheus(targets, tmp_path) as prometheus,
        httpx.AsyncClient(base_url=stack.url, timeout=30) as client,
    ):
        # The metrics are on their own ports, never on the REST one.
        assert (await client.get("/metrics")).status_code == 404
        token, _ = await sign_up_and_log_in(client)
        for _ in range(3):
            assert (await client.get("/v1/users/me", headers=bearer(token))).status_code == 200
        analysis = await client.post("/v1/analyses", json={"text": TEXT}, headers=bearer(token))
        assert analysis.status_code == 201, analysis.text

        gateway = 'sum(tandem_http_requests_total{job="gateway",route="/v1/users/me",status="200"})'
        assert await prometheus.wait_for(gateway, 3) == 3
        users = 'sum(tandem_rpc_server_calls_total{job="users",code="OK"})'
        assert await prometheus.wait_for(users, 3) >= 3
        ai = 'sum(tandem_rpc_server_calls_total{job="ai",method="AnalyzeText",code="OK"})'
        assert await prometheus.wait_for(ai, 1) == 1
        analyses = 'sum(tandem_ai_analyses_total{job="ai"})'
        assert await prometheus.wait_for(analyses, 1) == 1
        upstream = 'sum(tandem_rpc_client_calls_total{job="gateway",upstream="users"})'
        assert await prometheus.wait_for(upstream, 3) >= 3
        # What explains the system: the reads per coalesced call (one batch at least for
        # the three reads of /v1/users/me), and the users service's database checkouts.
        batches = 'sum(tandem_batch_size_count{job="gateway",batch="gateway.user_reads"})'
        assert await prometheus.wait_for(batches, 1) >= 1
        reads = 'sum(tandem_batch_size_sum{job="gateway",batch="gateway.user_reads"})'
        assert await prometheus.wait_for(reads, 3) >= 3
        checkouts = 'sum(tandem_db_pool_wait_seconds_count{job="users"})'
        assert await prometheus.wait_for(checkouts, 3) >= 3
        for job in PROCESSES:
            assert await prometheus.wait_for(f'up{{job="{job}"}}', 1) == 1
