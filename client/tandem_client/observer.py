"""A hook on every call a `Connection` makes, for metrics and traces.

The client depends on grpcio and protobuf only, so it measures nothing and traces nothing
itself; a service that does gives its connections a `CallObserver` (servicekit.observers
is Tandem's: Prometheus counters, and an OpenTelemetry span whose context it adds to the
metadata as W3C `traceparent`). Not a grpc client interceptor: on grpc.aio each of those
costs an asyncio task per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import grpc

# Told the status a call ended with (OK for success) once it has.
CallEnd = Callable[[grpc.StatusCode], None]


class CallObserver(Protocol):
    def begin(self, method: str, metadata: list[tuple[str, str]], *, stream: bool) -> CallEnd:
        """A call of `method` ("/users.v1.UsersService/GetUser") is about to be sent
        with `metadata`, to which the observer may add pairs; `stream`: a
        server-streaming one. Returns what is told how it ended (a stream: once it has
        ended, however)."""
        ...


def method_name(multicallable: object) -> str:
    """The full method name of a grpc.aio multicallable ("/pkg.Service/Method")."""
    name = getattr(multicallable, "_method", b"")
    return name.decode() if isinstance(name, bytes) else str(name)
