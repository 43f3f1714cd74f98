"""The ai service's cost settings and rules: prices, the model chain's settings, the
Anthropic key, the input budget's cheap bounds, the cacheable prompt."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from ai_service.budget import MAX_CHARS_PER_TOKEN, TEXT_TOO_MANY_TOKENS, InputBudget
from ai_service.domain import Usage
from ai_service.pricing import Prices
from ai_service.prompt import OUTPUT_SCHEMA, SYSTEM_PROMPT, AnalysisOutput
from ai_service.prompt_examples import EXAMPLES
from ai_service.settings import AiSettings
from servicekit import production
from servicekit.errors import InvalidArgument, ServiceError, Unavailable
from servicekit.settings import SettingsError, load_settings
from tests.support.fake_anthropic import MIN_CACHEABLE_TOKENS_HAIKU, estimate_input_tokens

# --- prices -------------------------------------------------------------------------------


def test_cache_tokens_are_priced_on_top_of_input_at_their_multipliers() -> None:
    prices = Prices(input_per_mtok=3.0, output_per_mtok=15.0)
    first = Usage(input_tokens=100, output_tokens=80, cache_creation_input_tokens=2000)
    later = Usage(input_tokens=100, output_tokens=80, cache_read_input_tokens=2000)
    # (100 + 2000 * 1.25) * 3 + 80 * 15, per million.
    assert prices.cost(first) == pytest.approx(0.009)
    # (100 + 2000 * 0.1) * 3 + 80 * 15, per million.
    assert prices.cost(later) == pytest.approx(0.0021)
    # Without the cache both would have paid every input token at the input price.
    assert prices.cost_uncached(first) == prices.cost_uncached(later) == pytest.approx(0.0075)


def test_prices_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_PRICE_INPUT_PER_MTOK", "1")
    monkeypatch.setenv("AI_PRICE_CACHE_READ_MULTIPLIER", "0.5")
    prices = Prices.from_settings(load_settings(AiSettings))
    assert prices.cost(Usage(cache_read_input_tokens=1_000_000)) == pytest.approx(0.5)


# --- the model chain's settings -------------------------------------------------------------


def test_ai_models_is_a_comma_list_and_ai_model_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(AiSettings).model_chain() == ("claude-sonnet-5-5",)
    monkeypatch.setenv("AI_MODEL", "claude-old")
    assert load_settings(AiSettings).model_chain() == ("claude-old",)
    monkeypatch.delenv("AI_MODEL")
    monkeypatch.setenv("AI_MODELS", " claude-a , claude-b,, ")
    assert load_settings(AiSettings).model_chain() == ("claude-a", "claude-b")
    # AI_MODEL naming the same primary is harmless; another one is a contradiction.
    monkeypatch.setenv("AI_MODEL", "claude-a")
    assert load_settings(AiSettings).model_chain() == ("claude-a", "claude-b")
    monkeypatch.setenv("AI_MODEL", "claude-z")
    with pytest.raises(SettingsError, match="AI_MODEL and AI_MODELS disagree"):
        load_settings(AiSettings)


# --- the key --------------------------------------------------------------------------------


def test_the_anthropic_key_is_a_secret_read_by_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert load_settings(AiSettings).resolved_provider() == "offline"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real-looking")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    settings = load_settings(AiSettings)
    assert isinstance(settings.anthropic_api_key, SecretStr)
    assert "sk-ant" not in repr(settings) and "sk-ant" not in str(settings.model_dump())
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-real-looking"
    assert settings.anthropic_base_url == "http://127.0.0.1:9"
    assert settings.resolved_provider() == "anthropic"
    # Blank, as compose passes an unset variable: no key.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "")
    assert load_settings(AiSettings).resolved_provider() == "offline"


def test_production_refuses_a_missing_or_published_key(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = AiSettings(provider="anthropic", anthropic_api_key=None)
    assert "AI_PROVIDER=anthropic needs ANTHROPIC_API_KEY to be set" in (
        missing.production_problems()
    )
    published = AiSettings(anthropic_api_key=SecretStr(production.PLACEHOLDER))
    assert "ANTHROPIC_API_KEY is a value published in the repository" in (
        published.production_problems()
    )
    fine = AiSettings(anthropic_api_key=SecretStr("sk-ant-unpublished"))
    assert not any("ANTHROPIC" in p for p in fine.production_problems())


# --- the input budget's bounds --------------------------------------------------------------


class Counter:
    def __init__(self, tokens: int | ServiceError) -> None:
        self.tokens = tokens
        self.texts: list[str] = []

    async def __call__(self, text: str, deadline: float) -> int:
        self.texts.append(text)
        if isinstance(self.tokens, ServiceError):
            raise self.tokens
        return self.tokens


async def test_a_text_surely_within_the_budget_is_not_counted() -> None:
    counter = Counter(10**9)
    budget = InputBudget(limit=1000, prompt_bytes=500, count=counter)
    await budget.check("x" * 400, deadline=0)
    assert counter.texts == []


async def test_a_text_surely_over_the_budget_is_refused_without_counting() -> None:
    counter = Counter(1)
    budget = InputBudget(limit=1000, prompt_bytes=500, count=counter)
    with pytest.raises(InvalidArgument) as refused:
        await budget.check("x" * (1001 * MAX_CHARS_PER_TOKEN), deadline=0)
    assert counter.texts == []
    assert refused.value.reason == TEXT_TOO_MANY_TOKENS
    assert [v.field for v in refused.value.violations] == ["text"]


async def test_a_text_near_the_limit_is_counted_exactly() -> None:
    text = "y" * 2000
    over, under = Counter(1001), Counter(1000)
    with pytest.raises(InvalidArgument, match="needs 1001 input tokens"):
        await InputBudget(limit=1000, prompt_bytes=500, count=over).check(text, deadline=0)
    await InputBudget(limit=1000, prompt_bytes=500, count=under).check(text, deadline=0)
    assert over.texts == under.texts == [text]


async def test_a_count_that_fails_lets_the_text_through() -> None:
    failing = Counter(Unavailable("down", reason="PROVIDER_UNAVAILABLE"))
    await InputBudget(limit=1000, prompt_bytes=500, count=failing).check("z" * 2000, deadline=0)
    assert len(failing.texts) == 1


# --- the cacheable prompt -------------------------------------------------------------------


def test_every_worked_example_passes_the_output_schema() -> None:
    for _text, answer in EXAMPLES:
        AnalysisOutput.model_validate_json(json.dumps(answer))
        assert json.dumps(answer, ensure_ascii=False) in SYSTEM_PROMPT


def test_the_system_prompt_is_long_enough_to_be_cached_by_every_model_class() -> None:
    # As the fake estimates (about four characters a token); Claude's tokenizer counts
    # English and JSON at fewer characters a token, so the real prefix is longer still.
    tokens = estimate_input_tokens({"system": SYSTEM_PROMPT})
    assert tokens >= MIN_CACHEABLE_TOKENS_HAIKU
    # The schema is sent on every call too, but the cache's prefix is the system prompt.
    assert len(json.dumps(OUTPUT_SCHEMA)) < len(SYSTEM_PROMPT) / 10
