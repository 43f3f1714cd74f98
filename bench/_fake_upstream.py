"""The fake Messages API as a process of its own, for benchmarks.

    python bench/_fake_upstream.py LATENCY_SECONDS

Prints one READY line with the settings that point the ai service at it, then answers
every /v1/messages request with a valid analysis after LATENCY_SECONDS, until SIGTERM or
SIGINT. In its own process its threads do not compete for the GIL with the load
generator.
"""

from __future__ import annotations

import json
import signal
import sys

from tests.support.fake_anthropic import FakeAnthropic, Reply

GOOD = {
    "summary": "A product that works, mostly.",
    "sentiment": "mixed",
    "key_points": ["works", "mostly"],
    "confidence": 0.8,
}
READY = "ready "


def parse_ready(line: str) -> dict[str, str] | None:
    """The ANTHROPIC_* settings in the READY line; None for any other line."""
    if not line.startswith(READY):
        return None
    env: dict[str, str] = json.loads(line.removeprefix(READY))
    return env


def main() -> None:
    latency = float(sys.argv[1])
    with FakeAnthropic() as fake:
        fake.set_default(Reply.slow(latency, then=Reply.json_output(GOOD)))
        print(READY + json.dumps(fake.env()), flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
