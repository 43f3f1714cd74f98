"""A scriptable fake of Anthropic's Messages API, on a real loopback HTTP port.

The ai service talks to Claude through the official ``anthropic`` SDK. Tests point the SDK
at this server (``base_url=fake.url``, or ``ANTHROPIC_BASE_URL`` for a service subprocess:
``env={**os.environ, **fake.env()}``) instead of mocking the SDK, so the SDK's own request
building, retries, SSE parsing and error mapping run for real. The wire shapes follow the
Messages API: message bodies, SSE events, error bodies, and the ``request-id``,
``retry-after``, ``retry-after-ms`` and ``x-should-retry`` headers.

Usage::

    with FakeAnthropic() as fake:
        fake.enqueue(Reply.rate_limited(retry_after=0.05), Reply.json_output({"summary": "ok"}))
        client = AsyncAnthropic(base_url=fake.url, api_key=fake.api_key)
        ...  # the code under test calls client.messages.parse(...) / .stream(...)
        assert [r.retry_count for r in fake.requests_to(MESSAGES_PATH)] == [0, 1]
        assert fake.last_request.json["max_tokens"] == 1024

Replies come from, in order: the FIFO of ``enqueue`` for the request's path, then the
``set_responder`` callable (which may return ``None``), then the path's default. The
default for ``/v1/messages`` is a 500 whose message says "no scripted reply" (with
``x-should-retry: false``, so the SDK fails at once); ``count_tokens`` defaults to an
estimate of about four characters per token. Requests the real API would reject (no or
wrong key, no ``anthropic-version``, missing fields, unknown route) get its error without
touching the script. A default may be set for one model
(``set_default(Reply.overloaded(), model="claude-a")``), e.g. to overload one model of
a chain; it wins over the path's default for requests naming that model.

Prompt caching follows the API's rules when a reply's usage is left to the fake (see
``PromptCache``): the prefix up to a ``cache_control`` breakpoint (tools, then system,
then messages) is written on the first request (``cache_creation_input_tokens``) and
read by later ones with the identical prefix (``cache_read_input_tokens``), when it is
at least the model's minimum cacheable length, within its TTL.

Every request is recorded as a ``RecordedRequest``. Its ``disconnected`` event is set when
the client went away before the reply was fully written (the server watches the socket
while a reply is held back by ``delay``/``chunk_delay``; a fast reply may be written into
the socket buffers before the client leaves), ``completed`` when the reply was fully
written, and ``done`` when the server finished with it either way. In async tests use
``await request.wait_disconnected(timeout)`` and ``await fake.wait_for_requests_async()``:
they wait in a worker thread, so the event loop stays free for the code under test (the
events' own blocking ``wait()`` would stall an in-process service on the same loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import secrets
import select
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, TypedDict, cast

from typing_extensions import Unpack

from tests.support.fake_batches import FakeBatches, is_batch_path

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
DEFAULT_API_KEY = "test-key"
DEFAULT_MODEL = "claude-fake"

# Base58, as in Anthropic's ids: no 0/O/I/l that read alike.
_ID_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_STOP_TIMEOUT = 5.0


def _new_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def new_request_id() -> str:
    """An id shaped like the API's, e.g. ``req_011CVx...`` (24 characters after ``req_``)."""
    return _new_id("req_011CV", 19)


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Usage:
    """Token counts of one reply, rendered as the API renders them.

    The cache counts are additive to ``input_tokens`` (as in the API), not part of it.
    """

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    service_tier: str = "standard"
    # Of cache_creation_input_tokens, those written with a one-hour TTL.
    cache_creation_1h_input_tokens: int = 0

    def _input_part(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens
                - self.cache_creation_1h_input_tokens,
                "ephemeral_1h_input_tokens": self.cache_creation_1h_input_tokens,
            },
        }

    def message_json(self) -> dict[str, Any]:
        """``usage`` of a non-streamed message."""
        return {
            **self._input_part(),
            "output_tokens": self.output_tokens,
            "service_tier": self.service_tier,
        }

    def stream_start_json(self) -> dict[str, Any]:
        """``message_start.message.usage``: the input counts, output barely begun."""
        return {
            **self._input_part(),
            "output_tokens": min(1, self.output_tokens),
            "service_tier": self.service_tier,
        }

    def stream_delta_json(self) -> dict[str, Any]:
        """``message_delta.usage``: the cumulative output count."""
        return {"output_tokens": self.output_tokens}


@dataclass(frozen=True)
class TextContent:
    text: str


@dataclass(frozen=True)
class ToolUseContent:
    name: str
    # Kept as JSON text so that a Reply stays immutable whatever the caller does to its dict.
    input_json: str


@dataclass(frozen=True)
class Refusal:
    category: str | None
    explanation: str | None

    def as_json(self) -> dict[str, Any]:
        return {"type": "refusal", "category": self.category, "explanation": self.explanation}


class MessageOptions(TypedDict, total=False):
    """Options every successful-message constructor of ``Reply`` takes.

    usage: token counts; by default estimated from the request and the reply text.
    model: the model named in the reply; by default the request's.
    delay: seconds before the status line is sent (interrupted by ``stop()``).
    chunk_delay: for streams, seconds before each event after ``message_start``.
    chunks: for streams, how many deltas each content block's text is split into.
    stream_error_after: for streams, send ``event: error`` after this many deltas.
    stream_error_type: the error type of that event (default ``overloaded_error``).
    drop_after: for streams, cut the connection after this many deltas.
    headers: extra response headers (e.g. ``anthropic-ratelimit-*``).
    """

    usage: Usage | None
    model: str | None
    delay: float
    chunk_delay: float
    chunks: int
    stream_error_after: int
    stream_error_type: str
    drop_after: int
    headers: Mapping[str, str]


ReplyKind = Literal["message", "error", "token_count", "raw", "drop"]


@dataclass(frozen=True)
class Reply:
    """One scripted behaviour of the fake. Build it with the class methods."""

    kind: ReplyKind
    status: int = 200
    content: tuple[TextContent | ToolUseContent, ...] = ()
    stop_reason: str | None = None
    stop_sequence: str | None = None
    refusal_details: Refusal | None = None
    usage: Usage | None = None
    model: str | None = None
    error_type: str = ""
    error_message: str = ""
    error_code: str | None = None
    input_tokens: int | None = None
    raw_body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunks: int = 8
    stream_error_after: int | None = None
    stream_error_type: str = "overloaded_error"
    drop_after: int | None = None

    # -- successful messages

    @classmethod
    def json_output(cls, obj: object, **options: Unpack[MessageOptions]) -> Reply:
        """A structured-output success: one text block holding ``json.dumps(obj)``."""
        return cls._message((TextContent(json.dumps(obj)),), "end_turn", options)

    @classmethod
    def tool_output(
        cls,
        obj: Mapping[str, Any],
        tool_name: str = "record_analysis",
        **options: Unpack[MessageOptions],
    ) -> Reply:
        """A forced-tool-use success: one ``tool_use`` block whose ``input`` is ``obj``."""
        block = ToolUseContent(name=tool_name, input_json=json.dumps(dict(obj)))
        return cls._message((block,), "tool_use", options)

    @classmethod
    def text(
        cls,
        text: str,
        stop_reason: str = "end_turn",
        stop_sequence: str | None = None,
        **options: Unpack[MessageOptions],
    ) -> Reply:
        """Any text, e.g. JSON that breaks the schema, or no JSON at all."""
        reply = cls._message((TextContent(text),), stop_reason, options)
        return replace(reply, stop_sequence=stop_sequence)

    @classmethod
    def max_tokens(cls, partial_text: str, **options: Unpack[MessageOptions]) -> Reply:
        """Output cut off at ``max_tokens``; output_tokens defaults to the request's max_tokens."""
        return cls._message((TextContent(partial_text),), "max_tokens", options)

    @classmethod
    def refusal(
        cls,
        category: str | None = "cyber",
        explanation: str | None = "The request was declined by the safety system.",
        text: str = "",
        **options: Unpack[MessageOptions],
    ) -> Reply:
        """``stop_reason: "refusal"`` with ``stop_details``; the text block is empty by default."""
        reply = cls._message((TextContent(text),), "refusal", options)
        return replace(reply, refusal_details=Refusal(category, explanation))

    # -- failures

    @classmethod
    def error(
        cls,
        status: int,
        error_type: str,
        message: str,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        should_retry: bool | None = None,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """An HTTP error with the API's error body, e.g. ``error(404, "not_found_error", ...)``.

        ``retry_after`` may be seconds (floats are sent as given) or an HTTP date string.
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["retry-after"] = str(retry_after)
        if retry_after_ms is not None:
            extra["retry-after-ms"] = str(retry_after_ms)
        if should_retry is not None:
            extra["x-should-retry"] = "true" if should_retry else "false"
        return cls(
            kind="error",
            status=status,
            error_type=error_type,
            error_message=message,
            error_code=error_code,
            headers=tuple(extra.items()),
            delay=delay,
        )

    @classmethod
    def overloaded(cls, **kwargs: Any) -> Reply:
        """529 ``overloaded_error``; keyword arguments as for ``error``."""
        return cls.error(529, "overloaded_error", "Overloaded", **kwargs)

    @classmethod
    def rate_limited(cls, **kwargs: Any) -> Reply:
        """429 ``rate_limit_error``; keyword arguments as for ``error``."""
        return cls.error(429, "rate_limit_error", "Number of request tokens exceeded", **kwargs)

    @classmethod
    def raw(
        cls,
        status: int,
        body: bytes | str,
        content_type: str = "text/html",
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """Exactly these bytes, e.g. the HTML 502 page of a proxy in front of the API."""
        data = body.encode() if isinstance(body, str) else body
        return cls(
            kind="raw",
            status=status,
            raw_body=data,
            content_type=content_type,
            headers=tuple((headers or {}).items()),
            delay=delay,
        )

    @classmethod
    def drop_connection(cls, delay: float = 0.0) -> Reply:
        """Close the connection without answering (the SDK sees a connection error)."""
        return cls(kind="drop", delay=delay)

    @classmethod
    def token_count(cls, input_tokens: int, delay: float = 0.0) -> Reply:
        """A ``count_tokens`` answer; enqueue it with ``path=COUNT_TOKENS_PATH``."""
        return cls(kind="token_count", input_tokens=input_tokens, delay=delay)

    # -- modifiers

    @classmethod
    def slow(cls, seconds: float, then: Reply) -> Reply:
        """``then``, held back for ``seconds`` before the status line."""
        return replace(then, delay=seconds)

    def with_options(self, **options: Unpack[MessageOptions]) -> Reply:
        """A copy with some ``MessageOptions`` changed."""
        changes: dict[str, Any] = dict(options)
        if "headers" in changes:
            changes["headers"] = tuple(changes["headers"].items())
        return replace(self, **changes)

    @classmethod
    def _message(
        cls,
        content: tuple[TextContent | ToolUseContent, ...],
        stop_reason: str,
        options: MessageOptions,
    ) -> Reply:
        base = cls(kind="message", content=content, stop_reason=stop_reason)
        return base.with_options(**options)


Responder = Callable[["RecordedRequest"], Reply | None]


# --------------------------------------------------------------------------- recording


@dataclass(eq=False)
class RecordedRequest:
    """What one request carried, and what became of it.

    ``headers`` has lower-cased names. ``body`` is the parsed JSON (``None`` if the body was
    not JSON). ``received_at`` is ``time.monotonic()`` when the request was read.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw_body: bytes
    body: Any
    received_at: float
    request_id: str
    status: int | None = None
    reply: Reply | None = None
    completed: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def json(self) -> dict[str, Any]:
        """The JSON object body (fails the test if the body was not a JSON object)."""
        assert isinstance(self.body, dict), f"request body is not a JSON object: {self.raw_body!r}"
        return cast(dict[str, Any], self.body)

    @property
    def streamed(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def api_key(self) -> str | None:
        """The key from ``x-api-key`` or ``Authorization: Bearer``."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    @property
    def retry_count(self) -> int | None:
        """The SDK's ``x-stainless-retry-count``: 0 on the first attempt."""
        value = self.headers.get("x-stainless-retry-count")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def system_text(self) -> str:
        body = self.body if isinstance(self.body, dict) else {}
        return _text_of(body.get("system", ""))

    @property
    def user_text(self) -> str:
        """The text of every user message, joined by newlines."""
        body = self.body if isinstance(self.body, dict) else {}
        messages = body.get("messages")
        if not isinstance(messages, list):
            return ""
        return "\n".join(
            _text_of(m.get("content", ""))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user"
        )

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """``output_config.format.schema`` (what ``messages.parse`` sends), if any."""
        schema: Any = self.body
        for key in ("output_config", "format", "schema"):
            schema = schema.get(key) if isinstance(schema, dict) else None
        return cast(dict[str, Any], schema) if isinstance(schema, dict) else None

    @property
    def anthropic_version(self) -> str | None:
        return self.headers.get("anthropic-version")

    async def wait_disconnected(self, timeout: float) -> bool:
        """Whether the client went away within ``timeout``; leaves the event loop free."""
        return await asyncio.to_thread(self.disconnected.wait, timeout)

    async def wait_completed(self, timeout: float) -> bool:
        return await asyncio.to_thread(self.completed.wait, timeout)

    async def wait_done(self, timeout: float) -> bool:
        return await asyncio.to_thread(self.done.wait, timeout)


def _text_of(value: Any) -> str:
    """The text in a string, a content block, or a list of content blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text_of(item) for item in value)
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return cast(str, value["text"])
        if "content" in value:
            return _text_of(value["content"])
        return json.dumps(value)
    return "" if value is None else json.dumps(value)


def estimate_input_tokens(body: Any) -> int:
    """About four characters per token, over system, messages, tools and output schema."""
    if not isinstance(body, dict):
        return 1
    text = _text_of(body.get("system", "")) + _text_of(body.get("messages", []))
    for key in ("tools", "output_config"):
        if key in body:
            text += json.dumps(body[key])
    return max(1, math.ceil(len(text) / 4))


# --------------------------------------------------------------------------- prompt caching

# The shortest prefix the API caches, by model class; shorter ones are neither written
# nor read (``../shared/reference/anthropic.md``).
MIN_CACHEABLE_TOKENS = 1024
MIN_CACHEABLE_TOKENS_HAIKU = 2048
_CACHE_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


def min_cacheable_tokens(model: str) -> int:
    return MIN_CACHEABLE_TOKENS_HAIKU if "haiku" in model.lower() else MIN_CACHEABLE_TOKENS


@dataclass(frozen=True)
class _Breakpoint:
    key: str
    tokens: int
    ttl: str


class PromptCache:
    """The API's prompt cache, by its documented rules.

    A request's cacheable blocks run in the order tools, system, messages. Each block
    marked with ``cache_control`` (and, with a top-level ``cache_control``, the last
    block) is a breakpoint: the prefix up to and including it is cacheable when it
    holds at least the model's minimum of tokens. The prefix is keyed by the model,
    the output format and every block up to the breakpoint, so any change before it
    misses. A request reads the longest cached prefix of its breakpoints and writes
    the rest up to its last eligible breakpoint; a read refreshes the entry's TTL
    (5 minutes, or ``"ttl": "1h"``). Tokens are estimated as everywhere in the fake
    (about four characters each); the three counts add up to the request's estimate.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def clear(self) -> None:
        with self._lock:
            self._expiry.clear()

    def usage(self, body: Mapping[str, Any]) -> Usage:
        """The input counts of a request, reading and writing the cache."""
        total = estimate_input_tokens(dict(body))
        points = [p for p in _breakpoints(body) if p.tokens >= min_cacheable_tokens(_model(body))]
        now = self._clock()
        with self._lock:
            read = 0
            for point in points:
                if self._expiry.get(point.key, -math.inf) > now:
                    read = point.tokens
                    self._expiry[point.key] = now + _CACHE_TTL_SECONDS[point.ttl]
            written = written_1h = 0
            for point in points:
                if point.tokens > read:
                    self._expiry[point.key] = now + _CACHE_TTL_SECONDS[point.ttl]
            if points and points[-1].tokens > read:
                written = points[-1].tokens - read
                written_1h = written if points[-1].ttl == "1h" else 0
        return Usage(
            input_tokens=max(0, total - read - written),
            output_tokens=0,
            cache_creation_input_tokens=written,
            cache_read_input_tokens=read,
            cache_creation_1h_input_tokens=written_1h,
        )


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else DEFAULT_MODEL


def _blocks(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cacheable blocks of a request, in the API's order: tools, system, messages."""
    blocks: list[dict[str, Any]] = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    system = body.get("system")
    if isinstance(system, str) and system:
        blocks.append({"type": "text", "text": system})
    elif isinstance(system, list):
        blocks += [b for b in system if isinstance(b, dict)]
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            blocks.append({"type": "text", "text": content, "role": message.get("role")})
        elif isinstance(content, list):
            blocks += [{**b, "role": message.get("role")} for b in content if isinstance(b, dict)]
    return blocks


def _breakpoints(body: Mapping[str, Any]) -> list[_Breakpoint]:
    blocks = _blocks(body)
    automatic = body.get("cache_control")
    found: list[_Breakpoint] = []
    text = ""
    for index, block in enumerate(blocks):
        text += _text_of(block) if "text" in block or "content" in block else json.dumps(block)
        marker = block.get("cache_control")
        if marker is None and index == len(blocks) - 1 and isinstance(automatic, dict):
            marker = automatic
        if not isinstance(marker, dict):
            continue
        material = json.dumps(
            [_model(body), body.get("output_config"), blocks[: index + 1]], sort_keys=True
        )
        found.append(
            _Breakpoint(
                key=hashlib.sha256(material.encode()).hexdigest(),
                tokens=math.ceil(len(text) / 4),
                ttl="1h" if marker.get("ttl") == "1h" else "5m",
            )
        )
    return found


# --------------------------------------------------------------------------- the server


class FakeAnthropic:
    """The fake server. ``with FakeAnthropic() as fake:`` or ``start()``/``stop()``.

    api_key: the key a request must carry (as ``x-api-key`` or ``Authorization: Bearer``).
    require_auth: answer 401 to a missing or wrong key, like the API; False accepts anything.
    require_version: answer 400 to requests without ``anthropic-version``, like the API.
    validate_requests: answer 400 to message requests missing model/max_tokens/messages.
    clock: seconds, for the prompt cache's TTLs (``time.monotonic`` unless a test
    moves time itself).
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        require_auth: bool = True,
        require_version: bool = True,
        validate_requests: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.prompt_cache = PromptCache(clock)
        self.require_auth = require_auth
        self.require_version = require_version
        self.validate_requests = validate_requests
        self._address = (host, port)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._queues: dict[str, deque[Reply]] = {}
        self._defaults = _initial_defaults()
        self._model_defaults: dict[tuple[str, str], Reply] = {}
        self._responder: Responder | None = None
        self._errors: list[BaseException] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_read = self._wake_write = -1
        self._connections: dict[socket.socket, threading.Thread] = {}
        # The Message Batches endpoints (tests.support.fake_batches).
        self.batches = FakeBatches(self)

    # -- lifecycle

    def start(self) -> FakeAnthropic:
        if self._server is not None:
            raise RuntimeError("FakeAnthropic is already started")
        self._stopping.clear()
        self._wake_read, self._wake_write = os.pipe()
        self._server = _Server(self._address, _Handler, fake=self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-anthropic:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; replies being held back are abandoned and connections cut."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()  # after this no new connection is accepted
        thread.join()
        self._stopping.set()
        os.write(self._wake_write, b"x")  # wakes every handler that is pausing
        with self._lock:
            connections = dict(self._connections)
        for sock in connections:
            # Unblocks handlers stuck reading an idle keep-alive connection or writing.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + _STOP_TIMEOUT
        stuck = False
        for handler in connections.values():
            handler.join(max(0.0, deadline - time.monotonic()))
            stuck = stuck or handler.is_alive()
        server.server_close()
        if not stuck:  # a stuck handler may still poll the pipe; leaking two fds is harmless
            os.close(self._wake_read)
            os.close(self._wake_write)
        self._server = self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL for the SDK's ``base_url`` / ``ANTHROPIC_BASE_URL``."""
        return f"http://{self._address[0]}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point an SDK in a subprocess at this fake."""
        return {"ANTHROPIC_BASE_URL": self.url, "ANTHROPIC_API_KEY": self.api_key}

    # -- scripting

    def enqueue(self, *replies: Reply, path: str = MESSAGES_PATH) -> None:
        """Serve these replies, in order, to the next requests to ``path``."""
        with self._lock:
            self._queues.setdefault(path, deque()).extend(replies)

    def set_default(
        self, reply: Reply | None, path: str = MESSAGES_PATH, *, model: str | None = None
    ) -> None:
        """The reply when the queue is empty (``None`` for count_tokens: estimate); with
        ``model``, only for requests naming that model (``None`` then removes it)."""
        with self._lock:
            if model is None:
                self._defaults[path] = reply
            elif reply is None:
                self._model_defaults.pop((path, model), None)
            else:
                self._model_defaults[(path, model)] = reply

    def set_responder(self, responder: Responder | None) -> None:
        """Decide replies per request; used when the queue is empty, ``None`` falls through.

        It runs in the server's handler threads, possibly many at once.
        """
        with self._lock:
            self._responder = responder

    def queued(self, path: str = MESSAGES_PATH) -> int:
        """How many enqueued replies are still unserved."""
        with self._lock:
            return len(self._queues.get(path, ()))

    def reset(self) -> None:
        """Forget requests, queues, responder, defaults and the prompt cache (as if new;
        the port stays)."""
        self.prompt_cache.clear()
        with self._lock:
            self._requests.clear()
            self._queues.clear()
            self._defaults = _initial_defaults()
            self._model_defaults.clear()
            self._responder = None
            self._errors.clear()
            self.batches = FakeBatches(self)

    # -- inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, oldest first (a snapshot)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if r.path == path]

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            assert self._requests, "no request has reached the fake Anthropic server"
            return self._requests[-1]

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised inside the fake (e.g. by a responder); answered with a 500."""
        with self._lock:
            return list(self._errors)

    def wait_for_requests(
        self, count: int = 1, timeout: float = 5.0, path: str | None = None
    ) -> list[RecordedRequest]:
        """Block until ``count`` requests (to ``path``, if given) have arrived; return them."""

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        with self._arrived:
            if not self._arrived.wait_for(lambda: len(matching()) >= count, timeout):
                raise TimeoutError(
                    f"{len(matching())} of {count} requests reached the fake within {timeout} s"
                )
            return matching()

    async def wait_for_requests_async(
        self, count: int = 1, timeout: float = 5.0, path: str | None = None
    ) -> list[RecordedRequest]:
        """``wait_for_requests`` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_for_requests, count, timeout, path)

    # -- used by the handler threads

    def _record(self, request: RecordedRequest) -> None:
        with self._arrived:
            self._requests.append(request)
            self._arrived.notify_all()

    def _dequeue(self, request: RecordedRequest) -> Reply | None:
        """The next reply enqueued for the request's path, if any (batch routes: a
        scripted failure before the batch logic answers)."""
        with self._lock:
            queue = self._queues.get(request.path)
            return queue.popleft() if queue else None

    def _choose(self, request: RecordedRequest) -> Reply | None:
        with self._lock:
            queue = self._queues.get(request.path)
            if queue:
                return queue.popleft()
            responder = self._responder
            model = request.body.get("model") if isinstance(request.body, dict) else None
            default = self._model_defaults.get((request.path, str(model)))
            if default is None:
                default = self._defaults.get(request.path)
        if responder is not None:
            try:
                reply = responder(request)
            except Exception as exc:  # noqa: BLE001 - test code's bug, reported via errors and a 500
                self._note_error(exc)
                return Reply.error(
                    500, "api_error", f"fake: responder raised {exc!r}", should_retry=False
                )
            if reply is not None:
                return reply
        return default

    def _note_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _track(self, sock: socket.socket, thread: threading.Thread | None) -> None:
        with self._lock:
            if thread is None:
                self._connections.pop(sock, None)
            else:
                self._connections[sock] = thread


def _initial_defaults() -> dict[str, Reply | None]:
    return {
        # A test that forgot to script a reply fails at once (no SDK retries) and says why.
        MESSAGES_PATH: Reply.error(
            500,
            "api_error",
            "fake Anthropic: no scripted reply for this request; "
            "call fake.enqueue(...), fake.set_default(...) or fake.set_responder(...)",
            should_retry=False,
        ),
        COUNT_TOKENS_PATH: None,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # stop() joins the handler threads itself, with a deadline.
    block_on_close = False
    # Room for hundreds of simultaneous connects (the default backlog is 5).
    request_queue_size = 512

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        fake: FakeAnthropic,
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS look-up (getfqdn) that can stall offline.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Registered here, before the thread runs, so that stop() sees every connection.
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), daemon=True
        )
        self.fake._track(request, thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.fake._track(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError) or (
            isinstance(exc, OSError) and self.fake._stopping.is_set()
        ):
            return  # a client hanging up is normal here, not worth a traceback
        super().handle_error(request, client_address)


class _ClientGone(Exception):
    """The client closed the connection before the reply was complete."""


class _Stopping(Exception):
    """The fake is stopping; the reply is abandoned."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the access log would drown the test output

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def do_POST(self) -> None:
        self._serve()

    # Other methods are recorded too, then answered 404 like any unknown route.
    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # -- one request

    def _serve(self) -> None:
        fake = self.server.fake
        path, _, query = self.path.partition("?")
        raw_body = self._read_body()
        try:
            body: Any = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = RecordedRequest(
            method=self.command,
            path=path,
            query=query,
            headers=headers,
            raw_body=raw_body,
            body=body,
            received_at=time.monotonic(),
            request_id=new_request_id(),
        )
        fake._record(request)
        try:
            reply = self._rejection(request) or (
                fake._dequeue(request) or fake.batches.reply(request)
                if is_batch_path(path)
                else fake._choose(request)
            )
            request.reply = reply
            if reply is None:
                reply = Reply.token_count(estimate_input_tokens(request.body))
            self._send(request, reply)
            request.completed.set()
        except _ClientGone:
            request.disconnected.set()
            self.close_connection = True
        except _Stopping:
            self.close_connection = True
        except OSError:
            if not fake._stopping.is_set():
                request.disconnected.set()
            self.close_connection = True
        except Exception as exc:
            fake._note_error(exc)
            raise
        finally:
            request.done.set()

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _rejection(self, request: RecordedRequest) -> Reply | None:
        """The API's own answer to a request that never reaches the model, if any."""
        fake = self.server.fake
        batch = is_batch_path(request.path)
        if not batch and (
            request.method != "POST" or request.path not in (MESSAGES_PATH, COUNT_TOKENS_PATH)
        ):
            return Reply.error(404, "not_found_error", "Not Found")
        if fake.require_auth:
            key = request.api_key
            if key is None:
                return Reply.error(401, "authentication_error", "x-api-key header is required")
            if key != fake.api_key:
                return Reply.error(401, "authentication_error", "invalid x-api-key")
        if fake.require_version and "anthropic-version" not in request.headers:
            return Reply.error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if fake.validate_requests and not batch:
            problem = _invalid(request)
            if problem:
                return Reply.error(400, "invalid_request_error", problem)
        return None

    # -- writing

    def _send(self, request: RecordedRequest, reply: Reply) -> None:
        self._pause(reply.delay)
        if reply.kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif reply.kind == "error":
            error: dict[str, Any] = {"type": reply.error_type, "message": reply.error_message}
            if reply.error_code is not None:
                error["details"] = {"error_code": reply.error_code}
            body = {"type": "error", "error": error, "request_id": request.request_id}
            self._send_bytes(request, reply, reply.status, _dumps(body), "application/json")
        elif reply.kind == "raw":
            self._send_bytes(request, reply, reply.status, reply.raw_body, reply.content_type)
        elif reply.kind == "token_count":
            count = {"input_tokens": reply.input_tokens}
            self._send_bytes(request, reply, 200, _dumps(count), "application/json")
        elif request.streamed:
            self._send_stream(request, reply)
        else:
            message = _Rendering(request, reply, self.server.fake.prompt_cache).message()
            self._send_bytes(request, reply, 200, _dumps(message), "application/json")

    def _start(self, request: RecordedRequest, reply: Reply, status: int) -> None:
        request.status = status
        self.send_response(status)
        self.send_header("request-id", request.request_id)
        for name, value in reply.headers:
            self.send_header(name, value)

    def _send_bytes(
        self, request: RecordedRequest, reply: Reply, status: int, data: bytes, content_type: str
    ) -> None:
        self._start(request, reply, status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_stream(self, request: RecordedRequest, reply: Reply) -> None:
        self.close_connection = True
        self._start(request, reply, 200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        # Chunked, as the API does: a cut connection then reads as an incomplete body.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        rendering = _Rendering(request, reply, self.server.fake.prompt_cache)
        for position, (event, data) in enumerate(rendering.events()):
            if position:
                self._pause(reply.chunk_delay)
            if event == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            payload = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            self._write_chunk(payload.encode())
        self._write_chunk(b"")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _pause(self, seconds: float) -> None:
        """Hold the reply back, watching for stop() and for the client hanging up."""
        fake = self.server.fake
        if fake._stopping.is_set():
            raise _Stopping
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        poller = select.poll()
        poller.register(fake._wake_read, select.POLLIN)
        poller.register(self.connection, select.POLLIN | select.POLLRDHUP)
        while (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(math.ceil(remaining * 1000)):
                if fd == fake._wake_read:
                    raise _Stopping
                if self._client_gone():
                    raise _ClientGone
                # The client sent more bytes instead; stop watching its socket.
                poller.unregister(self.connection)

    def _client_gone(self) -> bool:
        try:
            peeked = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return not peeked


def _dumps(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _invalid(request: RecordedRequest) -> str | None:
    body = request.body
    if not isinstance(body, dict):
        return "The request body is not valid JSON."
    required = (
        ("model", "messages", "max_tokens")
        if request.path == MESSAGES_PATH
        else ("model", "messages")
    )
    for name in required:
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["messages"], list) or not body["messages"]:
        return "messages: at least one message is required"
    if request.path == MESSAGES_PATH:
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return "max_tokens: Input should be a valid integer greater than or equal to 1"
    return None


def render_message(request: RecordedRequest, reply: Reply) -> dict[str, Any]:
    """The JSON body of a non-streamed message ``reply`` to ``request``."""
    return _Rendering(request, reply).message()


class _Rendering:
    """A message reply as the API renders it for one request (JSON body or SSE events)."""

    def __init__(
        self, request: RecordedRequest, reply: Reply, prompt_cache: PromptCache | None = None
    ) -> None:
        """`prompt_cache`: the one the request reads and writes; none, no caching."""
        self.reply = reply
        body = request.body if isinstance(request.body, dict) else {}
        self.message_id = _new_id("msg_01", 22)
        self.tool_ids = [_new_id("toolu_01", 22) for _ in reply.content]
        model = reply.model or body.get("model")
        self.model = model if isinstance(model, str) else DEFAULT_MODEL
        if reply.usage is not None:
            self.usage = reply.usage
        else:
            max_tokens = body.get("max_tokens")
            if reply.stop_reason == "max_tokens" and isinstance(max_tokens, int):
                output_tokens = max_tokens
            else:
                output_tokens = max(
                    1, math.ceil(sum(len(self._text(b)) for b in reply.content) / 4)
                )
            if prompt_cache is None:
                self.usage = Usage(estimate_input_tokens(request.body), output_tokens)
            else:
                # Looked up as the response begins: a prefix becomes readable once the
                # response of the request that wrote it has started, as in the API.
                self.usage = replace(prompt_cache.usage(body), output_tokens=output_tokens)

    @staticmethod
    def _text(block: TextContent | ToolUseContent) -> str:
        return block.text if isinstance(block, TextContent) else block.input_json

    def _block_json(self, index: int, block: TextContent | ToolUseContent) -> dict[str, Any]:
        if isinstance(block, TextContent):
            return {"type": "text", "text": block.text}
        return {
            "type": "tool_use",
            "id": self.tool_ids[index],
            "name": block.name,
            "input": json.loads(block.input_json),
            "caller": {"type": "direct"},
        }

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
        }

    def _stop_json(self) -> dict[str, Any]:
        stop: dict[str, Any] = {
            "stop_reason": self.reply.stop_reason,
            "stop_sequence": self.reply.stop_sequence,
        }
        if self.reply.refusal_details is not None:
            stop["stop_details"] = self.reply.refusal_details.as_json()
        return stop

    def message(self) -> dict[str, Any]:
        return {
            **self._envelope(),
            "content": [self._block_json(i, b) for i, b in enumerate(self.reply.content)],
            **self._stop_json(),
            "usage": self.usage.message_json(),
        }

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The SSE events in order; ``("drop", {})`` marks where to cut the connection."""
        reply = self.reply
        start = {
            **self._envelope(),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage.stream_start_json(),
        }
        yield "message_start", {"type": "message_start", "message": start}
        deltas = 0

        def interruption() -> tuple[str, dict[str, Any]] | None:
            if reply.stream_error_after is not None and deltas >= reply.stream_error_after:
                error = {
                    "type": reply.stream_error_type,
                    "message": _ERROR_MESSAGES.get(
                        reply.stream_error_type, "Internal server error"
                    ),
                }
                return "error", {"type": "error", "error": error}
            if reply.drop_after is not None and deltas >= reply.drop_after:
                return "drop", {}
            return None

        for index, block in enumerate(reply.content):
            # A block opens empty; the deltas carry all of its text or input.
            opening = self._block_json(index, block)
            if isinstance(block, ToolUseContent):
                opening["input"] = {}
            else:
                opening["text"] = ""
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": opening,
                },
            )
            if index == 0:
                yield "ping", {"type": "ping"}
            for piece in _split(self._text(block), reply.chunks):
                if (stop := interruption()) is not None:
                    yield stop
                    return
                if isinstance(block, TextContent):
                    delta = {"type": "text_delta", "text": piece}
                else:
                    delta = {"type": "input_json_delta", "partial_json": piece}
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": delta,
                    },
                )
                deltas += 1
            if (stop := interruption()) is not None:
                yield stop
                return
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": self._stop_json(),
                "usage": self.usage.stream_delta_json(),
            },
        )
        yield "message_stop", {"type": "message_stop"}


_ERROR_MESSAGES = {
    "overloaded_error": "Overloaded",
    "rate_limit_error": "Rate limited",
    "api_error": "Internal server error",
}


def _split(text: str, chunks: int) -> list[str]:
    """``text`` in at most ``chunks`` non-empty pieces of near-equal length."""
    if not text:
        return []
    count = max(1, min(chunks, len(text)))
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces
