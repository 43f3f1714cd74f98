from __future__ import annotations

import pytest

from servicekit.errors import InvalidArgument
from servicekit.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageTokens, page_size

TOKENS = PageTokens(b"0123456789abcdef0123456789abcdef")


@pytest.mark.parametrize(
    ("requested", "size"),
    [
        (0, DEFAULT_PAGE_SIZE),
        (1, 1),
        (MAX_PAGE_SIZE, MAX_PAGE_SIZE),
        (MAX_PAGE_SIZE + 1, MAX_PAGE_SIZE),
        (2**31 - 1, MAX_PAGE_SIZE),
    ],
)
def test_page_size(requested: int, size: int) -> None:
    assert page_size(requested) == size


def test_negative_page_size_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_size(-5)
    assert caught.value.violations[0].field == "page_size"


def test_tokens_round_trip_their_cursor() -> None:
    token = TOKENS.encode(["2026-11-24T10:00:00.123456+00:00", "abc", 7], "scope-a")
    assert token.isascii() and "=" not in token
    assert TOKENS.decode(token, "scope-a") == ["2026-11-24T10:00:00.123456+00:00", "abc", 7]


def rejection(token: str, scope: str = "scope-a", tokens: PageTokens = TOKENS) -> str:
    with pytest.raises(InvalidArgument) as caught:
        tokens.decode(token, scope)
    violation = caught.value.violations[0]
    assert violation.field == "page_token"
    return violation.description


def test_altered_tokens_are_rejected() -> None:
    token = TOKENS.encode(["x", "y"], "scope-a")
    for position in range(len(token)):
        flipped = "A" if token[position] != "A" else "B"
        altered = token[:position] + flipped + token[position + 1 :]
        if altered != token:
            assert rejection(altered) == "is not a page token from this API"


@pytest.mark.parametrize("garbage", ["", "%%%", "ä", "a", "YQ"])
def test_garbage_is_rejected(garbage: str) -> None:
    assert rejection(garbage) == "is not a page token from this API"


def test_tokens_of_other_parameters_or_keys_are_rejected() -> None:
    token = TOKENS.encode(["x"], "scope-a")
    assert rejection(token, "scope-b") == "was issued for a request with other parameters"
    other = PageTokens(b"another secret of 32 bytes......")
    assert rejection(token, tokens=other) == "is not a page token from this API"


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PageTokens(b"short")
