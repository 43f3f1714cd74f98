"""The fake Messages API as a process of its own, for benchmarks.

    python bench/_fake_upstream.py LATENCY_SECONDS

Prints `listening on URL`, then answers every /v1/messages request with a valid analysis
after LATENCY_SECONDS, until its standard input closes. In its own process its threads
do not compete for the GIL with the load generator.
"""

from __future__ import annotations

import sys

from tests.support.fake_anthropic import FakeAnthropic, Reply

GOOD = {
    "summary": "A product that works, mostly.",
    "sentiment": "mixed",
    "key_points": ["works", "mostly"],
    "confidence": 0.8,
}


def main() -> None:
    latency = float(sys.argv[1])
    with FakeAnthropic() as fake:
        fake.set_default(Reply.slow(latency, then=Reply.json_output(GOOD)))
        print(f"listening on {fake.url} key {fake.api_key}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
