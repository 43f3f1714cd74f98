"""Settings of the ai service, from `AI_*` environment variables.

The Anthropic SDK reads `ANTHROPIC_API_KEY` and `ANTHROPIC_BASE_URL` itself; only the
key's presence is looked at here, to pick the provider.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from servicekit.settings import (
    ServiceSettings,
    ThrottleSettings,
    TokenCheckSettings,
    UpstreamTlsSettings,
)


class AiSettings(ServiceSettings, TokenCheckSettings, UpstreamTlsSettings, ThrottleSettings):
    model_config = SettingsConfigDict(env_prefix="AI_", extra="ignore", frozen=True)

    addr: str = "127.0.0.1:50052"
    database_url: str = "sqlite+aiosqlite:///./data/ai.db"
    # The users service: its keys verify every call's token, and it says whether the
    # caller's session and account are live. Any gRPC target (`dns:///users:50051`).
    users_target: str = Field(default="127.0.0.1:50051", min_length=1)
    users_deadline_seconds: float = Field(default=2.0, gt=0)

    # auto: Claude when ANTHROPIC_API_KEY is set, else the offline analyzer.
    provider: Literal["auto", "anthropic", "offline"] = "auto"
    model: str = Field(default="claude-sonnet-5-5", min_length=1)
    # On a transient provider failure (overloaded, rate limited, down, slow), answer
    # with the offline analyzer instead of failing; the result's `model` says so.
    fallback: Literal["none", "offline"] = "none"
    max_text_chars: int = Field(default=50_000, ge=1)
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

    # host:port to serve Prometheus /metrics on; unset: no metrics endpoint.
    metrics_addr: str | None = None

    def production_problems(self) -> list[str]:
        return [
            *super().production_problems(),
            *self.token_problems(),
            *self.upstream_problems("users_target"),
        ]

    def resolved_provider(self) -> Literal["anthropic", "offline"]:
        if self.provider == "auto":
            return "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else "offline"
        return self.provider
