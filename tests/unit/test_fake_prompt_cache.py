"""The fake's prompt cache and per-model defaults, through the real SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.support.fake_anthropic import (
    COUNT_TOKENS_PATH,
    MESSAGES_PATH,
    FakeAnthropic,
    Reply,
    Usage,
    estimate_input_tokens,
)

SONNET = "claude-sonnet-5-5"
HAIKU = "claude-haiku-5-0"
# 1,100 estimated tokens: cacheable for Sonnet-class models, not for Haiku-class ones.
LONG_SYSTEM = "x" * 4400


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeAnthropic]:
    with FakeAnthropic(clock=clock) as server:
        server.set_default(Reply.text("ok"))
        yield server


def system(text: str = LONG_SYSTEM, **marker: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", **marker}}]


async def ask(
    fake: FakeAnthropic, text: str = "hello", model: str = SONNET, **params: Any
) -> anthropic.types.Usage:
    params.setdefault("system", system())
    async with anthropic.AsyncAnthropic(
        base_url=fake.url, api_key=fake.api_key, max_retries=0
    ) as client:
        message: anthropic.types.Message = await client.messages.create(
            model=model, max_tokens=50, messages=[{"role": "user", "content": text}], **params
        )
    return message.usage


async def test_the_first_call_writes_the_prefix_and_later_ones_read_it(fake: FakeAnthropic) -> None:
    first = await ask(fake, "one")
    second = await ask(fake, "a different text")
    prefix = 1100
    assert (first.cache_creation_input_tokens, first.cache_read_input_tokens) == (prefix, 0)
    assert first.cache_creation is not None
    assert first.cache_creation.ephemeral_5m_input_tokens == prefix
    assert (second.cache_creation_input_tokens, second.cache_read_input_tokens) == (0, prefix)
    # The three counts add up to what the request holds (they are additive).
    body = fake.last_request.json
    assert second.input_tokens + prefix == estimate_input_tokens(body)


async def test_a_prefix_below_the_models_minimum_is_never_cached(fake: FakeAnthropic) -> None:
    for _ in range(2):
        haiku = await ask(fake, model=HAIKU)
        short = await ask(fake, system=system("y" * 4000))
        for usage in (haiku, short):
            assert usage.cache_creation_input_tokens == 0
            assert usage.cache_read_input_tokens == 0
    assert (await ask(fake, model=HAIKU, system=system("z" * 8200))).cache_creation_input_tokens


async def test_any_change_before_the_breakpoint_misses(fake: FakeAnthropic) -> None:
    await ask(fake)
    changed = await ask(fake, system=system(LONG_SYSTEM + "!"))
    other_model = await ask(fake, model="claude-opus-5-1")
    no_marker = await ask(fake, system=[{"type": "text", "text": LONG_SYSTEM}])
    assert changed.cache_read_input_tokens == 0 and changed.cache_creation_input_tokens
    assert other_model.cache_read_input_tokens == 0
    assert (no_marker.cache_read_input_tokens, no_marker.cache_creation_input_tokens) == (0, 0)


async def test_entries_expire_after_their_ttl_and_reads_refresh_it(
    fake: FakeAnthropic, clock: Clock
) -> None:
    await ask(fake)
    clock.now += 299
    assert (await ask(fake)).cache_read_input_tokens == 1100  # refreshed: 300 s from now
    clock.now += 299
    assert (await ask(fake)).cache_read_input_tokens == 1100
    clock.now += 301
    expired = await ask(fake)
    assert (expired.cache_read_input_tokens, expired.cache_creation_input_tokens) == (0, 1100)

    hour = await ask(fake, system=system(ttl="1h"))
    assert hour.cache_creation is not None
    assert hour.cache_creation.ephemeral_1h_input_tokens == 1100
    clock.now += 3000
    assert (await ask(fake, system=system(ttl="1h"))).cache_read_input_tokens == 1100


async def test_the_longest_cached_breakpoint_is_read_and_the_rest_written(
    fake: FakeAnthropic,
) -> None:
    blocks = [*system(), *system("w" * 4400)]
    await ask(fake)
    both = await ask(fake, system=blocks)
    assert (both.cache_read_input_tokens, both.cache_creation_input_tokens) == (1100, 1100)
    assert (await ask(fake, system=blocks)).cache_read_input_tokens == 2200


async def test_top_level_cache_control_marks_the_last_block(fake: FakeAnthropic) -> None:
    text = "t" * 4400
    plain = [{"type": "text", "text": LONG_SYSTEM}]
    first = await ask(fake, text, system=plain, cache_control={"type": "ephemeral"})
    again = await ask(fake, text, system=plain, cache_control={"type": "ephemeral"})
    assert first.cache_creation_input_tokens
    assert again.cache_read_input_tokens == first.cache_creation_input_tokens


async def test_scripted_usage_is_reported_as_given(fake: FakeAnthropic) -> None:
    fake.enqueue(Reply.text("ok", usage=Usage(input_tokens=5, output_tokens=1)))
    usage = await ask(fake)
    assert (usage.input_tokens, usage.cache_creation_input_tokens) == (5, 0)


async def test_a_default_for_one_model_overloads_only_that_model(fake: FakeAnthropic) -> None:
    fake.set_default(Reply.overloaded(), model="claude-a")
    with pytest.raises(anthropic.OverloadedError):
        await ask(fake, model="claude-a")
    assert (await ask(fake, model="claude-b")).output_tokens == 1
    fake.set_default(None, model="claude-a")
    assert (await ask(fake, model="claude-a")).output_tokens == 1


async def test_count_tokens_counts_what_the_message_would_send(fake: FakeAnthropic) -> None:
    params: dict[str, Any] = {
        "model": SONNET,
        "system": system(),
        "messages": [{"role": "user", "content": "count me"}],
    }
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key=fake.api_key) as client:
        counted = await client.messages.count_tokens(**params)
        usage = await ask(fake, "count me")
    assert fake.requests_to(COUNT_TOKENS_PATH)[0].json["model"] == SONNET
    assert counted.input_tokens == estimate_input_tokens(fake.requests_to(MESSAGES_PATH)[0].json)
    cache = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    total = usage.input_tokens + cache
    assert counted.input_tokens == total
