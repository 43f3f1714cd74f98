"""The log lines that tests and benchmarks read back: each parser against its format."""

from __future__ import annotations

import io
import logging

import pytest

from gateway.app import ACCOUNT_READS, parse_account_reads
from servicekit.logs import log_handler
from servicekit.server import SERVING, parse_serving


@pytest.mark.parametrize(
    ("names", "address"),
    [
        ("users.v1.UsersService, grpc.health.v1.Health", "127.0.0.1:50051"),
        ("gateway", "[::1]:8000"),
    ],
)
def test_the_serving_line_gives_back_its_address(names: str, address: str) -> None:
    assert parse_serving(SERVING % (names, address)) == address


def test_the_serving_line_is_found_in_a_formatted_log_line() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.log_lines")
    logger.propagate = False
    logger.addHandler(log_handler(stream))
    try:
        logger.warning(SERVING, "gateway", "127.0.0.1:8000")
    finally:
        logger.handlers.clear()
    lines = stream.getvalue().splitlines()
    assert [parse_serving(line) for line in lines] == ["127.0.0.1:8000"]


def test_other_lines_are_not_serving_lines() -> None:
    assert parse_serving("transport: plaintext") is None
    assert parse_serving(ACCOUNT_READS % (3, 1)) is None


def test_the_account_reads_line_gives_back_its_counts() -> None:
    assert parse_account_reads(ACCOUNT_READS % (1234, 56)) == (1234, 56)
    assert parse_account_reads(SERVING % ("gateway", "127.0.0.1:8000")) is None
