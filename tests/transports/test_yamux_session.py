"""YamuxSession and YamuxStream over socketpairs: a client session against a server session,
or against a scripted raw peer for protocol violations."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from agentio.errors import AgentTimeout, ConnectionClosed, YamuxError
from agentio.transports.yamux.codec import (
    FLAG_ACK,
    FLAG_RST,
    FLAG_SYN,
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
from agentio.transports.yamux.session import YamuxConfig, YamuxSession, YamuxStream, start_session

BOUND = 5.0  # no wait in these tests may take longer than this


async def eventually(predicate: Callable[[], object], turns: int = 100_000) -> None:
    """Let the loop run until ``predicate()`` holds (loop turns, not wall-clock sleeps)."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class Collector(asyncio.Protocol):
    """Records everything a stream delivers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.eof = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()
        self.resumed.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_exception(ConnectionClosed("lost before eof"))
            self.eof.exception()  # retrieved: not every test looks at it
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.paused.set()
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.resumed.set()


class Echo(asyncio.Protocol):
    """Server side: echo every byte, close after the peer's FIN."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.close()
        return True


@dataclass
class Pair:
    client: YamuxSession
    server: YamuxSession


@pytest.fixture
def server_factory() -> Callable[[], asyncio.Protocol] | None:
    return Echo


@pytest.fixture
async def pair(server_factory: Callable[[], asyncio.Protocol] | None) -> AsyncIterator[Pair]:
    a, b = socket.socketpair()
    client = await start_session(a, "client")
    server = await start_session(b, "server", stream_protocol_factory=server_factory)
    yield Pair(client, server)
    client.close()
    server.close()
    async with asyncio.timeout(BOUND):
        await client.wait_closed()
        await server.wait_closed()


async def test_many_concurrent_streams_echo(pair: Pair) -> None:
    payloads = [bytes([i]) * (1000 + 997 * i) for i in range(40)]
    opened = [await pair.client.connect_stream(Collector) for _ in payloads]
    assert [s.stream_id for s, _ in opened] == list(range(1, 80, 2))
    for (stream, _), payload in zip(opened, payloads, strict=True):
        stream.write(payload[:500])
    for (stream, _), payload in zip(opened, payloads, strict=True):
        stream.write(payload[500:])
        stream.write_eof()
    async with asyncio.timeout(BOUND):
        for (_, protocol), payload in zip(opened, payloads, strict=True):
            await protocol.eof
            assert bytes(protocol.data) == payload
    # Both sides half-closed: closing the client side finishes every stream.
    for stream, _ in opened:
        stream.close()
    async with asyncio.timeout(BOUND):
        assert [await p.lost for _, p in opened] == [None] * len(opened)
    assert pair.client.streams == 0
    assert pair.client.connection.stream_ids == []
    assert pair.client.exception() is None and pair.server.exception() is None


class SlowSink(asyncio.Protocol):
    """Server side: starts with reading paused, hashes what it gets, answers with the digest."""

    instances: list[SlowSink] = []

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        SlowSink.instances.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, YamuxStream)
        self.transport = transport
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)

    def eof_received(self) -> bool:
        self.transport.write(self.digest.hexdigest().encode())
        self.transport.close()
        return True


@pytest.mark.parametrize("server_factory", [SlowSink])
async def test_10_mib_with_a_paused_reader(pair: Pair) -> None:
    SlowSink.instances.clear()
    blob = hashlib.shake_256(b"yamux").digest(10 * 1024 * 1024)
    stream, protocol = await pair.client.connect_stream(Collector)
    view = memoryview(blob)
    pos = 0
    async with asyncio.timeout(BOUND):
        # The reader is paused: the client fills exactly one window, then its buffer, then
        # its protocol is paused. Nothing is torn down.
        while not protocol.paused.is_set():
            stream.write(view[pos : pos + 100_000])
            pos += 100_000
            await asyncio.sleep(0)  # let the server's frames in between writes
        # The window still drains into the socket.
        await eventually(lambda: not pair.client.connection.send_window(stream.stream_id))
        assert pos < len(blob)
    (sink,) = SlowSink.instances
    server_stream = sink.transport
    # Exactly one window reached the server and waits there, unacknowledged.
    await eventually(lambda: sum(len(c) for c in server_stream._in) == INITIAL_WINDOW)
    assert pair.server.connection.recv_window(stream.stream_id) == 0
    assert stream.get_write_buffer_size() > stream.get_write_buffer_limits()[1]
    assert sink.size == 0
    assert not pair.client.is_closing() and not pair.server.is_closing()
    server_stream.resume_reading()
    async with asyncio.timeout(BOUND):
        while pos < len(blob):
            await protocol.resumed.wait()
            stream.write(view[pos : pos + 256 * 1024])
            pos += 256 * 1024
        stream.write_eof()
        await protocol.eof
    assert sink.size == len(blob) == 10 * 1024 * 1024
    assert bytes(protocol.data) == hashlib.sha256(blob).hexdigest().encode()
    assert pair.client.exception() is None and pair.server.exception() is None


@pytest.mark.parametrize("server_factory", [None])
async def test_server_accept_and_late_attach(pair: Pair) -> None:
    stream, protocol = await pair.client.connect_stream(Collector)
    stream.write(b"hello before accept")
    stream.write_eof()
    async with asyncio.timeout(BOUND):
        accepted = await pair.server.accept()
    assert accepted.stream_id == stream.stream_id
    assert accepted.get_extra_info("yamux_stream_id") == stream.stream_id
    assert accepted.get_extra_info("socket") is None
    sink = Collector()
    accepted.attach(sink)
    async with asyncio.timeout(BOUND):
        await sink.eof
    assert bytes(sink.data) == b"hello before accept"
    accepted.write(b"reply")
    accepted.close()
    async with asyncio.timeout(BOUND):
        await protocol.eof
        assert await sink.lost is None
    assert bytes(protocol.data) == b"reply"
    with pytest.raises(RuntimeError):
        stream.write(b"after write_eof")


async def test_ping_round_trip(pair: Pair) -> None:
    async with asyncio.timeout(BOUND):
        rtt = await pair.client.ping()
        rtt2 = await pair.server.ping()
    assert rtt >= 0 and rtt2 >= 0


async def test_abort_resets_the_peer_stream(pair: Pair) -> None:
    stream, protocol = await pair.client.connect_stream(Collector)
    stream.write(b"x")
    async with asyncio.timeout(BOUND):
        await eventually(lambda: protocol.data)
    stream.abort()
    async with asyncio.timeout(BOUND):
        assert await protocol.lost is None
    assert stream.is_closing()
    stream.write(b"ignored")  # like asyncio: writes after close are dropped
    # The server saw the RST: its stream is gone, the session is fine.
    async with asyncio.timeout(BOUND):
        await eventually(lambda: not pair.server.streams)
        assert await pair.client.ping() >= 0


# --- a raw scripted peer ------------------------------------------------------------------


class RawPeer:
    """The far end of a socketpair, speaking yamux by hand."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = FrameReader(max_payload=1 << 24)
        self.frames: list[Frame] = []
        self.eof = False

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def until(self, pred: Callable[[Frame], bool]) -> Frame:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(BOUND):
            while True:
                for frame in self.frames:
                    if pred(frame):
                        return frame
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    self.eof = True
                    raise EOFError
                self.frames += self.reader.feed(data)

    async def until_eof(self) -> None:
        with pytest.raises(EOFError):
            await self.until(lambda f: False)


@pytest.fixture
async def raw() -> AsyncIterator[tuple[YamuxSession, RawPeer]]:
    a, b = socket.socketpair()
    session = await start_session(a, "client")
    peer = RawPeer(b)
    yield session, peer
    session.abort()
    async with asyncio.timeout(BOUND):
        await session.wait_closed()
    b.close()


def wu(flags: int, sid: int, delta: int = 0) -> bytes:
    return encode_header(TYPE_WINDOW_UPDATE, flags, sid, delta)


async def test_peer_exceeding_the_window_gets_go_away(
    raw: tuple[YamuxSession, RawPeer],
) -> None:
    session, peer = raw
    _, protocol = await session.connect_stream(Collector)
    await peer.until(lambda f: f.header.flags == FLAG_SYN)
    await peer.send(wu(FLAG_ACK, 1) + encode_header(TYPE_DATA, 0, 1, INITIAL_WINDOW + 1))
    away = await peer.until(lambda f: f.header.type == TYPE_GO_AWAY)
    assert away.header.length == GO_AWAY_PROTOCOL_ERROR
    await peer.until_eof()
    assert isinstance(session.exception(), YamuxError)
    async with asyncio.timeout(BOUND):
        lost = await protocol.lost
    assert isinstance(lost, ConnectionClosed)
    assert isinstance(lost.__cause__, YamuxError)
    with pytest.raises(ConnectionClosed):
        await session.open_stream()


async def test_data_for_an_unknown_stream_is_an_error(
    raw: tuple[YamuxSession, RawPeer],
) -> None:
    session, peer = raw
    await peer.send(encode_header(TYPE_DATA, 0, 5, 3) + b"abc")
    away = await peer.until(lambda f: f.header.type == TYPE_GO_AWAY)
    assert away.header.length == GO_AWAY_PROTOCOL_ERROR
    assert isinstance(session.exception(), YamuxError)
    assert "never opened" in str(session.exception())


async def test_peer_close_fails_every_stream_promptly(
    raw: tuple[YamuxSession, RawPeer],
) -> None:
    session, peer = raw
    opened = [await session.connect_stream(Collector) for _ in range(3)]
    for stream, _ in opened:
        stream.write(b"pending request")
    await peer.until(lambda f: f.header.type == TYPE_DATA and f.header.stream_id == 5)
    peer.sock.close()
    async with asyncio.timeout(BOUND):
        for stream, protocol in opened:
            exc = await protocol.lost
            assert isinstance(exc, ConnectionClosed)
            assert stream.is_closing()
        await session.wait_closed()
    with pytest.raises(ConnectionClosed):
        await session.connect_stream(Collector)


async def test_peer_reset_and_refused_syn(raw: tuple[YamuxSession, RawPeer]) -> None:
    session, peer = raw
    _, protocol = await session.connect_stream(Collector)
    await peer.send(wu(FLAG_SYN, 2))  # a client accepts no streams: refused with RST
    refused = await peer.until(lambda f: f.header.stream_id == 2)
    assert refused.header.flags == FLAG_RST
    await peer.send(wu(FLAG_RST, 1))
    async with asyncio.timeout(BOUND):
        exc = await protocol.lost
    assert isinstance(exc, ConnectionClosed) and "reset" in str(exc)
    assert session.exception() is None and not session.is_closing()


async def test_go_away_with_error_fails_the_session(raw: tuple[YamuxSession, RawPeer]) -> None:
    session, peer = raw
    _, protocol = await session.connect_stream(Collector)
    await peer.send(encode_header(TYPE_GO_AWAY, 0, 0, 2))
    async with asyncio.timeout(BOUND):
        exc = await protocol.lost
    assert isinstance(exc, ConnectionClosed) and "code 2" in str(exc)


async def test_normal_go_away_keeps_open_streams(raw: tuple[YamuxSession, RawPeer]) -> None:
    session, peer = raw
    stream, protocol = await session.connect_stream(Collector)
    await peer.send(wu(FLAG_ACK, 1) + encode_header(TYPE_GO_AWAY, 0, 0, 0))
    await peer.send(encode_header(TYPE_DATA, 0, 1, 2) + b"ok")
    async with asyncio.timeout(BOUND):
        await eventually(lambda: protocol.data)
    assert bytes(protocol.data) == b"ok"
    with pytest.raises(ConnectionClosed):
        await session.open_stream()
    assert not stream.is_closing()


async def test_pings_are_answered(raw: tuple[YamuxSession, RawPeer]) -> None:
    _, peer = raw
    await peer.send(encode_header(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF))
    pong = await peer.until(lambda f: f.header.type == TYPE_PING)
    assert pong.header.flags == FLAG_ACK and pong.header.length == 0xDEADBEEF


async def test_no_heartbeat_by_default_and_a_missed_one_fails() -> None:
    assert YamuxConfig().heartbeat_interval is None
    a, b = socket.socketpair()
    config = YamuxConfig(heartbeat_interval=0.01, heartbeat_timeout=0.05)
    session = await start_session(a, "client", config)
    peer = RawPeer(b)
    try:
        ping = await peer.until(lambda f: f.header.type == TYPE_PING)
        assert ping.header.flags == FLAG_SYN
        # The peer never answers: the session is declared lost.
        await peer.until_eof()
        exc = session.exception()
        assert isinstance(exc, AgentTimeout)
    finally:
        session.abort()
        b.close()
        await session.wait_closed()


@pytest.mark.parametrize("server_factory", [None])
async def test_a_stream_the_peer_never_opens_a_window_for_fails_past_its_backlog(
    pair: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A protocol that ignores pause_writing (h2 answering a PING flood) against a peer that
    # grants no window: the stream fails typed instead of queueing without end.
    import agentio.transports.yamux.session as session_module

    monkeypatch.setattr(session_module, "MAX_STREAM_BACKLOG", 1 << 20)
    pair.server.pause_reading()  # the peer never reads: no window updates ever come
    stream, protocol = await pair.client.connect_stream(Collector)
    for _ in range(40):
        stream.write(b"x" * 65536)
    async with asyncio.timeout(BOUND):
        assert isinstance(await protocol.lost, YamuxError)
    assert stream.get_write_buffer_size() == 0
