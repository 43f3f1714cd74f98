"""Extractive TextRank summary (Mihalcea & Tarau 2004): the most central sentences, in order."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ai_service.offline.stopwords import STOPWORDS

# TextRank's work grows with the square of the sentences; beyond this many, evenly spaced
# sentences across the whole text stand for it.
MAX_CANDIDATES = 100
_DAMPING = 0.85
_ITERATIONS = 50
_TOLERANCE = 1e-6
_WORD = re.compile(r"[^\W_]+")


def sentence_count_for(total: int) -> int:
    """How many sentences the summary keeps: one for short texts, up to five for long ones."""
    for limit, count in ((3, 1), (8, 2), (20, 3), (50, 4)):
        if total <= limit:
            return count
    return 5


def choose(text: str, sentence_spans: Sequence[tuple[int, int]]) -> list[str]:
    """The summary's sentences, in their original order."""
    total = len(sentence_spans)
    if total == 0:
        return []
    if total > MAX_CANDIDATES:
        step = (total - 1) / (MAX_CANDIDATES - 1)
        candidates = [sentence_spans[round(i * step)] for i in range(MAX_CANDIDATES)]
    else:
        candidates = list(sentence_spans)
    ranks = _textrank([_content_words(text[s:e]) for s, e in candidates])
    best = sorted(range(len(candidates)), key=lambda i: (-ranks[i], i))
    chosen = sorted(best[: sentence_count_for(total)])
    return [text[candidates[i][0] : candidates[i][1]] for i in chosen]


def _content_words(sentence: str) -> list[str]:
    words = (w.lower() for w in _WORD.findall(sentence))
    # A dict keeps first-seen order, so every sum below runs in the same order on every run.
    return list(dict.fromkeys(w for w in words if w not in STOPWORDS and len(w) > 1))


def _textrank(sentences: list[list[str]]) -> list[float]:
    count = len(sentences)
    holders: dict[str, list[int]] = {}
    for index, words in enumerate(sentences):
        for word in words:
            holders.setdefault(word, []).append(index)
    shared: dict[tuple[int, int], int] = {}
    for indices in holders.values():
        for a_position, a in enumerate(indices):
            for b in indices[a_position + 1 :]:
                shared[a, b] = shared.get((a, b), 0) + 1
    neighbours: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    for (a, b), overlap in sorted(shared.items()):
        weight = overlap / (math.log1p(len(sentences[a])) + math.log1p(len(sentences[b])))
        neighbours[a].append((b, weight))
        neighbours[b].append((a, weight))
    out_weight = [math.fsum(w for _, w in edges) for edges in neighbours]
    ranks = [1.0 / count] * count
    for _ in range(_ITERATIONS):
        updated = [
            (1 - _DAMPING) / count
            + _DAMPING * math.fsum(ranks[j] * w / out_weight[j] for j, w in neighbours[i])
            for i in range(count)
        ]
        change = max(abs(u - r) for u, r in zip(updated, ranks, strict=True))
        ranks = updated
        if change < _TOLERANCE:
            break
    return ranks
