"""Logging set-up: one line per record, each carrying the current call's request id.

Two formats (`<PREFIX>LOG_FORMAT`): `text` for a person at a terminal (`make run`), and
`json` for a log pipeline (the container images): one JSON object per line with time,
level, logger, message, request id and, while a trace is current
(servicekit.telemetry), its trace and span ids, which join the line to its trace.

Messages often carry what a client sent (a path, an email, a header), so the formatter
escapes control characters in the message: `GET /healthz%0d%0a<fake line>` stays one
line, and no terminal escape sequence reaches an operator's screen. Tracebacks are
left as they are: they are ours, and multi-line by nature.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

from servicekit import telemetry
from tandem_client import context

# Set by the call interceptor for the duration of one RPC; each RPC runs in its own
# task, so concurrent calls never see each other's id. "-" outside any. One variable
# for the whole process: the client package's, so that its calls send the id on.
request_id_var = context.request_id_var

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

LogFormat = Literal["text", "json"]

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators, which some
# log viewers also break lines at.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with each control character as a visible escape (`\\n`, `\\x1b`)."""
    # isprintable() is one C call, false for every character _CONTROL matches: the
    # common line pays nothing more.
    if text.isprintable():
        return text
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class OneLineFormatter(logging.Formatter):
    """FORMAT, with control characters in the formatted message escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        # logging.Formatter.format appends the traceback after this, unescaped.
        return escape_controls(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record. ASCII only: every control character, line separator
    and non-ASCII character is a JSON escape, so a record is one line whatever a client
    sent, and the message parses back to exactly what was logged."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", context.NO_REQUEST_ID),
        }
        ids = telemetry.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def message_of(line: str) -> str:
    """The message of a log line in either format (anything before a JSON object, such
    as `make run`'s name prefix, is skipped); the line itself if it is no JSON record."""
    start = line.find('{"time"')
    if start < 0:
        return line
    try:
        record = json.loads(line[start:])
    except ValueError:
        return line
    message = record.get("message") if isinstance(record, dict) else None
    return message if isinstance(message, str) else line


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def log_handler(stream: TextIO, log_format: LogFormat = "text") -> logging.Handler:
    """A handler writing one line per record to `stream`, with the request id."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else OneLineFormatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    return handler


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Send every log record to stderr, one line each, with the request id."""
    root = logging.getLogger()
    root.handlers[:] = [log_handler(sys.stderr, log_format)]
    root.setLevel(level)
