from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # type: ignore[import-untyped]

from ai_service.domain import AnalysisResult, PartialResult, Sentiment
from ai_service.offline import OFFLINE_MODEL, OfflineAnalyzer
from ai_service.offline.sentences import MAX_SENTENCE_CHARS
from ai_service.offline.summary import sentence_count_for

POSITIVE_REVIEW = (
    "I absolutely love this phone. The screen is gorgeous and the battery lasts for days. "
    "Best purchase I have made all year!"
)
NEGATIVE_REVIEW = (
    "This was a terrible experience. The food was cold, the staff were rude, and we waited "
    "an hour. I will never come back."
)
FACTUAL = (
    "The train leaves the central station at 9:15 and arrives in Lyon at 11:02. "
    "Tickets are sold at the counter on the ground floor."
)
MIXED_REVIEW = (
    "I bought the Acme X200 blender last month. Setup was quick and the motor is impressively "
    "powerful: it crushes ice in seconds and makes silky smoothies. However, it is extremely "
    "loud, and the lid started leaking after two weeks, which is really disappointing for a "
    "$150 product. Customer support was friendly but slow to send a replacement lid. Overall "
    "I like it, but I would not call it great value."
)
HOTEL_REVIEW = (
    "The hotel room was spotless and the staff were wonderful. "
    "Unfortunately the restaurant was awful and the food made us sick."
)

analyzer = OfflineAnalyzer()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (POSITIVE_REVIEW, Sentiment.POSITIVE),
        (NEGATIVE_REVIEW, Sentiment.NEGATIVE),
        (FACTUAL, Sentiment.NEUTRAL),
        (MIXED_REVIEW, Sentiment.MIXED),
        (HOTEL_REVIEW, Sentiment.MIXED),
        ("Great!", Sentiment.POSITIVE),
        ("The plot is far too predictable.", Sentiment.NEGATIVE),
    ],
)
def test_known_sentiments(text: str, expected: Sentiment) -> None:
    result = analyzer.analyze(text)
    assert result.sentiment is expected
    assert result.model == OFFLINE_MODEL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # vaderSentiment keeps "no!" whole and so misses the lexicon's "no".
        ("No! No! No!", Sentiment.NEGATIVE),
        # A negation does not reach across a sentence end.
        ("I can't come. LOL", Sentiment.POSITIVE),
        # HTML entities are decoded: "&lt;3" is a heart.
        ("see you soon &lt;3", Sentiment.POSITIVE),
        # A counterfactual reverses the praise that follows it.
        ("It could have been a great film.", Sentiment.NEGATIVE),
    ],
)
def test_measured_fixes_to_vader(text: str, expected: Sentiment) -> None:
    assert analyzer.read(text).sentiment is expected


@pytest.mark.parametrize(
    "text", ["VADER is smart, handsome, and funny.", "The book was good.", "Make sure you :) today"]
)
def test_plain_positive_sentences_score_as_vader_does(text: str) -> None:
    vader = SentimentIntensityAnalyzer().polarity_scores(text)["compound"]
    assert analyzer.read(text).score == pytest.approx(vader, abs=1e-4)


def test_confidence_is_lower_for_mixed_than_for_clear_texts() -> None:
    clear = [analyzer.analyze(t).confidence for t in (POSITIVE_REVIEW, NEGATIVE_REVIEW)]
    mixed = [analyzer.analyze(t).confidence for t in (MIXED_REVIEW, HOTEL_REVIEW)]
    assert max(mixed) < min(clear)
    assert all(0.0 <= c <= 1.0 for c in clear + mixed)


def _sentences(count: int) -> list[str]:
    topics = ["battery", "screen", "camera", "speaker", "keyboard", "charger", "case", "app"]
    return [
        f"The {topics[i % len(topics)]} number {i} works with the {topics[(i + 3) % len(topics)]}."
        for i in range(count)
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 9, 30, 120])
def test_summary_is_sentences_of_the_text_in_order(count: int) -> None:
    sentences = _sentences(count)
    summary = analyzer.analyze(" ".join(sentences)).summary
    chosen = [s for s in sentences if s in summary]
    assert " ".join(chosen) == summary
    assert len(chosen) == sentence_count_for(count)


def test_summary_grows_modestly_with_length() -> None:
    counts = [sentence_count_for(n) for n in (1, 3, 4, 10, 40, 1_000)]
    assert counts == sorted(counts)
    assert counts[0] == counts[1] == 1
    assert counts[-1] <= 5


def test_summary_picks_central_sentences() -> None:
    text = (
        "Our team tested the new blender for a month. "
        "The blender motor is powerful and the blender jar is sturdy. "
        "Lunch was at noon. "
        "The blender crushes ice, and the motor stays cool even when the jar is full."
    )
    summary = analyzer.analyze(text).summary
    assert "Lunch" not in summary


def test_key_phrases_come_from_the_text_without_duplicates() -> None:
    key_points = analyzer.analyze(MIXED_REVIEW).key_points
    assert 1 <= len(key_points) <= 5
    assert all(point in MIXED_REVIEW for point in key_points)
    lowered = [point.lower() for point in key_points]
    assert len(set(lowered)) == len(lowered)
    assert not any(a != b and a in b for a in lowered for b in lowered)
    assert {"makes silky smoothies", "impressively powerful"} <= set(lowered)


def test_key_phrases_skip_stopwords_and_addresses() -> None:
    key_points = analyzer.analyze(
        "It is what it is. Read https://example.com/docs?page=2 and mail help@example.com "
        "about the broken charging cable."
    ).key_points
    assert "broken charging cable" in key_points
    assert not any("example" in point or point.lower() == "it is" for point in key_points)


def test_same_input_gives_the_same_output() -> None:
    for text in (MIXED_REVIEW, FACTUAL, " ".join(_sentences(200))):
        assert analyzer.analyze(text) == OfflineAnalyzer().analyze(text)


def test_output_does_not_depend_on_string_hashing() -> None:
    script = (
        "import json, sys\n"
        "from ai_service.offline import OfflineAnalyzer\n"
        "r = OfflineAnalyzer().analyze(sys.stdin.read())\n"
        "print(json.dumps([r.summary, r.sentiment, list(r.key_points), r.confidence]))\n"
    )
    text = MIXED_REVIEW + " " + " ".join(_sentences(40))
    run = subprocess.run(
        [sys.executable, "-c", script],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        cwd="/",
    )
    here = analyzer.analyze(text)
    expected = [here.summary, here.sentiment.value, list(here.key_points), here.confidence]
    assert json.loads(run.stdout) == expected


def test_threads_share_one_analyzer() -> None:
    texts = [MIXED_REVIEW, POSITIVE_REVIEW, NEGATIVE_REVIEW, FACTUAL, HOTEL_REVIEW] * 4
    expected = [analyzer.analyze(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(analyzer.analyze, texts)) == expected


def _check_valid(text: str, result: AnalysisResult) -> None:
    assert result.summary.strip()
    assert isinstance(result.sentiment, Sentiment)
    assert 0.0 <= result.confidence <= 1.0
    assert result.model == OFFLINE_MODEL
    assert len(result.key_points) <= 5
    assert all(point and point in text for point in result.key_points)


@pytest.mark.parametrize(
    "text",
    [
        "word",
        "a",
        "no punctuation at all just words running on and on",
        "😀🎉👍",
        "😡😡😡",
        "这是一个测试。我们很高兴！",
        "Это был отличный день, но погода была плохой.",
        "Das Essen war schlecht, aber der Service war gut.",
        "https://example.com/a?b=c&d=e",
        "Visit www.example.org. Or mail someone@example.org!",
        "?!?!... ;;; ---",
        "1234567890 42 3.14159",
        "&amp; &lt; &gt; &#39; &unknown;",
        "tab\tseparated\tvalues\nand\r\nwindows lines",
        "control \x00 characters \x1b[31m here",
        "\u202eright-to-left override",
        "A" * 5_000,
        # 50,000 characters without a space once took 3 s in an address regex.
        "x" * 50_000,
        "word " * 2_000,
        "\n".join(f"line {i}" for i in range(1_000)),
        "a. " * 3_000,
        "Great!" * 1_500,
        "NOT BAD AT ALL!!! " * 500,
        "   ",
    ],
)
def test_any_text_gets_a_valid_result(text: str) -> None:
    _check_valid(text, analyzer.analyze(text))


def test_long_sentences_are_cut_for_the_summary() -> None:
    result = analyzer.analyze("word " * 10_000)
    # Pieces of an unpunctuated text stand for sentences: at most five of them.
    assert len(result.summary) <= 5 * (MAX_SENTENCE_CHARS + 1)


def test_fifty_thousand_characters_of_prose() -> None:
    text = (MIXED_REVIEW + " " + POSITIVE_REVIEW + " ") * 200
    text = text[:50_000]
    result = analyzer.analyze(text)
    _check_valid(text, result)
    assert len(result.summary) < 5 * MAX_SENTENCE_CHARS


def test_steps_show_the_analysis_as_it_goes_then_end_with_it() -> None:
    text = " ".join(_sentences(12))
    *partials, result = OfflineAnalyzer().steps(text)
    assert result == OfflineAnalyzer().analyze(text)
    assert all(isinstance(p, PartialResult) for p in partials)
    # A partial per summary sentence, each holding the ones before it (as Claude's
    # stream shows a growing snapshot), then the sentiment, then a key point at a time.
    summary_steps = [p for p in partials if p.sentiment is None]
    assert len(summary_steps) == sentence_count_for(12) > 1
    assert all(not p.key_points for p in summary_steps)
    for before, after in itertools.pairwise(summary_steps):
        assert after.summary.startswith(before.summary + " ")
    assert summary_steps[-1].summary == result.summary
    rest = partials[len(summary_steps) :]
    assert rest[0] == PartialResult(result.summary, result.sentiment, ())
    assert [p.key_points for p in rest[1:]] == [
        result.key_points[:n] for n in range(1, len(result.key_points) + 1)
    ]


def test_a_text_without_sentences_steps_straight_to_its_sentiment() -> None:
    *partials, result = OfflineAnalyzer().steps("   ")
    assert isinstance(result, AnalysisResult)
    assert partials[0] == PartialResult(result.summary, result.sentiment, ())
