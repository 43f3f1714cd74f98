"""Each user's quotas: analyses per minute, and provider tokens per day.

Counted per user the analysis is for (a service acting for a user spends that user's
quota), in servicekit.throttle's store: Redis when `AI_REDIS_URL` is set, shared by
every replica; in this process otherwise. An analysis is admitted while the user has
requests left this minute and tokens left today; the tokens a provider call really
used are counted when it answers, so the call that crosses the daily quota still
completes and the next one is refused. Answers from the result cache cost no tokens.

When the store cannot be reached, both quotas fail open: analyses go on uncounted
(the provider slots still bound what one user can take at once), and the outage is
logged once.
"""

from __future__ import annotations

import uuid

from ai_service.domain import Usage
from servicekit.errors import ResourceExhausted
from servicekit.throttle import Limit, Throttle

TOO_MANY_ANALYSES = "TOO_MANY_ANALYSES"
TOKEN_QUOTA_EXHAUSTED = "TOKEN_QUOTA_EXHAUSTED"  # noqa: S105 (a reason, not a secret)
DAY_SECONDS = 86_400


class AnalysisQuotas:
    def __init__(self, throttle: Throttle, *, per_minute: int, tokens_per_day: int) -> None:
        self._throttle = throttle
        self._requests = Limit("analyses-per-minute", per_minute, 60, fail_open=True)
        self._tokens = Limit("provider-tokens-per-day", tokens_per_day, DAY_SECONDS, fail_open=True)

    async def admit(self, user: uuid.UUID) -> None:
        """Count one analysis for `user`; RESOURCE_EXHAUSTED past either quota."""
        key = str(user)
        tokens = await self._throttle.usage(self._tokens, key)
        if tokens.exhausted:
            raise ResourceExhausted(
                f"today's quota of {self._tokens.amount} provider tokens is used up",
                reason=TOKEN_QUOTA_EXHAUSTED,
                retry_after=tokens.retry_after,
            )
        if not await self._throttle.hit(self._requests, key):
            requests = await self._throttle.usage(self._requests, key)
            raise ResourceExhausted(
                f"at most {self._requests.amount} analyses a minute",
                reason=TOO_MANY_ANALYSES,
                retry_after=requests.retry_after,
            )

    async def spent(self, user: uuid.UUID, usage: Usage) -> None:
        """Count the tokens one provider call used for `user`."""
        cost = (
            usage.input_tokens
            + usage.output_tokens
            + usage.cache_read_input_tokens
            + usage.cache_creation_input_tokens
        )
        if cost <= 0:
            return
        key = str(user)
        if not await self._throttle.hit(self._tokens, key, cost=cost):
            # More than is left: what is left is spent, so the next call is refused.
            left = (await self._throttle.usage(self._tokens, key)).remaining
            if left > 0:
                await self._throttle.hit(self._tokens, key, cost=left)
