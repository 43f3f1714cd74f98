"""servicekit.logs: one line per record, whatever the message carries."""

from __future__ import annotations

import io
import json
import logging

import pytest

from servicekit.logs import escape_controls, log_handler, message_of, request_id_var
from tests.support.traces import recorded_spans


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


def test_json_lines_parse_back_to_what_was_logged_with_the_trace_ids() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs.json")
    logger.propagate = False
    logger.addHandler(log_handler(stream, "json"))
    token = request_id_var.set("req-2")
    forged = "/healthz\r\n2026-01-01 INFO forged\u2028\x1b[31m é"
    try:
        with recorded_spans() as spans, spans.tracer.start_as_current_span("request") as span:
            logger.warning("GET %s %d", forged, 404)
            ids = span.get_span_context()
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        request_id_var.reset(token)
        logger.handlers.clear()
        logger.propagate = True
    text = stream.getvalue()
    assert text.isascii()
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["message"] == f"GET {forged} 404"
    assert first["level"] == "WARNING" and first["logger"] == "tests.logs.json"
    assert first["request_id"] == "req-2"
    assert first["trace_id"] == f"{ids.trace_id:032x}" and first["span_id"] == f"{ids.span_id:016x}"
    assert first["time"].endswith("+00:00")
    # Outside any trace: no ids. The traceback is a field of the same one line.
    assert "trace_id" not in second
    assert second["exception"].endswith("ValueError: boom")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "2026-12-05 INFO servicekit.server [-] serving x on 1.2.3.4:5",
            "2026-12-05 INFO servicekit.server [-] serving x on 1.2.3.4:5",
        ),
        ('users   | {"time": "t", "message": "serving x on 1.2.3.4:5"}', "serving x on 1.2.3.4:5"),
        ('{"time": "t", "message": "stopped"}', "stopped"),
        ('{"time": broken', '{"time": broken'),
    ],
)
def test_the_message_of_a_line_in_either_format(line: str, message: str) -> None:
    assert message_of(line) == message
