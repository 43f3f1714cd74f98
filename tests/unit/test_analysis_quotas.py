"""ai_service.quotas: analyses a minute and provider tokens a day, per user."""

from __future__ import annotations

import uuid

import pytest

from ai_service.domain import Usage
from ai_service.quotas import TOKEN_QUOTA_EXHAUSTED, TOO_MANY_ANALYSES, AnalysisQuotas
from servicekit.errors import ResourceExhausted
from servicekit.throttle import Throttle

ADA, BOB = uuid.uuid4(), uuid.uuid4()


def quotas(per_minute: int = 100, tokens_per_day: int = 1_000) -> AnalysisQuotas:
    return AnalysisQuotas(
        Throttle.in_process(), per_minute=per_minute, tokens_per_day=tokens_per_day
    )


async def test_analyses_past_the_minutes_quota_are_refused_for_that_user_only() -> None:
    limited = quotas(per_minute=2)
    await limited.admit(ADA)
    await limited.admit(ADA)
    with pytest.raises(ResourceExhausted) as refused:
        await limited.admit(ADA)
    assert refused.value.reason == TOO_MANY_ANALYSES
    assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 60
    await limited.admit(BOB)


async def test_the_call_that_crosses_the_token_quota_completes_and_the_next_is_refused() -> None:
    limited = quotas(tokens_per_day=100)
    await limited.admit(ADA)
    await limited.spent(ADA, Usage(input_tokens=50, output_tokens=20))
    await limited.admit(ADA)  # 30 left: admitted
    await limited.spent(ADA, Usage(input_tokens=50, output_tokens=20))  # overshoots
    with pytest.raises(ResourceExhausted) as refused:
        await limited.admit(ADA)
    assert refused.value.reason == TOKEN_QUOTA_EXHAUSTED
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    await limited.admit(BOB)


async def test_cached_answers_cost_no_tokens() -> None:
    limited = quotas(tokens_per_day=1)
    await limited.spent(ADA, Usage())
    await limited.admit(ADA)
