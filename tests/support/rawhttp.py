"""HTTP/1.1 over a bare socket, for what no well-behaved client sends: huge or slow heads,
unfinished bodies, connections that say nothing.

    async with raw_connection(url) as conn:
        conn.writer.write(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        response = await conn.response()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated one
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def response(self, timeout: float = 10) -> RawResponse:
        """The next response on the connection (a Content-Length body)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(int(status_line.split()[1]), headers, body)

    async def closed(self, timeout: float = 10) -> bytes:
        """Whatever the server still sends, until it closes the connection."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()


def address_of(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host.strip("[]"), int(port)


@asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[RawConnection]:
    reader, writer = await asyncio.open_connection(*address_of(url))
    try:
        yield RawConnection(reader, writer)
    finally:
        writer.close()
        # The server may have reset it first: nothing left to close.
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def request_head(method: str, target: str, *headers: tuple[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_all(connection: socket.socket) -> bytes:
    """What a blocking socket receives until the server closes it."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(url: str, request: bytes) -> bytes:
    """`request` on a fresh connection with a blocking socket (any thread), and all that
    comes back until the server closes it."""
    with socket.create_connection(address_of(url), timeout=5) as connection:
        connection.sendall(request)
        return read_all(connection)


def answered_while_blocked(call: Callable[[], T]) -> T:
    """What `call` returns, run on another thread while this one is blocked: from a test's
    event loop, an answer that the gateway in this loop could not have given. It must come
    within 2 s (a server waiting for the loop would make it wait out 10)."""
    answered = threading.Event()
    result: list[T] = []

    def run() -> None:
        try:
            result.append(call())
        finally:
            answered.set()

    threading.Thread(target=run).start()
    started = time.monotonic()
    assert answered.wait(10)
    assert time.monotonic() - started < 2
    [value] = result
    return value
