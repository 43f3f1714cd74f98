"""Logging set-up: one line per record, each carrying the current call's request id.

Messages often carry what a client sent (a path, an email, a header), so the formatter
escapes control characters in the message: `GET /healthz%0d%0a<fake line>` stays one
line, and no terminal escape sequence reaches an operator's screen. Tracebacks are
left as they are: they are ours, and multi-line by nature.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

from tandem_client import context

# Set by the call interceptor for the duration of one RPC; each RPC runs in its own
# task, so concurrent calls never see each other's id. "-" outside any. One variable
# for the whole process: the client package's, so that its calls send the id on.
request_id_var = context.request_id_var

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

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


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def log_handler(stream: TextIO) -> logging.Handler:
    """A handler writing one line per record to `stream`, with the request id."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    return handler


def configure_logging(level: str) -> None:
    """Send every log record to stderr, one line each, with the request id."""
    root = logging.getLogger()
    root.handlers[:] = [log_handler(sys.stderr)]
    root.setLevel(level)
