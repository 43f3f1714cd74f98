"""The Message Batches endpoints of the fake Anthropic server (tests.support.fake_anthropic).

The wire shapes are the API's (anthropic.md §1.7, the SDK's ``types/messages``):

    POST /v1/messages/batches                  {"requests": [{"custom_id", "params"}]}
    GET  /v1/messages/batches/{id}             the batch: processing_status, request_counts, ...
    GET  /v1/messages/batches/{id}/results     JSONL, one line per request, in no set order
    POST /v1/messages/batches/{id}/cancel      the batch, `canceling`

The real SDK (``client.messages.batches.create/retrieve/results/cancel``) talks to them.
A batch is ``in_progress`` (every request ``processing``) until the test ends it:
``fake.batches.end(batch_id)``, or on the nth retrieve with ``end_after_polls=n``. At
its end each request not answered yet gets its result: what ``/v1/messages`` would
answer its ``params`` (the fake's FIFO, responder and default for that path, so tests
script batch items as they script messages), with ``service_tier: "batch"`` in its
usage; an error reply makes it ``errored``. ``end(..., expire=...)`` expires the named
requests instead. A cancelled batch is ``canceling`` until its next retrieve, then
``ended``, its unanswered requests ``canceled``. Results come in reverse request
order, so that a client must match them by ``custom_id``. A reply enqueued for a
batch route (``fake.enqueue(Reply.overloaded(), path=BATCHES_PATH)``) is served before
the batch logic: a scripted failure.

fake_anthropic imports this module, so this one imports its names where it uses them.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.fake_anthropic import FakeAnthropic, RecordedRequest, Reply

BATCHES_PATH = "/v1/messages/batches"
# The API's limits per batch.
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1000 * 1000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_BATCH_PATH = re.compile(rf"^{BATCHES_PATH}/(?P<id>[^/]+)(?P<verb>/results|/cancel)?$")


def is_batch_path(path: str) -> bool:
    return path == BATCHES_PATH or path.startswith(BATCHES_PATH + "/")


def _rfc3339(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment is not None else None


@dataclass
class _Batch:
    id: str
    requests: list[dict[str, Any]]
    created_at: datetime
    status: str = "in_progress"
    ended_at: datetime | None = None
    cancel_initiated_at: datetime | None = None
    polls: int = 0
    # custom_id -> the `result` object of its JSONL line, once it has one.
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if self.status != "ended":
            # The API counts results only once the whole batch has ended.
            counts["processing"] = len(self.requests)
            return counts
        for result in self.results.values():
            counts[result["type"]] += 1
        return counts


class FakeBatches:
    """The batches of one FakeAnthropic; its handler threads call ``reply``."""

    def __init__(self, fake: FakeAnthropic) -> None:
        self._fake = fake
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        # End each batch on this retrieve of it (1: the first); None: only end() does.
        self.end_after_polls: int | None = None

    # -- test control

    @property
    def ids(self) -> list[str]:
        """Every batch created so far, oldest first."""
        with self._lock:
            return list(self._batches)

    def status(self, batch_id: str) -> str:
        with self._lock:
            return self._batches[batch_id].status

    def custom_ids(self, batch_id: str) -> list[str]:
        with self._lock:
            return [r["custom_id"] for r in self._batches[batch_id].requests]

    def end(self, batch_id: str, *, expire: Iterable[str] = ()) -> None:
        """Ends the batch: the named requests expire, the others get their results."""
        with self._lock:
            self._end(self._batches[batch_id], expire=set(expire))

    # -- the endpoints

    def reply(self, request: RecordedRequest) -> Reply:
        from tests.support.fake_anthropic import Reply

        if request.path == BATCHES_PATH:
            if request.method != "POST":
                return Reply.error(405, "invalid_request_error", "listing is not faked")
            return self._create(request)
        match = _BATCH_PATH.match(request.path)
        if match is None:
            return Reply.error(404, "not_found_error", "Not Found")
        with self._lock:
            batch = self._batches.get(match["id"])
            if batch is None:
                return Reply.error(404, "not_found_error", f"no batch {match['id']}")
            verb = match["verb"]
            if verb is None and request.method == "GET":
                batch.polls += 1
                if batch.status == "canceling" or (
                    self.end_after_polls is not None and batch.polls >= self.end_after_polls
                ):
                    self._end(batch, expire=set())
                return _json(self._render(batch))
            if verb == "/cancel" and request.method == "POST":
                if batch.status == "in_progress":
                    batch.status = "canceling"
                    batch.cancel_initiated_at = datetime.now(UTC)
                return _json(self._render(batch))
            if verb == "/results" and request.method == "GET":
                if batch.status != "ended":
                    return Reply.error(
                        400, "invalid_request_error", "the batch has not ended: no results yet"
                    )
                lines = [
                    json.dumps(
                        {"custom_id": r["custom_id"], "result": batch.results[r["custom_id"]]}
                    )
                    for r in reversed(batch.requests)
                ]
                return Reply.raw(200, "\n".join(lines) + "\n", "application/binary")
        return Reply.error(405, "invalid_request_error", "method not allowed")

    def _create(self, request: RecordedRequest) -> Reply:
        from tests.support.fake_anthropic import Reply

        body = request.body
        requests = body.get("requests") if isinstance(body, dict) else None
        problem = _invalid_requests(requests, len(request.raw_body))
        if problem is not None:
            return Reply.error(400, "invalid_request_error", problem)
        assert isinstance(requests, list)
        batch = _Batch(
            id="msgbatch_01"
            + "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ123456789") for _ in range(22)),
            requests=[dict(r) for r in requests],
            created_at=datetime.now(UTC),
        )
        with self._lock:
            self._batches[batch.id] = batch
            return _json(self._render(batch))

    # -- inside the lock

    def _end(self, batch: _Batch, *, expire: set[str]) -> None:
        if batch.status == "ended":
            return
        cancelled = batch.status == "canceling"
        for one in batch.requests:
            custom = one["custom_id"]
            if custom in batch.results:
                continue
            if cancelled:
                batch.results[custom] = {"type": "canceled"}
            elif custom in expire:
                batch.results[custom] = {"type": "expired"}
            else:
                batch.results[custom] = self._answer(one["params"])
        batch.status = "ended"
        batch.ended_at = datetime.now(UTC)

    def _answer(self, params: dict[str, Any]) -> dict[str, Any]:
        """The result of one request: what /v1/messages would answer its params."""
        from tests.support.fake_anthropic import (
            MESSAGES_PATH,
            RecordedRequest,
            Reply,
            render_message,
        )

        fake = self._fake
        synthetic = RecordedRequest(
            method="POST",
            path=MESSAGES_PATH,
            query="",
            headers={},
            raw_body=json.dumps(params).encode(),
            body=params,
            received_at=0.0,
            request_id="",
        )
        reply = fake._choose(synthetic) or Reply.error(500, "api_error", "no reply")
        if reply.kind == "message":
            message = render_message(synthetic, reply)
            message["usage"]["service_tier"] = "batch"
            return {"type": "succeeded", "message": message}
        error_type = reply.error_type if reply.kind == "error" else "api_error"
        message_text = reply.error_message if reply.kind == "error" else "Internal server error"
        return {
            "type": "errored",
            "error": {"type": "error", "error": {"type": error_type, "message": message_text}},
        }

    def _render(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": batch.counts(),
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + timedelta(hours=24)),
            "ended_at": _rfc3339(batch.ended_at),
            "cancel_initiated_at": _rfc3339(batch.cancel_initiated_at),
            "archived_at": None,
            "results_url": f"{self._fake.url}{BATCHES_PATH}/{batch.id}/results" if ended else None,
        }


def _json(body: dict[str, Any]) -> Reply:
    from tests.support.fake_anthropic import Reply

    return Reply.raw(200, json.dumps(body), "application/json")


def _invalid_requests(requests: Any, size: int) -> str | None:
    """What the API would refuse in a batch's `requests`, if anything."""
    if not isinstance(requests, list) or not requests:
        return "requests: at least one request is required"
    if len(requests) > MAX_REQUESTS:
        return f"requests: at most {MAX_REQUESTS} requests in a batch"
    if size > MAX_BYTES:
        return "the batch is larger than 256 MB"
    seen: set[str] = set()
    for index, one in enumerate(requests):
        custom = one.get("custom_id") if isinstance(one, dict) else None
        if not isinstance(custom, str) or not _CUSTOM_ID.match(custom):
            return f"requests.{index}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
        if custom in seen:
            return f"requests.{index}.custom_id: duplicate custom_id {custom}"
        seen.add(custom)
        params = one.get("params")
        if not isinstance(params, dict):
            return f"requests.{index}.params: Field required"
        for name in ("model", "messages", "max_tokens"):
            if name not in params:
                return f"requests.{index}.params.{name}: Field required"
        if params.get("stream"):
            return f"requests.{index}.params.stream: streaming is not supported in batches"
    return None
