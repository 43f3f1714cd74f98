"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis).

For each operation, a few hundred requests, valid and invalid by the schema, go over
real HTTP to a real gateway in front of a real users server (SQLite) and the ai stand-in.
No response may be a 5xx, and every response must match the schema: status code,
content type, headers and body. Authenticated operations are fuzzed with a valid token
(and, fewer, without one); routes on one account or analysis are also fuzzed with an
id that exists (the caller's own), so they get past 403 and 404 into the upstreams.

The stack runs in the test's event loop; Hypothesis drives synchronous requests from a
worker thread meanwhile (schemathesis' transport is synchronous).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from tests.support.gateway import Stack, gateway_settings, gateway_stack
from tests.support.servers import migrate_users

EXAMPLES = 300
EXAMPLES_ANONYMOUS = 30
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Operations also fuzzed with the id of something that exists (the caller's account,
# one of its analyses), to get past 403 and 404 into the upstreams. Not DELETE: the
# first success would end the token every later request uses.
KNOWN_ID_OPERATIONS = {
    "GET /v1/users/{id}",
    "PATCH /v1/users/{id}",
    "PUT /v1/users/{id}/password",
    "GET /v1/analyses/{id}",
    "GET /v1/operations/{id}",
    "POST /v1/operations/{id}:cancel",
}


def _operations() -> list[str]:
    schema = create_app(gateway_settings("127.0.0.1:1", "127.0.0.1:1")).openapi()
    return [f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item]


OPERATIONS = _operations()


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[Stack]:
    await migrate_users(sqlite_url)
    async with gateway_stack(sqlite_url) as stack:
        yield stack


async def test_the_schema_lists_every_route() -> None:
    assert len(OPERATIONS) == 21


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_fuzz(stack: Stack, operation: str) -> None:
    account = await stack.new_account()
    raw = (await stack.client.get("/openapi.json")).json()
    api = schemathesis.openapi.from_dict(raw)
    api.config.update(base_url=stack.url)
    # The edge refuses a URL or headers too large before any validation: a rejection.
    rejection = api.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "414", "431"]
    method, path = operation.split(" ", 1)
    target = api[path][method]
    made = await stack.client.post("/v1/analyses", json={"text": "x"}, headers=account.headers)
    known_id = account.id if path.startswith("/v1/users") else made.json()["id"]
    if path.startswith("/v1/operations"):
        batch = await stack.client.post(
            "/v1/analyses:batchAnalyze", json={"texts": ["x"]}, headers=account.headers
        )
        known_id = batch.json()["id"]
    counts = await asyncio.to_thread(_fuzz, target, operation, account.token, EXAMPLES, known_id)
    if raw["paths"][path][method.lower()].get("security"):
        # Without a token, too: every such request must be a 401 problem (unless the
        # edge refuses it first for its size).
        anonymous = await asyncio.to_thread(_fuzz, target, operation, None, EXAMPLES_ANONYMOUS)
        assert set(anonymous) <= {400, 401, 413, 414, 431}, anonymous
    if _has_inputs(raw["paths"][path][method.lower()]):
        assert sum(counts.values()) >= EXAMPLES, counts


def _has_inputs(operation: dict[str, Any]) -> bool:
    return bool(operation.get("parameters") or operation.get("requestBody"))


def _fuzz(
    operation: Any, label: str, token: str | None, examples: int, known_id: str | None = None
) -> dict[int, int]:
    """Run `examples` positive and as many negative cases; the count of each status."""
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if known_id is not None and label in KNOWN_ID_OPERATIONS:
        known = {"id": known_id}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    statuses: dict[int, int] = {}
    session = requests.Session()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(session=session, headers=headers, checks=CHECKS)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    try:
        run()
    finally:
        session.close()
    print(f"{label} ({'with' if token else 'without'} token): {sorted(statuses.items())}")
    return statuses
