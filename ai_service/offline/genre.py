"""What kind of text this is, as weights over the genres `confidence` is calibrated for.

How often a sentiment label is right depends on the kind of text far more than on its score:
a NEUTRAL reading is right for 73% of tweets but 4% of movie-review sentences, whose readers
nearly always took a side. The analyzer is not told the kind, so it guesses it: a naive Bayes
classifier over the presence of a few hundred words and of a few marks of social-media writing
(links, @mentions, hashtags, emoticons, stretched letters), fitted by bench/offline_calibrate.py
on the fitting half of the four VADER corpora (tweets, movie reviews, product reviews, news
op-eds) with the genres equally likely beforehand. Its weights mix the genres' calibration
tables, so a text between genres gets a confidence between theirs.
"""

from __future__ import annotations

import math
import re

from ai_service.offline.calibration import GENRES, WORD_LOG_LIKELIHOODS

# Letters, with inner apostrophes ("don't"); any alphabet, so "cliché" stays one word.
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
# Links and @mentions are marks, not words: the corpus wrote them all as "http://url_removed"
# and "@anonymous", which would otherwise teach that "anonymous" means a tweet.
_ADDRESS = re.compile(r"(?:https?://|www\.)\S+|(?<![\w.+-])@\w+", re.IGNORECASE)
_ADDRESS_SIGNS = ("@", "/", "www.", "WWW.")
_HASHTAG = re.compile(r"(?:^|\s)#\w")
_EMOTICON = re.compile(r"[:;=]['-]?[()\[\]dpDP/\\|*3]|<3|\^_\^")
_STRETCHED = re.compile(r"([a-z])\1\1")
_DIGIT = re.compile(r"\d")
# How many characters are looked at: the genre shows in the opening, and the cost stays flat.
_READ_CHARS = 2_000


def features(text: str) -> set[str]:
    """The lower-cased words of the text's opening and its marks, written "<url>" and the like."""
    opening = text[:_READ_CHARS]
    # The `in` tests skip a regex scan on the texts that cannot match it (most of them).
    maybe_address = any(sign in opening for sign in _ADDRESS_SIGNS)
    addresses = _ADDRESS.findall(opening) if maybe_address else []
    lower = (_ADDRESS.sub(" ", opening) if addresses else opening).lower()
    found = set(_WORD.findall(lower))
    marks = {
        "<url>": any(not address.startswith("@") for address in addresses),
        "<mention>": any(address.startswith("@") for address in addresses),
        "<hashtag>": "#" in opening and _HASHTAG.search(opening) is not None,
        "<exclamation>": "!" in opening,
        "<question>": "?" in opening,
        "<emoticon>": _EMOTICON.search(opening) is not None,
        "<stretched>": _STRETCHED.search(lower) is not None,
        "<digit>": _DIGIT.search(opening) is not None,
    }
    found.update(mark for mark, present in marks.items() if present)
    return found


def weights(text: str) -> tuple[float, ...]:
    """P(genre | text) for each of `GENRES`, summing to 1."""
    found = [WORD_LOG_LIKELIHOODS[f] for f in features(text) if f in WORD_LOG_LIKELIHOODS]
    # fsum is exact, so the result does not depend on the set's (hash-seeded) order.
    scores = [math.fsum(column) for column in zip(*found, strict=True)] or [0.0] * len(GENRES)
    top = max(scores)
    exponentials = [math.exp(score - top) for score in scores]
    total = math.fsum(exponentials)
    return tuple(value / total for value in exponentials)
