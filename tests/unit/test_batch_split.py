"""How an operation's texts are cut into provider batches (ai_service.claude_batches)."""

from __future__ import annotations

import json
from typing import Any

from ai_service.claude_batches import MAX_BYTES, MAX_REQUESTS, custom_id, position_of, split


def requests(count: int, size: int = 10) -> list[tuple[int, dict[str, Any]]]:
    return [(i, {"custom_id": custom_id(i), "params": {"x": "y" * size}}) for i in range(count)]


def test_the_api_limits_are_the_documented_ones() -> None:
    assert (MAX_REQUESTS, MAX_BYTES) == (100_000, 256_000_000)


def test_within_the_limits_everything_is_one_batch_in_order() -> None:
    chunks = list(split(requests(5)))
    assert [[p for p, _ in c] for c in chunks] == [[0, 1, 2, 3, 4]]


def test_a_batch_is_cut_at_the_request_count() -> None:
    chunks = list(split(requests(5), max_requests=2))
    assert [[p for p, _ in c] for c in chunks] == [[0, 1], [2, 3], [4]]


def test_a_batch_is_cut_before_its_body_would_pass_the_byte_limit() -> None:
    one = len(json.dumps(requests(1, size=1000)[0][1], separators=(",", ":"))) + 1
    limit = 64 + 2 * one  # the envelope and exactly two requests
    chunks = list(split(requests(5, size=1000), max_bytes=limit))
    assert [len(c) for c in chunks] == [2, 2, 1]
    for chunk in chunks:
        body = json.dumps({"requests": [r for _, r in chunk]}, separators=(",", ":"))
        assert len(body.encode()) <= limit


def test_custom_ids_name_positions_and_nothing_else() -> None:
    assert [position_of(custom_id(i)) for i in (0, 7, 999)] == [0, 7, 999]
    assert [position_of(c) for c in ("x1", "t", "t-1", "7")] == [None] * 4
