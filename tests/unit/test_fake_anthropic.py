"""The fake Anthropic server against the real ``anthropic`` SDK (no SDK method is mocked)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
from collections.abc import Iterator

import anthropic
import httpx2
import pydantic
import pytest
from anthropic._constants import ANTHROPIC_API_VERSION
from anthropic.types import Message, MessageParam

from tests.support.fake_anthropic import (
    COUNT_TOKENS_PATH,
    MESSAGES_PATH,
    FakeAnthropic,
    RecordedRequest,
    Reply,
    Usage,
)

# Not a model on the SDK's deprecation list: that one warns, and warnings are errors here.
MODEL = "claude-sonnet-5-5"
HELLO: list[MessageParam] = [{"role": "user", "content": "<text>Hello there</text>"}]
REQUEST_ID = re.compile(r"^req_011CV[1-9A-HJ-NP-Za-km-z]{19}$")


class Analysis(pydantic.BaseModel):
    summary: str
    sentiment: str
    confidence: float


ANALYSIS = {"summary": "A greeting.", "sentiment": "positive", "confidence": 0.9}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def client_for(
    fake: FakeAnthropic, *, max_retries: int = 0, timeout: float = 5.0, api_key: str = "test-key"
) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=fake.url, api_key=api_key, max_retries=max_retries, timeout=timeout
    )


# --------------------------------------------------------------- plain messages


async def test_create_returns_the_scripted_message_and_records_what_was_sent(fake):
    fake.enqueue(Reply.text("Hi!", usage=Usage(input_tokens=42, output_tokens=3)))
    async with client_for(fake) as client:
        message = await client.messages.create(
            model=MODEL,
            max_tokens=300,
            system="You analyse text.",
            messages=HELLO,
            metadata={"user_id": "user-123"},
        )

    assert message.content[0].type == "text"
    assert message.content[0].text == "Hi!"
    assert (message.model, message.stop_reason) == (MODEL, "end_turn")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (42, 3)
    sent = fake.last_request
    assert message._request_id == sent.request_id
    assert REQUEST_ID.match(sent.request_id)
    assert (sent.method, sent.path, sent.status, sent.streamed) == (
        "POST",
        MESSAGES_PATH,
        200,
        False,
    )
    assert sent.json["model"] == MODEL
    assert sent.json["max_tokens"] == 300
    assert sent.json["metadata"] == {"user_id": "user-123"}
    assert sent.system_text == "You analyse text."
    assert sent.user_text == "<text>Hello there</text>"
    # SDK 2.x sends the API key as a bearer token, not as x-api-key.
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.api_key == "test-key"
    assert sent.anthropic_version == ANTHROPIC_API_VERSION
    assert sent.retry_count == 0
    # The client can hold the answer before the server thread has noted it as written.
    assert await sent.wait_done(timeout=5)
    assert sent.completed.is_set()
    assert not sent.disconnected.is_set()


async def test_every_response_has_a_unique_request_id(fake):
    fake.set_default(Reply.text("same"))
    async with client_for(fake) as client:
        messages = [await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)]
        messages += await asyncio.gather(
            *(client.messages.create(model=MODEL, max_tokens=5, messages=HELLO) for _ in range(5))
        )

    ids = {m._request_id for m in messages}
    assert ids == {r.request_id for r in fake.requests}
    assert len(ids) == 6


async def test_usage_defaults_to_an_estimate_from_request_and_reply(fake):
    fake.enqueue(Reply.text("x" * 40))
    async with client_for(fake) as client:
        message = await client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)

    assert message.usage.output_tokens == 10
    assert message.usage.input_tokens == 6  # 24 characters of user text


# --------------------------------------------------------------- structured output


async def test_parse_returns_parsed_output_and_sends_the_json_schema(fake):
    fake.enqueue(Reply.json_output(ANALYSIS))
    async with client_for(fake) as client:
        parsed = await client.messages.parse(
            model=MODEL, max_tokens=300, messages=HELLO, output_format=Analysis
        )

    assert parsed.parsed_output == Analysis.model_validate(ANALYSIS)
    sent = fake.last_request
    assert sent.json["output_config"]["format"]["type"] == "json_schema"
    schema = sent.output_schema
    assert schema is not None
    assert schema["title"] == "Analysis"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"summary", "sentiment", "confidence"}
    assert sent.headers["x-stainless-helper"] == "messages.parse"


async def test_parse_rejects_output_that_breaks_the_schema(fake):
    fake.enqueue(Reply.json_output({"summary": "no sentiment"}), Reply.text("not JSON at all"))
    async with client_for(fake) as client:
        for _ in range(2):
            with pytest.raises(pydantic.ValidationError):
                await client.messages.parse(
                    model=MODEL, max_tokens=300, messages=HELLO, output_format=Analysis
                )


async def test_tool_output_comes_back_as_a_tool_use_block(fake):
    fake.enqueue(Reply.tool_output(ANALYSIS, tool_name="record_analysis"))
    async with client_for(fake) as client:
        message = await client.messages.create(
            model=MODEL,
            max_tokens=300,
            messages=HELLO,
            tools=[
                {
                    "name": "record_analysis",
                    "input_schema": Analysis.model_json_schema(),
                    "strict": True,
                }
            ],
            tool_choice={"type": "tool", "name": "record_analysis"},
        )

    block = message.content[0]
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("record_analysis", ANALYSIS)
    assert block.id.startswith("toolu_01")
    assert message.stop_reason == "tool_use"
    assert fake.last_request.json["tool_choice"] == {"type": "tool", "name": "record_analysis"}
    assert fake.last_request.json["tools"][0]["name"] == "record_analysis"


# --------------------------------------------------------------- streaming


async def test_stream_helper_yields_text_events_and_the_final_message(fake):
    usage = Usage(
        input_tokens=42, output_tokens=37, cache_creation_input_tokens=5, cache_read_input_tokens=7
    )
    fake.enqueue(Reply.json_output(ANALYSIS, usage=usage, chunks=6))
    async with (
        client_for(fake) as client,
        client.messages.stream(model=MODEL, max_tokens=300, messages=HELLO) as stream,
    ):
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert len(pieces) == 6
    assert json.loads("".join(pieces)) == ANALYSIS
    assert final.content[0].type == "text"
    assert json.loads(final.content[0].text) == ANALYSIS
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 42
    assert final.usage.output_tokens == 37
    assert final.usage.cache_creation_input_tokens == 5
    assert final.usage.cache_read_input_tokens == 7
    assert stream.request_id == fake.last_request.request_id
    assert fake.last_request.streamed
    assert await fake.last_request.wait_completed(timeout=5)


async def test_streamed_structured_output_is_parsed(fake):
    fake.enqueue(Reply.json_output(ANALYSIS))
    async with (
        client_for(fake) as client,
        client.messages.stream(
            model=MODEL, max_tokens=300, messages=HELLO, output_format=Analysis
        ) as stream,
    ):
        final = await stream.get_final_message()

    assert final.parsed_output == Analysis.model_validate(ANALYSIS)


async def test_streamed_tool_output_is_assembled_from_json_deltas(fake):
    fake.enqueue(Reply.tool_output(ANALYSIS, chunks=5))
    async with (
        client_for(fake) as client,
        client.messages.stream(model=MODEL, max_tokens=300, messages=HELLO) as stream,
    ):
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()

    assert kinds.count("input_json") == 5
    block = final.content[0]
    assert block.type == "tool_use"
    assert block.input == ANALYSIS
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("streamed", [False, True])
async def test_max_tokens_and_refusal_stop_reasons_come_through(fake, streamed):
    fake.enqueue(Reply.max_tokens('{"summary": "cut o'), Reply.refusal(category="cyber"))
    async with client_for(fake) as client:
        finals: list[Message] = []
        for _ in range(2):
            if streamed:
                async with client.messages.stream(
                    model=MODEL, max_tokens=64, messages=HELLO
                ) as stream:
                    finals.append(await stream.get_final_message())
            else:
                finals.append(
                    await client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
                )

    truncated, refused = finals
    assert truncated.stop_reason == "max_tokens"
    assert truncated.content[0].type == "text"
    assert truncated.content[0].text == '{"summary": "cut o'
    assert truncated.usage.output_tokens == 64
    assert refused.stop_reason == "refusal"
    assert refused.stop_details is not None
    assert refused.stop_details.category == "cyber"


# --------------------------------------------------------------- errors and retries


async def test_rate_limit_with_retry_after_is_retried_by_the_sdk(fake):
    fake.enqueue(Reply.rate_limited(retry_after=0.05), Reply.text("ok"))
    async with client_for(fake, max_retries=2) as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=5, messages=HELLO
        )
        message = await raw.parse()

    assert message.content[0].type == "text"
    assert message.content[0].text == "ok"
    assert raw.retries_taken == 1
    assert [(r.status, r.retry_count) for r in fake.requests] == [(429, 0), (200, 1)]
    assert fake.queued() == 0


async def test_three_overloaded_replies_exhaust_the_sdk_retries(fake):
    fake.enqueue(*[Reply.overloaded(retry_after_ms=1)] * 3)
    async with client_for(fake, max_retries=2) as client:
        with pytest.raises(anthropic.OverloadedError) as caught:
            await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)

    error = caught.value
    assert isinstance(error, anthropic.InternalServerError)
    assert (error.status_code, error.type) == (529, "overloaded_error")
    assert error.request_id == fake.last_request.request_id
    assert [r.retry_count for r in fake.requests] == [0, 1, 2]


async def test_x_should_retry_false_stops_the_sdk_retrying(fake):
    fake.enqueue(Reply.overloaded(should_retry=False))
    async with client_for(fake, max_retries=2) as client:
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)

    assert len(fake.requests) == 1


async def test_a_wrong_api_key_is_rejected_before_any_scripted_reply(fake):
    fake.enqueue(Reply.text("never served"))
    async with client_for(fake, max_retries=2, api_key="wrong-key") as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)

    assert caught.value.type == "authentication_error"
    assert caught.value.request_id == fake.last_request.request_id
    assert len(fake.requests) == 1
    assert fake.queued() == 1


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        (
            Reply.error(404, "not_found_error", "model: claude-nope"),
            anthropic.NotFoundError,
        ),
        (Reply.error(400, "invalid_request_error", "bad"), anthropic.BadRequestError),
        (
            Reply.error(401, "authentication_error", "invalid x-api-key"),
            anthropic.AuthenticationError,
        ),
    ],
)
async def test_scripted_client_errors_map_to_sdk_classes(fake, reply, error_class):
    fake.enqueue(reply)
    async with client_for(fake, max_retries=2) as client:
        with pytest.raises(error_class) as caught:
            await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)

    assert caught.value.api_message == reply.error_message
    assert len(fake.requests) == 1


async def test_an_unscripted_request_fails_loudly_and_at_once(fake):
    async with client_for(fake, max_retries=2) as client:
        with pytest.raises(anthropic.InternalServerError, match="no scripted reply"):
            await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)

    assert len(fake.requests) == 1


async def test_a_mid_stream_error_event_raises_without_retry(fake):
    fake.enqueue(Reply.json_output(ANALYSIS, stream_error_after=3), Reply.text("unused"))
    received: list[str] = []

    async def consume(client: anthropic.AsyncAnthropic) -> None:
        async with client.messages.stream(model=MODEL, max_tokens=300, messages=HELLO) as stream:
            async for text in stream.text_stream:
                received.append(text)

    async with client_for(fake, max_retries=2) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await consume(client)

    assert len(received) == 3
    assert (caught.value.status_code, caught.value.type) == (200, "overloaded_error")
    assert caught.value.request_id == fake.last_request.request_id
    assert len(fake.requests) == 1


async def test_a_connection_dropped_before_the_reply_is_a_connection_error(fake):
    fake.enqueue(Reply.drop_connection())
    async with client_for(fake) as client:
        with pytest.raises(anthropic.APIConnectionError):
            await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)


async def test_a_connection_dropped_mid_stream_escapes_as_an_httpx2_error(fake):
    # The SDK does not wrap transport errors raised while iterating a stream.
    fake.enqueue(Reply.text("x" * 40, drop_after=2))
    async with client_for(fake) as client:
        with pytest.raises(httpx2.RemoteProtocolError):
            async with client.messages.stream(model=MODEL, max_tokens=300, messages=HELLO) as s:
                await s.get_final_message()


# --------------------------------------------------------------- delays and cancellation


async def test_a_slow_reply_times_out_and_the_fake_sees_the_client_leave(fake):
    fake.enqueue(Reply.slow(30, then=Reply.text("too late")))
    async with client_for(fake, timeout=0.2) as client:
        with pytest.raises(anthropic.APITimeoutError):
            await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)

    sent = fake.last_request
    assert await sent.wait_disconnected(timeout=5)
    assert not sent.completed.is_set()
    assert sent.status is None  # not even the status line went out


async def test_closing_a_slow_stream_early_is_seen_as_a_disconnect(fake):
    fake.enqueue(Reply.text("x" * 100, chunks=20, chunk_delay=0.05))
    async with (
        client_for(fake) as client,
        client.messages.stream(model=MODEL, max_tokens=300, messages=HELLO) as stream,
    ):
        async for _ in stream.text_stream:
            break  # leaving the block closes the response

    sent = fake.last_request
    assert await sent.wait_disconnected(timeout=5)
    assert await sent.wait_done(timeout=5)
    assert not sent.completed.is_set()


async def test_stop_cuts_short_a_reply_that_is_being_held_back():
    fake = FakeAnthropic().start()
    try:
        fake.set_default(Reply.slow(60, then=Reply.text("too late")))
        async with client_for(fake, timeout=30) as client:
            call = asyncio.create_task(
                client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
            )
            (held,) = await fake.wait_for_requests_async(1)
            stopper = threading.Thread(target=fake.stop)
            stopper.start()
            await asyncio.to_thread(stopper.join, 5)
            assert not stopper.is_alive(), "stop() hung on a held-back reply"
            with pytest.raises(anthropic.APIConnectionError):
                await call
    finally:
        fake.stop()

    assert held.done.is_set()
    assert not held.completed.is_set() and not held.disconnected.is_set()


async def test_two_hundred_slow_requests_are_served_concurrently(fake):
    # Every handler waits here until all 200 are inside the fake at once: proof of
    # concurrency that does not depend on how busy the machine is.
    all_in = threading.Barrier(200, timeout=30)

    def together(request: RecordedRequest) -> Reply:
        all_in.wait()
        return Reply.slow(0.5, then=Reply.text("ok"))

    fake.set_responder(together)
    async with client_for(fake, timeout=60) as client:
        started = time.monotonic()
        messages = await asyncio.gather(
            *(client.messages.create(model=MODEL, max_tokens=5, messages=HELLO) for _ in range(200))
        )
        elapsed = time.monotonic() - started

    assert len(messages) == len(fake.requests) == 200
    assert fake.errors == []
    # Served one by one, 200 half-second replies would take 100 s. Measured: 1.3 s on an
    # idle 2-core machine, 3.7 s on a loaded one; the bound only has to rule out serial.
    assert elapsed < 20


# --------------------------------------------------------------- responder, count_tokens


async def test_a_responder_answers_each_request_from_its_content(fake):
    def echo(request: RecordedRequest) -> Reply:
        return Reply.json_output({"echo": request.user_text})

    fake.set_responder(echo)
    async with client_for(fake) as client:
        messages = await asyncio.gather(
            *(
                client.messages.create(
                    model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"n{i}"}]
                )
                for i in range(20)
            )
        )

    texts = [m.content[0].text for m in messages if m.content[0].type == "text"]
    assert texts == [json.dumps({"echo": f"n{i}"}) for i in range(20)]


async def test_a_failing_responder_is_reported_and_answered_with_500(fake):
    def broken(request: RecordedRequest) -> Reply:
        raise RuntimeError("bug in the test")

    fake.set_responder(broken)
    async with client_for(fake) as client:
        with pytest.raises(anthropic.InternalServerError, match="bug in the test"):
            await client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)

    assert [str(e) for e in fake.errors] == ["bug in the test"]


async def test_count_tokens_is_estimated_unless_scripted(fake):
    fake.enqueue(Reply.token_count(123), path=COUNT_TOKENS_PATH)
    async with client_for(fake) as client:
        scripted = await client.messages.count_tokens(model=MODEL, messages=HELLO)
        estimated = await client.messages.count_tokens(
            model=MODEL, system="x" * 40, messages=[{"role": "user", "content": "y" * 40}]
        )

    assert scripted.input_tokens == 123
    assert estimated.input_tokens == 20
    assert [r.path for r in fake.requests] == [COUNT_TOKENS_PATH] * 2
    assert fake.queued() == 0  # the messages queue is separate


# --------------------------------------------------------------- raw HTTP


def post(
    fake: FakeAnthropic, path: str, body: object, headers: dict[str, str]
) -> tuple[int, http.client.HTTPMessage, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        connection.request(
            "POST", path, json.dumps(body), {"content-type": "application/json", **headers}
        )
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


VALID = {"model": MODEL, "max_tokens": 5, "messages": HELLO}
VERSION = {"anthropic-version": "2023-06-01"}


def test_x_api_key_is_accepted_like_a_bearer_token(fake):
    fake.enqueue(Reply.text("ok"))
    status, headers, body = post(fake, MESSAGES_PATH, VALID, {"x-api-key": "test-key", **VERSION})

    assert status == 200
    assert body["type"] == "message"
    assert headers["request-id"] == fake.last_request.request_id
    assert fake.last_request.api_key == "test-key"


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error_type", "message"),
    [
        (
            MESSAGES_PATH,
            VALID,
            VERSION,
            401,
            "authentication_error",
            "x-api-key header is required",
        ),
        (
            MESSAGES_PATH,
            VALID,
            {"x-api-key": "nope", **VERSION},
            401,
            "authentication_error",
            "invalid x-api-key",
        ),
        (
            MESSAGES_PATH,
            VALID,
            {"x-api-key": "test-key"},
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ),
        (
            MESSAGES_PATH,
            {"model": MODEL, "messages": HELLO},
            {"x-api-key": "test-key", **VERSION},
            400,
            "invalid_request_error",
            "max_tokens: Field required",
        ),
        (
            "/v1/complete",
            VALID,
            {"x-api-key": "test-key", **VERSION},
            404,
            "not_found_error",
            "Not Found",
        ),
    ],
)
def test_requests_the_api_would_reject_get_its_error_body(
    fake, path, body, headers, status, error_type, message
):
    fake.enqueue(Reply.text("never served"))
    got_status, got_headers, got_body = post(fake, path, body, headers)

    request_id = got_headers["request-id"]
    assert REQUEST_ID.match(request_id)
    assert got_status == status
    assert got_body == {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }
    assert fake.last_request.path == path
    assert fake.queued() == 1
