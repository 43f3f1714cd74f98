"""Logging set-up: one line per record, each carrying the current call's request id."""

from __future__ import annotations

import logging
import sys

from tandem_client import context

# Set by the call interceptor for the duration of one RPC; each RPC runs in its own
# task, so concurrent calls never see each other's id. "-" outside any. One variable
# for the whole process: the client package's, so that its calls send the id on.
request_id_var = context.request_id_var

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str) -> None:
    """Send every log record to stderr, one line each, with the request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
