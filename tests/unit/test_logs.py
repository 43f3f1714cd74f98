"""servicekit.logs: one line per record, whatever the message carries."""

from __future__ import annotations

import io
import logging

import pytest

from servicekit.logs import escape_controls, log_handler, request_id_var


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("GET /healthz 200 1.20ms", "GET /healthz 200 1.20ms"),
        ("café, 東京, emoji 🙂", "café, 東京, emoji 🙂"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x1b[31mred\x00\x7f", "\\x1b[31mred\\x00\\x7f"),
        ("c1\x85 line\u2028sep\u2029", "c1\\x85 line\\u2028sep\\u2029"),
        ("zero\u200bwidth", "zero\u200bwidth"),  # not a line break: kept
    ],
)
def test_control_characters_become_visible_escapes(text: str, escaped: str) -> None:
    assert escape_controls(text) == escaped


def test_a_record_with_client_text_stays_one_line_but_its_traceback_does_not() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs")
    logger.propagate = False
    logger.addHandler(log_handler(stream))
    token = request_id_var.set("req-1")
    try:
        logger.warning("GET %s %d", "/healthz\r\n2026-01-01 INFO forged", 404)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed on %r", "x\ny")
    finally:
        request_id_var.reset(token)
        logger.handlers.clear()
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(
        "WARNING tests.logs [req-1] GET /healthz\\r\\n2026-01-01 INFO forged 404"
    )
    assert lines[1].endswith("ERROR tests.logs [req-1] failed on 'x\\ny'")
    # The traceback follows on lines of its own, as Python prints it.
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"
