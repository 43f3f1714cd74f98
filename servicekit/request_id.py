"""The request id every call carries: the services take it from `x-request-id`
metadata (servicekit.interceptor), the gateway from the `X-Request-ID` header
(gateway.middleware), and both echo it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from tandem_client import context

REQUEST_ID_KEY = context.REQUEST_ID_KEY
_WELL_FORMED_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's request id when it is well-formed, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return accept_request_id(value)
    return str(uuid.uuid4())


def accept_request_id(value: str | None) -> str:
    """`value` when it is a well-formed request id, else a newly generated one.

    Ids travel into logs and metadata, so only short, plain tokens are taken as given.
    """
    if value is not None and _WELL_FORMED_ID.match(value):
        return value
    return str(uuid.uuid4())
