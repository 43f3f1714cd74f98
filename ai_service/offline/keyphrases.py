"""RAKE key phrases (Rose et al. 2010): runs of content words, ranked by degree over frequency."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ai_service.offline.addresses import address_spans
from ai_service.offline.stopwords import STOPWORDS

MAX_PHRASES = 5
_MAX_WORDS = 4
_MAX_CHARS = 60
_WORD = re.compile(r"[^\W_](?:[\w'\u2019-]*[^\W_])?")
# Handles and HTML entities are not phrases; like addresses, they become breaks.
_NOT_PROSE = re.compile(r"@\w+|&#?\w+;")


@dataclass(slots=True)
class _Candidate:
    surface: str  # as first written in the text
    words: tuple[str, ...]  # lowercased
    first: int  # character offset of the first occurrence


def key_phrases(text: str, sentence_spans: Sequence[tuple[int, int]]) -> tuple[str, ...]:
    """Up to `MAX_PHRASES` phrases of the text, best first, none inside another."""
    candidates: dict[tuple[str, ...], _Candidate] = {}
    occurrences: list[tuple[str, ...]] = []
    for start, end in sentence_spans:
        for phrase_start, phrase_end, words in _phrases(text, start, end):
            occurrences.append(words)
            if words not in candidates:
                surface = text[phrase_start:phrase_end]
                candidates[words] = _Candidate(surface, words, phrase_start)
    frequency: dict[str, int] = {}
    degree: dict[str, int] = {}
    for words in occurrences:
        for word in words:
            frequency[word] = frequency.get(word, 0) + 1
            degree[word] = degree.get(word, 0) + len(words)
    ranked = sorted(
        candidates.values(),
        key=lambda c: (-sum(degree[w] / frequency[w] for w in c.words), c.first),
    )
    chosen: list[_Candidate] = []
    for candidate in ranked:
        if not any(_overlaps(candidate.words, c.words) for c in chosen):
            chosen.append(candidate)
            if len(chosen) == MAX_PHRASES:
                break
    return tuple(c.surface for c in chosen)


def _phrases(text: str, start: int, end: int) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, words) of each candidate phrase in text[start:end]."""
    sentence = _NOT_PROSE.sub(lambda m: "|" * len(m.group()), text[start:end])
    for a, b in address_spans(sentence):
        sentence = sentence[:a] + "|" * (b - a) + sentence[b:]
    found: list[tuple[int, int, tuple[str, ...]]] = []
    run: list[re.Match[str]] = []

    def close() -> None:
        if run:
            words = tuple(m.group().lower() for m in run)
            first, last = run[0].start(), run[-1].end()
            if _acceptable(words, last - first):
                found.append((start + first, start + last, words))
            run.clear()

    previous_end = 0
    for match in _WORD.finditer(sentence):
        gap = sentence[previous_end : match.start()]
        if gap.strip() or match.group().lower() in STOPWORDS:
            close()
        if match.group().lower() not in STOPWORDS:
            run.append(match)
        previous_end = match.end()
    close()
    return found


def _acceptable(words: tuple[str, ...], length: int) -> bool:
    if len(words) > _MAX_WORDS or length > _MAX_CHARS:
        return False
    if not any(c.isalpha() for w in words for c in w):
        return False
    return length >= 3


def _overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    shorter, longer = sorted((a, b), key=len)
    size = len(shorter)
    return any(longer[i : i + size] == shorter for i in range(len(longer) - size + 1))
