"""Where a text holds web addresses and e-mail addresses, found in linear time."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\S+")


def address_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each whitespace-separated token that is a URL or an e-mail address.

    Token by token on purpose: a regex such as `\\S+@\\S+` rescans a long token from every
    start, which took 3 s on 50,000 characters without a space.
    """
    found = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[:8].lower().startswith(("http://", "https://", "www.")):
            found.append(match.span())
        else:
            at = token.find("@")
            if at > 0 and "." in token[at:]:
                found.append(match.span())
    return found
