"""Server-sent events: the wire format, and a response that stops when the client leaves.

Starlette's StreamingResponse notices a disconnect only on servers that speak ASGI
spec < 2.4, and leaves an iterator suspended at a `yield` to the garbage collector.
`EventStreamResponse` always watches for the disconnect, cancels the stream as soon as
it comes, and closes the event iterator either way, so whatever the iterator holds
(an upstream gRPC call) is released at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


def event(name: str, data: bytes) -> bytes:
    """One event; `data` must be a single line (compact JSON is)."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.events = events
        self.status_code = status_code
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                await self._stream(send)
                group.cancel_scope.cancel()
        finally:
            await self.events.aclose()

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
