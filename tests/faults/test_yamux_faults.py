"""Case 6: a yamux peer that exceeds the window we granted, or uses streams it never opened.

The session is the library's (:class:`~agentio.transports.yamux.session.YamuxSession`, client
role) over a socketpair; the peer is raw bytes. Every violation ends the same way: a GoAway
with the protocol-error code goes out, the byte stream is closed, the session's exception is a
:class:`YamuxError`, every open stream's protocol is told ``connection_lost`` with
:class:`ConnectionClosed` caused by it, new streams are refused, and nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import pytest

from agentio.errors import ConnectionClosed, YamuxError
from agentio.testing import LeakCheck
from agentio.transports.yamux.codec import (
    FLAG_ACK,
    FLAG_FIN,
    GO_AWAY_PROTOCOL_ERROR,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Frame,
    FrameReader,
    encode_header,
)
from agentio.transports.yamux.session import YamuxStream, start_session

BOUND = 5.0
STREAMS = 3  # opened by us (ids 1, 3, 5) and acknowledged by the peer before the violation


class Held(asyncio.Protocol):
    """A stream protocol that never reads: the window we granted is never replenished."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, YamuxStream)
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def data(sid: int, length: int, flags: int = 0) -> bytes:
    return encode_header(TYPE_DATA, flags, sid, length) + b"\x5a" * length


def wu(sid: int, delta: int, flags: int = 0) -> bytes:
    return encode_header(TYPE_WINDOW_UPDATE, flags, sid, delta)


VIOLATIONS: dict[str, Callable[[], bytes]] = {
    # window: one byte over, far over, and over after a legal partial fill
    "window+1": lambda: data(1, INITIAL_WINDOW + 1),
    "window*4": lambda: encode_header(TYPE_DATA, 0, 3, 4 * INITIAL_WINDOW),
    "partial-then-over": lambda: data(5, INITIAL_WINDOW - 10) + data(5, 11),
    "over-on-two-streams": lambda: data(1, INITIAL_WINDOW // 2) * 2 + data(1, 1),
    # streams never opened: ours not yet used, the peer's without SYN, any frame type
    "data-on-unused-odd-id": lambda: data(99, 3),
    "data-on-even-id-without-syn": lambda: data(2, 3),
    "window-update-on-unknown-id": lambda: wu(7, 1024),
    "fin-on-unknown-id": lambda: data(9, 0, FLAG_FIN),
    "ack-for-a-stream-never-asked": lambda: wu(11, 0, FLAG_ACK),
}


async def _read_frames(sock: socket.socket, reader: FrameReader) -> list[Frame]:
    """Everything the session sends until it closes the byte stream."""
    loop = asyncio.get_running_loop()
    frames: list[Frame] = []
    async with asyncio.timeout(BOUND):
        while chunk := await loop.sock_recv(sock, 65536):
            frames += reader.feed(chunk)
    return frames


@pytest.mark.parametrize("violation", list(VIOLATIONS))
async def test_violation_is_a_yamux_error_and_a_clean_teardown(violation: str) -> None:
    leaks = LeakCheck.start()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    session = await start_session(ours, "client")
    opened = [await session.connect_stream(Held) for _ in range(STREAMS)]
    reader = FrameReader(max_payload=INITIAL_WINDOW)
    loop = asyncio.get_running_loop()
    acks = b"".join(wu(stream.stream_id, 0, FLAG_ACK) for stream, _ in opened)
    ping = encode_header(TYPE_PING, 0x1, 0, 7)  # a legal frame after the ACKs
    await loop.sock_sendall(theirs, acks + ping)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        # the session may close before it has read all of a violation it rejected at the header
        await loop.sock_sendall(theirs, VIOLATIONS[violation]())
    frames = await _read_frames(theirs, reader)
    theirs.close()

    away = [f for f in frames if f.header.type == TYPE_GO_AWAY]
    assert [f.header.length for f in away] == [GO_AWAY_PROTOCOL_ERROR]
    assert frames[-1].header.type == TYPE_GO_AWAY  # nothing after it
    assert isinstance(session.exception(), YamuxError)
    async with asyncio.timeout(BOUND):
        lost = [await protocol.lost for _, protocol in opened]
        await session.wait_closed()
    for exc in lost:
        assert isinstance(exc, ConnectionClosed)
        assert isinstance(exc.__cause__, YamuxError)
    with pytest.raises(ConnectionClosed):
        await session.open_stream()
    assert session.streams == 0
    # what a held stream had legally received before the violation was at most its window
    assert all(p.received <= INITIAL_WINDOW for _, p in opened)
    await leaks.assert_clean()
