"""Settings of the ai service, from `AI_*` environment variables.

The Anthropic key and base URL keep the SDK's own names (`ANTHROPIC_API_KEY`,
`ANTHROPIC_BASE_URL`) but are read here, like every other setting, and handed to the
one client the service builds; nothing else reads them from the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from servicekit import production
from servicekit.settings import (
    OptionalSecret,
    OptionalStr,
    ServiceSettings,
    ThrottleSettings,
    TokenCheckSettings,
    UpstreamTlsSettings,
)


def _comma_list(value: object) -> object:
    """`AI_MODELS=a, b` as the tuple ("a", "b"); blank items are dropped."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


ModelNames = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]

DEFAULT_MODEL = "claude-sonnet-5-5"


class AiSettings(ServiceSettings, TokenCheckSettings, UpstreamTlsSettings, ThrottleSettings):
    model_config = SettingsConfigDict(
        env_prefix="AI_", extra="ignore", frozen=True, populate_by_name=True
    )

    addr: str = "127.0.0.1:50052"
    database_url: str = "sqlite+aiosqlite:///./data/ai.db"
    # The users service: its keys verify every call's token, and it says whether the
    # caller's session and account are live. Any gRPC target (`dns:///users:50051`).
    users_target: str = Field(default="127.0.0.1:50051", min_length=1)
    users_deadline_seconds: float = Field(default=2.0, gt=0)

    # auto: Claude when ANTHROPIC_API_KEY is set, else the offline analyzer.
    provider: Literal["auto", "anthropic", "offline"] = "auto"
    anthropic_api_key: OptionalSecret = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    # Unset: the SDK's own default, the public API.
    anthropic_base_url: OptionalStr = Field(default=None, validation_alias="ANTHROPIC_BASE_URL")
    # The model chain, first is primary: a model that is overloaded or unavailable
    # hands the call to the next one, within the same deadline (ai_service.chain).
    models: ModelNames = ()
    # The single model of earlier versions; still honoured when AI_MODELS is unset.
    model: OptionalStr = None
    # After the last model failed transiently (overloaded, rate limited, down, slow),
    # answer with the offline analyzer instead of failing; the result's `model` says so.
    fallback: Literal["none", "offline"] = "none"
    max_text_chars: int = Field(default=50_000, ge=1)
    # Input tokens one analysis may send (prompt and text); a text that would need
    # more, or more than the model's context window holds besides the answer, is
    # INVALID_ARGUMENT before any paid call (ai_service.budget).
    # The default lets an ASCII text of AI_MAX_TEXT_CHARS through on the byte bound
    # alone, so only multi-byte texts that long are ever counted.
    max_input_tokens: int = Field(default=60_000, ge=1)
    context_window_tokens: int = Field(default=200_000, ge=1)
    # USD per million tokens, and the multipliers of cache writes (5-minute TTL) and
    # reads; the cost metric and the README's figures use them (ai_service.pricing).
    price_input_per_mtok: float = Field(default=3.0, ge=0)
    price_output_per_mtok: float = Field(default=15.0, ge=0)
    price_cache_write_multiplier: float = Field(default=1.25, ge=0)
    price_cache_read_multiplier: float = Field(default=0.1, ge=0)
    # The analysis JSON is a few hundred tokens; more only pays for runaway output.
    max_output_tokens: int = Field(default=1024, ge=64)
    # Calls to the provider in flight at once; more wait, within their deadline.
    max_concurrency: int = Field(default=16, ge=1)
    # Of those, how many one user's calls may hold, so that one user cannot starve the
    # rest; a user's further calls wait for their own to finish.
    max_concurrency_per_user: int = Field(default=4, ge=1)
    # Each user's quotas (per user the analysis is for; ai_service.quotas): analyses a
    # minute, cached answers included, and provider tokens a day, input and output.
    analyses_per_minute: int = Field(default=30, ge=1)
    provider_tokens_per_day: int = Field(default=500_000, ge=1)
    # Per-attempt HTTP timeout and SDK retries; the call's gRPC deadline bounds both.
    anthropic_timeout_seconds: float = Field(default=60.0, gt=0)
    anthropic_max_retries: int = Field(default=2, ge=0)
    # The deadline of calls that come without one.
    default_deadline_seconds: float = Field(default=120.0, gt=0)
    # Identical requests (same normalised text, model, prompt) within this window are
    # answered from the stored analysis; 0 turns the result cache off.
    cache_ttl_seconds: float = Field(default=3600.0, ge=0)

    # BatchAnalyzeTexts (ai_service.batches): at most this many texts per request.
    batch_max_texts: int = Field(default=1000, ge=1, le=100_000)
    # A provider batch is first polled this long after it was sent, then at twice the
    # previous interval, up to the maximum.
    batch_poll_seconds: float = Field(default=10.0, gt=0)
    batch_poll_max_seconds: float = Field(default=300.0, gt=0)
    # A replica works on an operation while it holds its lease, renewed every third of
    # this; a dead replica's operations are taken over once their lease has run out.
    batch_lease_seconds: float = Field(default=60.0, gt=0)
    # How often each replica looks for operations that no live lease holds.
    batch_scan_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_model_setting(self) -> AiSettings:
        if self.models and self.model is not None and self.models[:1] != (self.model,):
            raise ValueError(
                "AI_MODEL and AI_MODELS disagree: set only AI_MODELS (AI_MODEL is its "
                "one-model form of earlier versions)"
            )
        return self

    def model_chain(self) -> tuple[str, ...]:
        """The models to ask, in order: AI_MODELS, else AI_MODEL, else the default."""
        return self.models or (self.model or DEFAULT_MODEL,)

    def production_problems(self) -> list[str]:
        problems = [
            *super().production_problems(),
            *self.token_problems(),
            *self.upstream_problems("users_target"),
        ]
        key = self.anthropic_api_key
        if key is not None and production.is_public(key.get_secret_value()):
            problems.append("ANTHROPIC_API_KEY is a value published in the repository")
        if self.resolved_provider() == "anthropic" and key is None:
            problems.append("AI_PROVIDER=anthropic needs ANTHROPIC_API_KEY to be set")
        return problems

    def resolved_provider(self) -> Literal["anthropic", "offline"]:
        if self.provider == "auto":
            return "anthropic" if self.anthropic_api_key is not None else "offline"
        return self.provider
