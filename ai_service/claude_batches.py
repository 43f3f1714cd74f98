"""Claude's batches: an operation's texts as Message Batches, polled, their results stored.

Each text becomes one batch request (custom id `t<position>`), built and parsed by the
same code as an interactive analysis (AnthropicBackend.batch_params / batch_result).
The texts go in as few batches as the API's limits allow (100,000 requests or 256 MB
each), each recorded with its items before anything else happens. Then the batches are
polled with back-off until they end, and their JSONL results are streamed: a succeeded
request is stored as an ordinary analysis (its usage says `service_tier: batch`), an
errored, canceled or expired one is that item's error. A cancelled operation cancels
its provider batches; what they finished anyway is kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any, cast

import anthropic
import grpc
from anthropic.types.messages import MessageBatchIndividualResponse, batch_create_params

from ai_service.backends.anthropic import AnthropicBackend
from ai_service.backends.anthropic_errors import translate
from ai_service.backends.base import UpstreamTrace, is_transient
from ai_service.batches import Job, cancelled_error, item_error
from ai_service.domain import AnalysisResult
from ai_service.operations_repository import Item, ItemError
from servicekit.errors import ServiceError

log = logging.getLogger(__name__)

# The Message Batches API's limits per batch (Anthropic's batch processing guide).
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1000 * 1000
# Results are stored this many at a time (one commit each) as they stream in.
STORE_EVERY = 100
# Room for the `{"requests": [...]}` around the requests, and their commas.
_ENVELOPE_BYTES = 64

# An errored request's error type, as the gRPC code of its item.
_ERRORED_CODES = {
    "invalid_request_error": grpc.StatusCode.INVALID_ARGUMENT,
    "request_too_large": grpc.StatusCode.INVALID_ARGUMENT,
    "authentication_error": grpc.StatusCode.FAILED_PRECONDITION,
    "permission_error": grpc.StatusCode.FAILED_PRECONDITION,
    "not_found_error": grpc.StatusCode.FAILED_PRECONDITION,
    "billing_error": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "rate_limit_error": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "timeout_error": grpc.StatusCode.DEADLINE_EXCEEDED,
}


def custom_id(position: int) -> str:
    return f"t{position}"


def position_of(custom: str) -> int | None:
    if custom.startswith("t") and custom[1:].isdigit():
        return int(custom[1:])
    return None


def split(
    requests: Sequence[tuple[int, dict[str, Any]]],
    *,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """`requests` (position, batch request) in order, cut into batches within limits."""
    chunk: list[tuple[int, dict[str, Any]]] = []
    size = _ENVELOPE_BYTES
    for position, request in requests:
        length = len(json.dumps(request, separators=(",", ":")).encode()) + 1
        if chunk and (len(chunk) >= max_requests or size + length > max_bytes):
            yield chunk
            chunk, size = [], _ENVELOPE_BYTES
        chunk.append((position, request))
        size += length
    if chunk:
        yield chunk


class ClaudeBatches:
    def __init__(
        self,
        backend: AnthropicBackend,
        *,
        poll_seconds: float,
        poll_max_seconds: float,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._backend = backend
        self._client = backend.client
        self._poll = poll_seconds
        self._poll_max = max(poll_max_seconds, poll_seconds)
        self._max_requests = max_requests
        self._max_bytes = max_bytes

    @property
    def model(self) -> str:
        return self._backend.model

    async def run(self, job: Job) -> None:
        await self._submit(job)
        delay = self._poll
        # Read once a round: while this replica holds the lease, only it finishes items.
        pending = await job.pending()
        while pending:
            batch_ids = list(dict.fromkeys(i.provider_batch_id for i in pending))
            for batch_id in batch_ids:
                assert batch_id is not None, "every pending item was submitted"
                await self._look_at(
                    job, batch_id, [i for i in pending if i.provider_batch_id == batch_id]
                )
            pending = await job.pending()
            if pending:
                await job.sleep(delay)
                delay = min(delay * 2, self._poll_max)

    async def _submit(self, job: Job) -> None:
        """Sends the items no batch holds yet; with the operation cancelled, fails them."""
        unsent = [i for i in await job.pending() if i.provider_batch_id is None]
        if job.cancelled:
            await job.fail([i.position for i in unsent], cancelled_error())
            return
        requests = [(i.position, self._request(i)) for i in unsent]
        for chunk in split(requests, max_requests=self._max_requests, max_bytes=self._max_bytes):
            positions = [p for p, _ in chunk]
            batch_id = await self._create(job, [r for _, r in chunk], positions)
            if batch_id is not None:
                log.info(
                    "operation %s: provider batch %s holds %d texts", job.id, batch_id, len(chunk)
                )
                await job.submitted(batch_id, positions)

    async def _create(
        self, job: Job, requests: list[dict[str, Any]], positions: list[int]
    ) -> str | None:
        """A new provider batch's id; None when it was refused or the operation was
        cancelled meanwhile (its items have failed then). Transient failures are tried
        again after a while."""
        while not job.cancelled:
            try:
                batch = await self._client.messages.batches.create(
                    requests=cast(list[batch_create_params.Request], requests)
                )
            except anthropic.APIError as exc:
                error = self._translate(exc)
                if not is_transient(error):
                    await job.fail(positions, item_error(error))
                    return None
                await job.sleep(self._poll)
                continue
            return batch.id
        await job.fail(positions, cancelled_error())
        return None

    def _request(self, item: Item) -> dict[str, Any]:
        assert item.text is not None
        return {
            "custom_id": custom_id(item.position),
            "params": self._backend.batch_params(item.text),
        }

    async def _look_at(self, job: Job, batch_id: str, items: list[Item]) -> None:
        """Polls one batch once: cancels it if asked, collects its results once ended."""
        try:
            batch = await self._client.messages.batches.retrieve(batch_id)
            if batch.processing_status == "in_progress" and job.cancelled:
                log.info("operation %s: cancelling provider batch %s", job.id, batch_id)
                batch = await self._client.messages.batches.cancel(batch_id)
            if batch.processing_status != "ended":
                return
            await self._collect(job, batch_id, items)
        except anthropic.APIError as exc:
            error = self._translate(exc)
            if is_transient(error):
                return  # polled again later
            await job.fail([i.position for i in items], item_error(error))

    async def _collect(self, job: Job, batch_id: str, items: list[Item]) -> None:
        """Streams the ended batch's results, storing them STORE_EVERY at a time."""
        by_position = {i.position: i for i in items}
        done: list[tuple[Item, AnalysisResult | ItemError]] = []
        results = await self._client.messages.batches.results(batch_id)
        async for entry in results:
            position = position_of(entry.custom_id)
            item = by_position.pop(position, None) if position is not None else None
            if item is None:
                continue  # finished before a restart, or not ours
            done.append((item, self._outcome(entry)))
            if len(done) >= STORE_EVERY:
                await job.finish(done)
                done = []
        await job.finish(done)
        # A request the results leave out would otherwise stay pending for ever.
        await job.fail(
            list(by_position),
            ItemError(
                grpc.StatusCode.UNAVAILABLE.value[0],
                "PROVIDER_RESULT_MISSING",
                f"the provider batch {batch_id} has no result for this text",
            ),
        )

    def _outcome(self, entry: MessageBatchIndividualResponse) -> AnalysisResult | ItemError:
        result = entry.result
        if result.type == "succeeded":
            try:
                return self._backend.batch_result(result.message)
            except ServiceError as error:
                return item_error(error)
        if result.type == "errored":
            detail = result.error.error
            code = _ERRORED_CODES.get(detail.type, grpc.StatusCode.UNAVAILABLE)
            return ItemError(
                code.value[0],
                f"PROVIDER_{detail.type.upper()}",
                f"the provider failed on this text ({detail.type}: {detail.message})",
            )
        if result.type == "canceled":
            return cancelled_error()
        return ItemError(
            grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
            "PROVIDER_BATCH_EXPIRED",
            "the provider batch expired (24 hours) before this text was analysed",
        )

    def _translate(self, exc: anthropic.APIError) -> ServiceError:
        return translate(exc, model=self._backend.model, trace=UpstreamTrace())
