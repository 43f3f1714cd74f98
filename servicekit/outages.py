"""An outage of something a process depends on (its database, the rate-limit store),
told as two WARNING lines, when it begins (with its cause) and when it is over (with
how long it lasted and how many calls it failed), never one per failed call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Outage:
    def __init__(
        self,
        what: str,
        *,
        log: logging.Logger,
        began: str,
        over: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`began`: a format of (what, cause); `over`: of (what, seconds, failed calls)."""
        self._what = what
        self._log = log
        self._began = began
        self._over = over
        self._clock = clock
        self._since: float | None = None
        self._failed = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, cause: str) -> None:
        """A call failed because of it; the first one of an outage says so."""
        self._failed += 1
        if self._since is None:
            self._since = self._clock()
            self._log.warning(self._began, self._what, cause)

    def passed(self) -> None:
        """One more call went by uncounted while it lasts (not told)."""
        self._failed += 1

    def ended(self) -> None:
        """A call succeeded: an outage in course is over."""
        if self._since is not None:
            self._log.warning(self._over, self._what, self._clock() - self._since, self._failed)
            self._since = None
            self._failed = 0
