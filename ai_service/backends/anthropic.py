"""The Claude backend, through the official SDK (one AsyncAnthropic for the process).

Retries: the SDK retries HTTP failures (429, 5xx, 529, connection) within the call's
deadline; this module retries only what the SDK cannot - an `error` event inside a
stream before anything was passed on, and one repair request when the model's JSON
fails validation. `stop_reason` is checked before the output is trusted, so truncation
and refusals are reported as what they are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import anthropic
import httpx2
import jiter
from anthropic.types import Message
from pydantic import ValidationError

from ai_service.backends.anthropic_errors import translate
from ai_service.backends.base import UpstreamTrace
from ai_service.domain import AnalysisResult, PartialResult, Sentiment, Usage
from ai_service.prompt import OUTPUT_SCHEMA, SYSTEM_PROMPT, AnalysisOutput, user_message
from servicekit.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ServiceError,
    Unavailable,
)

log = logging.getLogger(__name__)

# Attempts at a stream that fails with an `error` event before anything was sent on.
STREAM_ATTEMPTS = 2


class AnthropicBackend:
    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        model: str,
        max_output_tokens: int,
        timeout_seconds: float,
    ) -> None:
        self._client = client
        self._model = model
        self._max_output_tokens = max_output_tokens
        self._timeout = timeout_seconds

    @property
    def model(self) -> str:
        return self._model

    async def analyze(self, text: str, *, deadline: float, trace: UpstreamTrace) -> AnalysisResult:
        messages: list[dict[str, Any]] = [{"role": "user", "content": user_message(text)}]
        message = await self._create(messages, deadline, trace)
        return await self._accept_or_repair(messages, message, deadline, trace)

    async def stream(
        self, text: str, *, deadline: float, trace: UpstreamTrace
    ) -> AsyncIterator[PartialResult | AnalysisResult]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": user_message(text)}]
        for attempt in range(1, STREAM_ATTEMPTS + 1):
            sent_on = False
            try:
                async with asyncio.timeout_at(deadline):
                    async with self._client.messages.stream(
                        **self._params(messages), timeout=self._attempt_timeout(deadline)
                    ) as stream:
                        if stream.request_id:
                            trace.request_ids.append(stream.request_id)
                        last = PartialResult()
                        async for event in stream:
                            if event.type != "text":
                                continue
                            partial = _partial(event.snapshot)
                            if partial is not None and partial != last:
                                last = partial
                                sent_on = True
                                yield partial
                        message = await stream.get_final_message()
            except TimeoutError:
                raise _deadline_exceeded() from None
            except anthropic.APIStatusError as exc:
                # An `error` event arrives inside a 200 response; the SDK does not
                # retry it. Once partial results went out, a retry would contradict them.
                if exc.status_code == 200 and not sent_on and attempt < STREAM_ATTEMPTS:
                    log.warning(
                        "stream %s failed with %s before any output; retrying",
                        exc.request_id,
                        exc.type,
                    )
                    continue
                raise translate(exc, model=self._model, trace=trace) from exc
            except httpx2.TransportError as exc:
                # The connection broke mid-stream: the SDK raises the transport's own
                # error here, not an APIConnectionError, and does not retry it.
                if not sent_on and attempt < STREAM_ATTEMPTS:
                    log.warning("stream broke off before any output (%s); retrying", exc)
                    continue
                raise Unavailable(
                    "the model provider's answer broke off", reason="PROVIDER_STREAM_ERROR"
                ) from exc
            except anthropic.APIError as exc:
                raise translate(exc, model=self._model, trace=trace) from exc
            yield await self._accept_or_repair(messages, message, deadline, trace)
            return

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The process's one client, which Message Batches (ai_service.batches) share."""
        return self._client

    def batch_params(self, text: str) -> dict[str, Any]:
        """The Messages request for `text`, as one Message Batch item's `params`."""
        return self._params([{"role": "user", "content": user_message(text)}])

    def batch_result(self, message: Message) -> AnalysisResult:
        """The validated analysis in a batch item's answer. A batch has no second turn,
        so output that fails validation is not repaired: it is that item's error."""
        text = _checked_text(message, self._max_output_tokens)
        try:
            return _result(text, message, self._model)
        except ValidationError as invalid:
            raise Unavailable(
                f"the model's output failed validation ({_brief(invalid)})",
                reason="MODEL_OUTPUT_INVALID",
            ) from None

    async def _accept_or_repair(
        self,
        messages: list[dict[str, Any]],
        message: Message,
        deadline: float,
        trace: UpstreamTrace,
    ) -> AnalysisResult:
        text = _checked_text(message, self._max_output_tokens)
        try:
            return _result(text, message, self._model)
        except ValidationError as invalid:
            problem = _brief(invalid)
        log.warning("model output failed validation (%s); asking for a repair", problem)
        repair = [
            *messages,
            {"role": "assistant", "content": text},
            {
                "role": "user",
                "content": "That reply does not match the required JSON schema: "
                f"{problem}. Reply again with only the corrected JSON object.",
            },
        ]
        repaired = await self._create(repair, deadline, trace)
        try:
            result = _result(
                _checked_text(repaired, self._max_output_tokens), repaired, self._model
            )
        except ValidationError as second:
            raise Unavailable(
                f"the model's output failed validation twice ({_brief(second)})",
                reason="MODEL_OUTPUT_INVALID",
            ) from None
        # Both requests were paid for.
        return _with_usage(result, _usage(message) + _usage(repaired))

    async def _create(
        self, messages: list[dict[str, Any]], deadline: float, trace: UpstreamTrace
    ) -> Message:
        try:
            # The gRPC deadline bounds the whole call, the SDK's retries included; the
            # per-request timeout bounds each attempt (a per-request option, not a new
            # client copy per call).
            async with asyncio.timeout_at(deadline):
                message = cast(
                    Message,
                    await self._client.messages.create(
                        **self._params(messages), timeout=self._attempt_timeout(deadline)
                    ),
                )
        except TimeoutError:
            raise _deadline_exceeded() from None
        except anthropic.APIError as exc:
            raise translate(exc, model=self._model, trace=trace) from exc
        if message._request_id:
            trace.request_ids.append(message._request_id)
        return message

    async def count_tokens(self, text: str, deadline: float) -> int:
        """The input tokens the analysis request for `text` would count (free; the
        provider's own tokenizer)."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": user_message(text)}]
        params = self._params(messages)
        del params["max_tokens"]
        try:
            async with asyncio.timeout_at(deadline):
                counted = await self._client.messages.count_tokens(
                    **params, timeout=self._attempt_timeout(deadline)
                )
        except TimeoutError:
            raise _deadline_exceeded() from None
        except anthropic.APIError as exc:
            raise translate(exc, model=self._model, trace=UpstreamTrace()) from exc
        return counted.input_tokens

    def _params(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self._model,
            "max_tokens": self._max_output_tokens,
            # The stable part first, marked cacheable: the cache's prefix ends with the
            # system prompt, which is long enough to be cached (ai_service.prompt).
            "system": [
                {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}
            ],
            "messages": messages,
            "output_config": {"format": {"type": "json_schema", "schema": OUTPUT_SCHEMA}},
        }

    def _attempt_timeout(self, deadline: float) -> float:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise _deadline_exceeded()
        return min(self._timeout, remaining)


def _checked_text(message: Message, max_output_tokens: int) -> str:
    """The answer's text, once `stop_reason` says it is complete and not a refusal."""
    if message.stop_reason == "refusal":
        category = getattr(message.stop_details, "category", None) or "unspecified"
        raise InvalidArgument.field(
            "text", f"the model declined to analyse this text (category: {category})"
        )
    if message.stop_reason in ("max_tokens", "model_context_window_exceeded"):
        raise FailedPrecondition(
            "the model's answer was cut off at the output limit "
            f"(AI_MAX_OUTPUT_TOKENS={max_output_tokens}); raise it",
            reason="OUTPUT_TRUNCATED",
        )
    return "".join(block.text for block in message.content if block.type == "text")


def _result(text: str, message: Message, model: str) -> AnalysisResult:
    output = AnalysisOutput.model_validate_json(text)
    return AnalysisResult(
        summary=output.summary,
        sentiment=Sentiment(output.sentiment),
        key_points=tuple(output.key_points),
        confidence=output.confidence,
        model=message.model or model,
        usage=_usage(message),
    )


def _usage(message: Message) -> Usage:
    usage = message.usage
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens or 0,
        cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
        service_tier=usage.service_tier or "",
    )


def _with_usage(result: AnalysisResult, usage: Usage) -> AnalysisResult:
    return AnalysisResult(
        summary=result.summary,
        sentiment=result.sentiment,
        key_points=result.key_points,
        confidence=result.confidence,
        model=result.model,
        usage=usage,
    )


def _partial(snapshot: str) -> PartialResult | None:
    """The fields readable so far from an incomplete JSON text; unvalidated."""
    try:
        parsed = jiter.from_json(snapshot.encode(), partial_mode="trailing-strings")
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    summary = parsed.get("summary")
    sentiment = parsed.get("sentiment")
    points = parsed.get("key_points")
    return PartialResult(
        summary=summary if isinstance(summary, str) else "",
        sentiment=Sentiment(sentiment)
        if isinstance(sentiment, str) and sentiment in Sentiment._value2member_map_
        else None,
        key_points=tuple(p for p in points if isinstance(p, str))
        if isinstance(points, list)
        else (),
    )


def _brief(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}" for e in error.errors()[:5]
    )


def _deadline_exceeded() -> ServiceError:
    return DeadlineExceeded("the analysis did not finish before the call's deadline")
