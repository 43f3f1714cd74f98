"""servicekit.heap: start-up objects frozen, young collections rare."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from servicekit.heap import YOUNG_COLLECTION_EVERY, settle_heap


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_start_up_objects_are_frozen_and_the_young_generation_collected_rarely() -> None:
    _, older, oldest = gc.get_threshold()
    built_at_start = [{"schema": n} for n in range(100)]
    settle_heap()
    assert gc.get_freeze_count() >= len(built_at_start)
    # Only the youngest generation's threshold changes.
    assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, older, oldest)
    assert YOUNG_COLLECTION_EVERY > 700
