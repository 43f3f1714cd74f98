"""gateway.acceptor_child's accepting, on real sockets but without a gateway (this test
reads the control socket): which connections are passed on, which refused, and how the
cap counts those passed and not yet closed; and gateway.acceptor's side of the count."""

from __future__ import annotations

import asyncio
import email.utils
import errno
import logging
import os
import resource
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from gateway.acceptor import AcceptorProcess
from gateway.acceptor_child import (
    COUNTS_BYTES,
    DATE_MARK,
    HANDED,
    LOG,
    READY,
    REQUEST_ID_MARK,
    REST_SECONDS,
    Acceptor,
    http_date,
    request_id,
)
from tests.support.rawhttp import read_all

REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\ndate: %s\r\nx-request-id: %s\r\n\r\n{'id':'%s'}" % (
    DATE_MARK,
    REQUEST_ID_MARK,
    REQUEST_ID_MARK,
)


@dataclass
class Accepting:
    address: tuple[str, int]
    control: socket.socket  # the gateway's end
    # What the gateway publishes, passed connections it closed ([0]), and what the child
    # does, connections it refused ([1]).
    closed: memoryview

    def passed(self, count: int) -> list[socket.socket]:
        """The next `count` connections passed on."""
        connections: list[socket.socket] = []
        while len(connections) < count:
            message, fds, _, _ = socket.recv_fds(self.control, 64, 64)
            assert message == HANDED + bytes([len(fds)])
            connections += (socket.socket(fileno=fd) for fd in fds)
        assert len(connections) == count
        return connections

    def request(self, path: str) -> socket.socket:
        client = socket.create_connection(self.address, timeout=5)
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return client


class FailingOnce(socket.socket):
    """A listening socket whose first accept fails as when out of descriptors."""

    failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


@contextmanager
def accepting(max_connections: int, listener: socket.socket | None = None) -> Iterator[Accepting]:
    listener = listener or socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    control, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    control.settimeout(5)
    closed = memoryview(bytearray(COUNTS_BYTES)).cast("Q")
    acceptor = Acceptor(
        listener,
        child_end,
        closed,
        max_connections=max_connections,
        header_timeout=5,
        uncapped=frozenset({b"/healthz"}),
        refusal=REFUSAL,
    )
    thread = threading.Thread(target=acceptor.run)
    thread.start()
    try:
        assert control.recv(16) == READY
        yield Accepting(address, control, closed)
    finally:
        control.close()  # its end: run() returns
        thread.join(5)
        assert not thread.is_alive()
        listener.close()
        child_end.close()


def test_passed_connections_count_against_the_cap_until_the_gateway_closes_them() -> None:
    with accepting(max_connections=2) as acceptor:
        clients = [acceptor.request("/v1/users/me") for _ in range(2)]
        passed = acceptor.passed(2)
        # Neither adopted nor closed by the gateway yet: the next is refused all the same.
        with acceptor.request("/v1/users/me") as third:
            answer = read_all(third)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert acceptor.closed[1] == 1  # counted for the gateway's metrics
        # A health check past the cap is passed on, its request unread.
        with acceptor.request("/healthz?x=1"):
            (checked,) = acceptor.passed(1)
            assert checked.recv(100).startswith(b"GET /healthz?x=1 HTTP/1.1\r\n")
            checked.close()
        # Once the gateway says two have closed (one of them the health check's), one
        # more fits.
        acceptor.closed[0] = 2
        with acceptor.request("/v1/users/me") as fourth:
            (served,) = acceptor.passed(1)
            assert served.recv(100).startswith(b"GET /v1/users/me ")
            served.close()
            assert fourth.recv(100) == b""  # closed here, not answered by the child
        for sock in (*clients, *passed):
            sock.close()


def test_when_accepting_fails_the_listener_rests_and_the_gateway_is_told() -> None:
    listener = FailingOnce(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with accepting(max_connections=1, listener=listener) as acceptor:
        started = time.monotonic()
        with acceptor.request("/v1/users/me"):
            assert acceptor.control.recv(256) == (
                LOG + b"accepting a connection failed: [Errno 24] Too many open files; "
                b"again in %g s" % REST_SECONDS
            )
            (passed,) = acceptor.passed(1)  # accepted once the rest is over
            assert time.monotonic() - started >= REST_SECONDS
            passed.close()


def test_a_refusal_carries_the_current_date_and_a_new_request_id() -> None:
    with accepting(max_connections=0) as acceptor:
        answers = []
        for _ in range(2):
            with acceptor.request("/v1/users/me") as client:
                answers.append(read_all(client))
    ids = []
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        date = email.utils.parsedate_to_datetime(headers[b"date"].decode())
        assert abs(date.timestamp() - time.time()) < 5
        assert body == b"{'id':'%s'}" % headers[b"x-request-id"]
        ids.append(uuid.UUID(headers[b"x-request-id"].decode()))
    assert ids[0] != ids[1]
    assert {found.version for found in ids} == {4}


def test_the_date_and_request_id_are_written_as_the_gateway_writes_them() -> None:
    for seconds in (0, 951_782_400, 1_796_515_200.7):  # 1970, a leap day, a fraction
        assert http_date(seconds) == email.utils.formatdate(seconds, usegmt=True).encode()
    made = request_id()
    assert len(made) == len(REQUEST_ID_MARK) == len(str(uuid.uuid4()))
    assert str(uuid.UUID(made.decode())).encode() == made
    assert len(DATE_MARK) == len(http_date(time.time()))


class Signal(logging.Handler):
    """Sets `event` on a record at `level` or above."""

    def __init__(self, event: asyncio.Event, level: int) -> None:
        super().__init__(level)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


async def test_connections_lost_for_want_of_descriptors_count_as_closed() -> None:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    adopted = asyncio.Event()

    def adopt(connection: socket.socket) -> None:
        connection.close()  # and still open for the count
        adopted.set()

    acceptor = AcceptorProcess(
        listener,
        loop,
        adopt,
        max_connections=1,
        header_timeout=5,
        uncapped=frozenset(),
        refusal=REFUSAL,
        on_gone=lambda: None,
    )
    await acceptor.start()
    lost = asyncio.Event()
    logger = logging.getLogger("gateway.acceptor")
    signal = Signal(lost, logging.ERROR)
    logger.addHandler(signal)
    first, second = socket.socket(), socket.socket()  # before descriptors run out
    first.setblocking(False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    try:
        # No descriptor to spare here: the kernel closes the connection on its way.
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            await loop.sock_connect(first, address)
            await asyncio.wait_for(lost.wait(), 5)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not adopted.is_set()
        # Counted as closed: the next one fits under the cap of one.
        second.connect(address)
        await asyncio.wait_for(adopted.wait(), 5)
    finally:
        logger.removeHandler(signal)
        first.close()
        second.close()
        await acceptor.stop()
