"""SelectorTransport, the reader/writer fallback, exercised directly on both loops."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agentio.errors import ConfigError
from agentio.transports.selector import SelectorTransport, create_selector_connection

Pair = tuple[SelectorTransport, Any, socket.socket]


@pytest.fixture
async def pair(recording: Callable[..., Any]) -> AsyncIterator[Callable[..., Pair]]:
    """``pair(initial=b"", **protocol_options)`` -> (transport, protocol, peer socket)."""
    made: list[Pair] = []

    def make(initial: bytes = b"", **options: Any) -> Pair:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, protocol = create_selector_connection(
            loop, ours, lambda: recording(**options), initial
        )
        made.append((transport, protocol, theirs))
        return transport, protocol, theirs

    yield make
    for transport, _, theirs in made:
        transport.abort()
        theirs.close()


async def recv_all(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(peer, size - len(data))
        assert chunk
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("buffered", [False, True])
async def test_initial_data_then_socket_data(pair: Callable[..., Pair], buffered: bool) -> None:
    transport, protocol, peer = pair(b"first-", buffered=buffered)
    peer.send(b"second")
    assert await protocol.wait_for(12) == b"first-second"
    assert protocol.events[0] == "made"
    assert transport.get_extra_info("socket").family == socket.AF_UNIX


async def test_large_write_pauses_and_resumes_the_protocol(pair: Callable[..., Pair]) -> None:
    transport, protocol, peer = pair()
    transport.set_write_buffer_limits(high=64 * 1024, low=1024)
    payload = bytes(range(256)) * 16 * 1024  # 4 MiB: more than a socket buffer holds
    transport.write(payload[:1])
    transport.write(payload[1:])
    assert "pause_writing" in protocol.events
    assert transport.get_write_buffer_size() > 0
    assert await recv_all(peer, len(payload)) == payload
    assert protocol.events[-1] == "resume_writing"
    assert transport.get_write_buffer_size() == 0


async def test_close_flushes_then_reports_lost(pair: Callable[..., Pair]) -> None:
    transport, protocol, peer = pair()
    payload = b"x" * (2 * 1024 * 1024)
    transport.write(payload)
    transport.close()
    assert transport.is_closing()
    assert await recv_all(peer, len(payload)) == payload
    assert await protocol.lost is None
    assert await asyncio.get_running_loop().sock_recv(peer, 10) == b""
    assert transport.get_extra_info("socket").fileno() == -1


async def test_abort_drops_buffer(pair: Callable[..., Pair]) -> None:
    transport, protocol, _peer = pair()
    transport.write(b"x" * (4 * 1024 * 1024))
    assert transport.get_write_buffer_size() > 0
    transport.abort()
    assert transport.get_write_buffer_size() == 0
    assert await protocol.lost is None


async def test_write_eof_half_closes(pair: Callable[..., Pair]) -> None:
    transport, protocol, peer = pair(keep_open=True)
    assert transport.can_write_eof()
    transport.write(b"last")
    transport.write_eof()
    assert await recv_all(peer, 4) == b"last"
    assert await asyncio.get_running_loop().sock_recv(peer, 1) == b""
    with pytest.raises(RuntimeError):
        transport.write(b"more")
    peer.send(b"still reading")
    assert await protocol.wait_for(13) == b"still reading"


async def test_peer_eof_closes_unless_kept_open(pair: Callable[..., Pair]) -> None:
    transport, protocol, peer = pair()
    peer.shutdown(socket.SHUT_WR)
    assert await protocol.lost is None
    assert protocol.events == ["made", "eof", "lost"]

    transport, protocol, peer = pair(keep_open=True)
    peer.shutdown(socket.SHUT_WR)
    await protocol.eof
    transport.resume_reading()  # must not read (and report) the EOF again
    transport.write(b"after eof")
    assert await recv_all(peer, 9) == b"after eof"
    assert protocol.events.count("eof") == 1
    assert not transport.is_closing() and not transport.is_reading()


async def test_pause_and_resume_reading(pair: Callable[..., Pair]) -> None:
    transport, protocol, peer = pair()
    transport.pause_reading()
    assert not transport.is_reading()
    peer.send(b"held")
    for _ in range(20):  # give the loop many chances to (wrongly) read
        await asyncio.sleep(0)
    assert protocol.data == b""
    transport.resume_reading()
    assert transport.is_reading()
    assert await protocol.wait_for(4) == b"held"


async def test_write_to_closed_peer_reports_the_error(pair: Callable[..., Pair]) -> None:
    transport, protocol, peer = pair()
    transport.pause_reading()  # so the EOF is not what ends it
    peer.close()
    transport.write(b"into the void")
    assert isinstance(await protocol.lost, BrokenPipeError)


async def test_protocol_exception_is_reported_and_closes(pair: Callable[..., Pair]) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        transport, protocol, peer = pair()

        def explode(data: bytes) -> None:
            raise ValueError("protocol bug")

        protocol.data_received = explode
        peer.send(b"boom")
        assert isinstance(await protocol.lost, ValueError)
        assert isinstance(reported[0]["exception"], ValueError)
        assert transport.is_closing()
    finally:
        loop.set_exception_handler(None)


async def test_buffer_limits_and_protocol_swap(pair: Callable[..., Pair]) -> None:
    transport, protocol, peer = pair()
    with pytest.raises(ConfigError):
        transport.set_write_buffer_limits(high=10, low=20)
    transport.set_write_buffer_limits(high=100)
    assert transport.get_write_buffer_limits() == (25, 100)
    other: Any = type(protocol)()
    transport.set_protocol(other)
    assert id(transport.get_protocol()) == id(other)
    peer.send(b"to the new one")
    assert await other.wait_for(14) == b"to the new one"
    assert protocol.data == b""
