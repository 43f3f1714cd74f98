"""Whether a text fits what one analysis may send, decided before any paid call.

The limit is the smaller of AI_MAX_INPUT_TOKENS and what the model's context window
holds besides the answer. Two cheap bounds decide most texts without asking anyone:
a token covers at least one UTF-8 byte, so the prompt's and the text's bytes bound
their tokens from above; and no token covers more than MAX_CHARS_PER_TOKEN characters,
which bounds them from below. Only a text between the two is counted exactly with the
provider's `count_tokens` (free, but a round trip).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ai_service.prompt import user_message
from servicekit.errors import InvalidArgument, ServiceError

log = logging.getLogger(__name__)

TEXT_TOO_MANY_TOKENS = "TEXT_TOO_MANY_TOKENS"
# Longer tokens exist only for runs of one character (spaces, dashes); 16 is above any
# in Claude's vocabularies as far as published.
MAX_CHARS_PER_TOKEN = 16

# The exact input tokens of an analysis request for `text`, before loop time `deadline`.
TokenCounter = Callable[[str, float], Awaitable[int]]


class InputBudget:
    def __init__(self, *, limit: int, prompt_bytes: int, count: TokenCounter) -> None:
        """`prompt_bytes`: the UTF-8 size of everything sent besides the user's message
        (system prompt, output schema)."""
        self.limit = limit
        self._prompt_bytes = prompt_bytes
        self._count = count

    async def check(self, text: str, deadline: float) -> None:
        """INVALID_ARGUMENT on `text` when the request for it would exceed the limit."""
        message = user_message(text)
        if self._prompt_bytes + len(message.encode()) <= self.limit:
            return
        if len(message) // MAX_CHARS_PER_TOKEN > self.limit:
            raise self._too_long(f"at least {len(message) // MAX_CHARS_PER_TOKEN}")
        try:
            tokens = await self._count(text, deadline)
        except ServiceError as error:
            # The model itself still refuses what does not fit its context; the budget
            # is not worth failing a call the model might answer.
            log.warning("could not count the text's tokens (%s); sending it uncounted", error)
            return
        if tokens > self.limit:
            raise self._too_long(str(tokens))

    def _too_long(self, tokens: str) -> InvalidArgument:
        return InvalidArgument.field(
            "text",
            f"needs {tokens} input tokens with the prompt; at most {self.limit} are allowed",
            reason=TEXT_TOO_MANY_TOKENS,
        )
