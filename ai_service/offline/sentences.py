"""Sentence spans of a text: pysbd where its cost is bounded, a plain rule beyond that.

pysbd's cost grows faster than the text (its processor is superlinear in sentences per call,
and its span matching is quadratic), up to 31 s for 50 KB of "a. a. a."; so it gets pieces of
at most `_PIECE_CHARS` and, per text, at most `_PYSBD_BUDGET_CHARS`, and the rest of a long
text is split on sentence-final punctuation. Sentences longer than `MAX_SENTENCE_CHARS` are cut
at word boundaries so that a summary of an unpunctuated text stays short.
"""

from __future__ import annotations

import re
import warnings

from ai_service.offline.addresses import address_spans

# pysbd 0.3.4's sources hold invalid escape sequences ("\s", "\."): compiling them without a
# bytecode cache warns, and under `-W error` (as the test suite runs) the import would fail.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    from pysbd.languages import Language  # type: ignore[import-untyped]
    from pysbd.processor import Processor  # type: ignore[import-untyped]

MAX_SENTENCE_CHARS = 400
_PIECE_CHARS = 1_000
_PYSBD_BUDGET_CHARS = 6_000

_ENGLISH = Language.get_language_code("en")
_PARAGRAPHS = re.compile(r"\n\s*\n")
_TERMINATORS = re.compile(r"[.!?;\n\u3002\uff01\uff1f]")
# A sentence end for the plain rule: terminal punctuation, closing quotes or brackets, space.
_PLAIN_BOUNDARY = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])[\"'\u201d\u2019)\]]*\s+|\n+")
_SPACE = re.compile(r"\s")

Span = tuple[int, int]


def split(text: str) -> list[Span]:
    """Non-empty, stripped, ordered, non-overlapping (start, end) spans of `text`."""
    spans: list[Span] = []
    budget = _PYSBD_BUDGET_CHARS
    for start, end in _pieces(text):
        piece = text[start:end]
        if budget > 0 and _needs_segmenter(piece):
            budget -= len(piece)
            found = _segment(piece)
        else:
            found = _plain(piece)
        spans.extend((start + s, start + e) for s, e in found)
    spans = _join_split_addresses(text, spans)
    return [cut for span in spans for cut in _cut_long(text, _strip(text, span))]


def _join_split_addresses(text: str, spans: list[Span]) -> list[Span]:
    """Rejoin sentences split inside a URL or e-mail address (pysbd splits at its "?" or ".")."""
    inside = address_spans(text)
    if not inside:
        return spans
    joined = [spans[0]]
    address = 0
    for start, end in spans[1:]:
        while address < len(inside) and inside[address][1] <= start:
            address += 1
        if address < len(inside) and inside[address][0] < start:
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    return joined


def _pieces(text: str) -> list[Span]:
    """Paragraphs, further cut into pieces of at most `_PIECE_CHARS` at likely sentence ends."""
    pieces: list[Span] = []
    start = 0
    for separator in (*_PARAGRAPHS.finditer(text), None):
        end = separator.start() if separator else len(text)
        while end - start > _PIECE_CHARS:
            cut = _last_boundary(text, start, start + _PIECE_CHARS)
            pieces.append((start, cut))
            start = cut
        if text[start:end].strip():
            pieces.append((start, end))
        start = separator.end() if separator else end
    return pieces


def _last_boundary(text: str, start: int, limit: int) -> int:
    window = text[start:limit]
    boundaries = [m.end() for m in _PLAIN_BOUNDARY.finditer(window)]
    if boundaries and boundaries[-1] > len(window) // 2:
        return start + boundaries[-1]
    spaces = [m.end() for m in _SPACE.finditer(window)]
    if spaces and spaces[-1] > len(window) // 2:
        return start + spaces[-1]
    return limit


def _needs_segmenter(piece: str) -> bool:
    """Whether a terminator occurs before the piece's last few characters."""
    return _TERMINATORS.search(piece.rstrip()[:-3]) is not None


def _segment(piece: str) -> list[Span]:
    try:
        sentences: list[str] = Processor(piece, _ENGLISH, char_span=False).process()
    except Exception:  # noqa: BLE001 - a third-party rule engine; the plain rule is the fallback
        return _plain(piece)
    spans: list[Span] = []
    position = 0
    for sentence in sentences:
        stripped = sentence.strip()
        found = piece.find(stripped, position) if stripped else -1
        if found < 0:
            # pysbd may alter a sentence's text; the gap is filled in below.
            continue
        if piece[position:found].strip():
            spans.append((position, found))
        spans.append((found, found + len(stripped)))
        position = found + len(stripped)
    if piece[position:].strip():
        spans.append((position, len(piece)))
    return spans


def _plain(piece: str) -> list[Span]:
    spans: list[Span] = []
    start = 0
    for boundary in _PLAIN_BOUNDARY.finditer(piece):
        if piece[start : boundary.start()].strip():
            spans.append((start, boundary.start()))
        start = boundary.end()
    if piece[start:].strip():
        spans.append((start, len(piece)))
    return spans


def _strip(text: str, span: Span) -> Span:
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _cut_long(text: str, span: Span) -> list[Span]:
    start, end = span
    if start == end:
        return []
    cuts: list[Span] = []
    while end - start > MAX_SENTENCE_CHARS:
        limit = start + MAX_SENTENCE_CHARS
        spaces = [m.start() for m in _SPACE.finditer(text, start, limit)]
        cut = spaces[-1] if spaces and spaces[-1] > start else limit
        cuts.append(_strip(text, (start, cut)))
        start = _strip(text, (cut, end))[0]
    cuts.append((start, end))
    return [c for c in cuts if c[0] < c[1]]
