"""gateway.refusals: which refusals are kept, for whom, for how long, and within what memory."""

from __future__ import annotations

import grpc

from gateway.refusals import Refusals
from gateway.upstream_errors import UpstreamError

ATTACKER, OWNER = "203.0.113.9", "198.51.100.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(
    scope: str | None, retry_after: float | None = 30.0, code: grpc.StatusCode | None = None
) -> UpstreamError:
    return UpstreamError(
        429,
        "too many failed logins; retry in 30 s",
        grpc_code=code or grpc.StatusCode.RESOURCE_EXHAUSTED,
        reason="TOO_MANY_FAILED_LOGINS",
        retry_after=retry_after,
        metadata={"scope": scope} if scope else {},
    )


def test_a_refusal_is_kept_for_its_scope_until_it_runs_out() -> None:
    clock = Clock()
    kept = Refusals(early_retry_delay=1, clock=clock)
    kept.remember("login", ATTACKER, "ada@example.com", refusal("account_address"))
    held = kept.held("login", ATTACKER, "ada@example.com")
    assert held is not None
    assert (held.status, held.reason, held.headers["Retry-After"]) == (
        429,
        "TOO_MANY_FAILED_LOGINS",
        "30",
    )
    assert kept.held("login", ATTACKER, "bob@example.com") is None
    assert kept.held("login", OWNER, "ada@example.com") is None
    assert kept.held("signup", ATTACKER, "ada@example.com") is None
    clock.now += 29.5
    held = kept.held("login", ATTACKER, "ada@example.com")
    assert held is not None
    assert held.headers["Retry-After"] == "1"
    clock.now += 0.5
    assert kept.held("login", ATTACKER, "ada@example.com") is None
    assert len(kept) == 0


def test_an_address_refusal_holds_for_every_account_of_the_address() -> None:
    kept = Refusals(early_retry_delay=1, clock=Clock())
    kept.remember("login", ATTACKER, "ada@example.com", refusal("address"))
    assert kept.held("login", ATTACKER, "bob@example.com") is not None
    assert kept.held("login", OWNER, "bob@example.com") is None


def test_only_refusals_with_a_scope_and_a_delay_are_kept() -> None:
    kept = Refusals(early_retry_delay=1, clock=Clock())
    kept.remember("login", ATTACKER, "a", refusal(None))
    kept.remember("login", ATTACKER, "a", refusal("address", retry_after=None))
    kept.remember("login", ATTACKER, "a", refusal("address", code=grpc.StatusCode.UNAVAILABLE))
    kept.remember("login", None, "a", refusal("address"))
    assert len(kept) == 0
    assert kept.held("login", None, "a") is None


def test_the_memory_is_bounded_forgetting_the_oldest_first() -> None:
    kept = Refusals(early_retry_delay=1, max_entries=100, clock=Clock())
    for n in range(101):
        kept.remember("login", f"203.0.113.{n}", "", refusal("address"))
    assert len(kept) == 90
    assert kept.held("login", "203.0.113.0", "") is None
    assert kept.held("login", "203.0.113.100", "") is not None
