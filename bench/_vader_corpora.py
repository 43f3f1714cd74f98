"""The VADER ground-truth corpora (Hutto & Gilbert, ICWSM 2014): fetch, verify, load, split.

They ship only in the vaderSentiment==3.3.2 sdist (MIT, (c) 2016 C.J. Hutto), inside
`additional_resources/hutto_ICWSM_2014.tar.gz`. `pip download` fetches the sdist into a cache
folder; both archives are checked against pinned SHA-256 digests before anything is read.

Gold labels:
- `mean_sign`: the sign of the mean rating (0 only when the mean is exactly 0), the protocol of
  the paper's Table 4, used for F1 so the numbers compare with the published ones;
- `median_sign`: the sign of the median rater's rating, i.e. what a typical reader said;
- `gold`: what `confidence` is calibrated against, one of the four labels the analyzer gives
  ("mixed" when the raters split a quarter each way, else the median's sign), defined with
  `is_right` and the F1 and ECE measures in tests/support/sentiment_scoring.py.
"""

from __future__ import annotations

import ast
import hashlib
import io
import random
import statistics
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.sentiment_scoring import gold_label, sign

SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_PATH = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
INNER_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"

DOMAINS = ("tweets", "movie", "amazon", "nyt")
_FILE_STEMS = {
    "tweets": "tweets",
    "movie": "movieReviewSnippets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
# Paper, Table 4: VADER's 3-class weighted F1 and Pearson r per domain.
PUBLISHED_F1 = {"tweets": 0.96, "movie": 0.61, "amazon": 0.63, "nyt": 0.55}
PUBLISHED_R = {"tweets": 0.881, "movie": 0.451, "amazon": 0.565, "nyt": 0.492}

SPLIT_SEED = 20140601
SYNTHETIC_SEED = 7
SYNTHETIC_DOCS_PER_DOMAIN = 750


@dataclass(frozen=True, slots=True)
class Item:
    domain: str
    item_id: str
    mean_rating: float
    ratings: tuple[int, ...]
    text: str

    @property
    def mean_sign(self) -> int:
        return sign(self.mean_rating)

    @property
    def median_sign(self) -> int:
        return sign(statistics.median(self.ratings))

    @property
    def gold(self) -> str:
        return gold_label(self.ratings)


@dataclass(frozen=True, slots=True)
class SyntheticDoc:
    """Held-out snippets of one domain joined into one text; its parts' median labels known."""

    domain: str
    text: str
    part_signs: tuple[int, ...]

    @property
    def truth(self) -> str:
        """'mixed' when both a positive and a negative part occur, else the parts' sign."""
        signs = set(self.part_signs)
        if {1, -1} <= signs:
            return "mixed"
        if 1 in signs:
            return "positive"
        if -1 in signs:
            return "negative"
        return "neutral"


def fetch(cache: Path = DEFAULT_CACHE) -> Path:
    """The verified sdist in `cache`, downloaded with pip when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / SDIST_NAME
    if not sdist.exists():
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "vaderSentiment==3.3.2",
            "-d",
            str(cache),
        ]
        subprocess.run(command, check=True)
    _verify(sdist.read_bytes(), SDIST_SHA256, SDIST_NAME)
    return sdist


def _verify(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RuntimeError(f"{what}: sha256 {actual}, expected {expected}")


def _decode(data: bytes) -> str:
    # The files are UTF-8 (the movie file has 133 non-ASCII lines, e.g. "cliché"); latin-1
    # only as a fallback, since it would turn those into mojibake.
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def load(cache: Path = DEFAULT_CACHE) -> dict[str, list[Item]]:
    """All items per domain, in file order."""
    with tarfile.open(fetch(cache)) as sdist:
        member = sdist.extractfile(INNER_PATH)
        if member is None:
            raise RuntimeError(f"{INNER_PATH} missing from {SDIST_NAME}")
        inner = member.read()
    _verify(inner, INNER_SHA256, INNER_PATH)
    files: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(inner)) as corpora:
        for entry in corpora.getmembers():
            name = entry.name.rsplit("/", 1)[-1]
            handle = corpora.extractfile(entry) if entry.isfile() else None
            if handle is not None and name.endswith(".txt"):
                files[name] = _decode(handle.read())
    return {domain: _items(domain, files) for domain in DOMAINS}


def _items(domain: str, files: dict[str, str]) -> list[Item]:
    stem = _FILE_STEMS[domain]
    ratings: dict[str, tuple[int, ...]] = {}
    for line in files[f"{stem}_anonDataRatings.txt"].splitlines():
        if line.strip():
            item_id, _mean, _deviation, raw = line.split("\t")
            ratings[item_id] = tuple(ast.literal_eval(raw))
    items = []
    for line in files[f"{stem}_GroundTruth.txt"].splitlines():
        if line.strip():
            item_id, mean, text = line.split("\t", 2)
            items.append(Item(domain, item_id, float(mean), ratings[item_id], text))
    return items


def halves(items: Sequence[Item], seed: int = SPLIT_SEED) -> tuple[list[Item], list[Item]]:
    """A fixed random split into (fitting half, held-out half), each in file order."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    middle = len(order) // 2
    return (
        [items[i] for i in sorted(order[:middle])],
        [items[i] for i in sorted(order[middle:])],
    )


def synthetic_docs(
    items: Sequence[Item], count: int = SYNTHETIC_DOCS_PER_DOMAIN, seed: int = SYNTHETIC_SEED
) -> Iterator[SyntheticDoc]:
    """`count` texts of two or three snippets drawn from `items` (one domain)."""
    generator = random.Random(seed)
    for _ in range(count):
        parts = generator.sample(list(items), generator.choice((2, 3)))
        text = " ".join(
            p.text.strip() if p.text.rstrip().endswith((".", "!", "?")) else p.text.strip() + "."
            for p in parts
        )
        yield SyntheticDoc(parts[0].domain, text, tuple(p.median_sign for p in parts))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    spread_x = sum((x - mean_x) ** 2 for x in xs) ** 0.5
    spread_y = sum((y - mean_y) ** 2 for y in ys) ** 0.5
    return covariance / (spread_x * spread_y) if spread_x and spread_y else 0.0


def stratified_sample(items: Sequence[Item], size: int, seed: int = SPLIT_SEED) -> list[Item]:
    """`size` held-out items, in file order, keeping the shares of the mean-sign classes."""
    _, held_out = halves(items)
    generator = random.Random(seed)
    by_class: dict[int, list[Item]] = {}
    for item in held_out:
        by_class.setdefault(item.mean_sign, []).append(item)
    quotas = {label: size * len(group) // len(held_out) for label, group in by_class.items()}
    # Largest remainders get the seats that rounding down left over.
    remainders = sorted(by_class, key=lambda label: -(size * len(by_class[label]) % len(held_out)))
    for label in remainders[: size - sum(quotas.values())]:
        quotas[label] += 1
    chosen = [
        item
        for label in sorted(by_class)
        for item in generator.sample(by_class[label], quotas[label])
    ]
    order = {item.item_id: index for index, item in enumerate(items)}
    return sorted(chosen, key=lambda item: order[item.item_id])


def write_test_sample(folder: Path, cache: Path = DEFAULT_CACHE, size: int = 500) -> None:
    """The tests' fixture: `size` held-out items per domain, in the corpus format, and their
    raters' individual ratings (`id <TAB> [ratings]`), which the gold label needs."""
    data = load(cache)
    folder.mkdir(parents=True, exist_ok=True)
    for domain in DOMAINS:
        sample = stratified_sample(data[domain], size)
        lines = [f"{i.item_id}\t{i.mean_rating}\t{i.text}\n" for i in sample]
        (folder / f"{_FILE_STEMS[domain]}_sample.txt").write_text("".join(lines), encoding="utf-8")
        ratings = [f"{i.item_id}\t{list(i.ratings)}\n" for i in sample]
        (folder / f"{_FILE_STEMS[domain]}_ratings_sample.txt").write_text(
            "".join(ratings), encoding="utf-8"
        )


if __name__ == "__main__":
    # python bench/_vader_corpora.py tests/data/vader [cache folder]
    write_test_sample(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_CACHE)
