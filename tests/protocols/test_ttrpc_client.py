"""TtrpcConnection and TtrpcClient against scripted peers and the real TtrpcServer."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agentio import errors
from agentio.protocols.ttrpc.client import (
    Connector,
    ProtocolFactory,
    TtrpcClient,
    TtrpcConnection,
)
from agentio.protocols.ttrpc.codec import (
    HEADER_SIZE,
    MAX_STREAM_ID,
    TYPE_DATA,
    TYPE_RESPONSE,
    Request,
    decode_request,
    encode_frame,
    encode_header,
    encode_response,
)
from agentio.protocols.ttrpc.server import ServerCall, TtrpcServer

BOUND = 5.0  # generous upper bound on "promptly"; tests never wait for it unless broken


class Peer:
    """The far end of a socketpair, scripted by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self) -> tuple[int, Request]:
        header = await self.reader.readexactly(HEADER_SIZE)
        body = await self.reader.readexactly(int.from_bytes(header[:4], "big"))
        return int.from_bytes(header[4:8], "big"), decode_request(body)

    def answer(self, stream_id: int, payload: bytes = b"", code: int = 0, msg: str = "") -> None:
        self.writer.write(encode_frame(stream_id, TYPE_RESPONSE,
                                       encode_response(payload, code, msg)))


PairFactory = Callable[..., Awaitable[tuple[TtrpcConnection, Peer]]]


@pytest.fixture
async def pair() -> AsyncIterator[PairFactory]:
    made: list[tuple[TtrpcConnection, Peer]] = []

    async def make(**kwargs: int) -> tuple[TtrpcConnection, Peer]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        _, conn = await loop.create_connection(lambda: TtrpcConnection(**kwargs), sock=ours)
        peer = Peer(*await asyncio.open_connection(sock=theirs))
        made.append((conn, peer))
        return conn, peer

    yield make
    for conn, peer in made:
        conn.close()
        peer.writer.close()
        await conn.wait_closed()


def _start(conn: TtrpcConnection, method: str = "Check", payload: bytes = b"",
           **kwargs: object) -> asyncio.Task[bytes]:
    return asyncio.create_task(conn.call("svc", method, payload, **kwargs))  # type: ignore[arg-type]


# --- multiplexing -------------------------------------------------------------------------


async def test_concurrent_calls_answered_in_reverse_order(pair: PairFactory) -> None:
    conn, peer = await pair()
    calls = [_start(conn, payload=str(i).encode()) for i in range(200)]
    requests = [await peer.request() for _ in calls]
    assert [sid for sid, _ in requests] == list(range(1, 400, 2))
    for stream_id, request in reversed(requests):
        peer.answer(stream_id, b"re:" + request.payload)
    assert await asyncio.gather(*calls) == [b"re:%d" % i for i in range(200)]
    assert conn.pending == 0


async def test_cancelled_call_is_forgotten_and_late_answer_ignored(
    pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    conn, peer = await pair()
    doomed = _start(conn)
    doomed_id, _ = await peer.request()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert conn.pending == 0
    survivor = _start(conn)
    survivor_id, _ = await peer.request()
    with caplog.at_level(logging.DEBUG, logger="agentio.protocols.ttrpc.client"):
        peer.answer(doomed_id, b"late")  # no cancel frame exists: the peer still answers
        peer.answer(survivor_id, b"ok")
        assert await survivor == b"ok"
    assert f"unknown stream {doomed_id}" in caplog.text
    assert not conn.is_closed


async def test_answer_for_unknown_stream_and_data_frames_are_ignored(
    pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    conn, peer = await pair()
    call = _start(conn)
    stream_id, _ = await peer.request()
    with caplog.at_level(logging.DEBUG, logger="agentio.protocols.ttrpc.client"):
        peer.answer(999, b"stray")
        peer.writer.write(encode_frame(stream_id, TYPE_DATA, b"data"))
        peer.writer.write(encode_frame(stream_id, 9, b"?"))
        peer.answer(stream_id, b"mine")
        assert await call == b"mine"
    assert "unknown stream 999" in caplog.text
    assert "type 3" in caplog.text and "type 9" in caplog.text


async def test_status_becomes_typed_error_naming_method(pair: PairFactory) -> None:
    conn, peer = await pair()
    call = _start(conn, "WaitProcess")
    stream_id, _ = await peer.request()
    peer.answer(stream_id, code=5, msg="InvalidExecId")
    with pytest.raises(errors.NotFound) as raised:
        await call
    assert raised.value.operation == "WaitProcess"
    assert str(raised.value) == "[NOT_FOUND] WaitProcess: InvalidExecId"


# --- what goes on the wire ----------------------------------------------------------------


async def test_timeout_nano_and_metadata_on_the_wire(pair: PairFactory) -> None:
    conn, peer = await pair()
    call = _start(conn, timeout=2.0, metadata=[("traceparent", "00-ab"), ("k", "v")])
    stream_id, request = await peer.request()
    assert 1_000_000_000 < request.timeout_nano <= 2_000_000_000
    assert request.metadata == (("traceparent", "00-ab"), ("k", "v"))
    assert (request.service, request.method) == ("svc", "Check")
    peer.answer(stream_id)
    assert await call == b""


async def test_long_poll_sends_no_timeout_but_is_bounded_locally(pair: PairFactory) -> None:
    conn, peer = await pair()
    call = _start(conn, "ReadStdout", timeout=0.05, send_timeout=False)
    _, request = await peer.request()
    assert request.timeout_nano == 0
    with pytest.raises(errors.DeadlineExceeded) as raised:
        await asyncio.wait_for(call, BOUND)
    assert raised.value.operation == "ReadStdout"
    assert conn.pending == 0 and not conn.is_closed


async def test_expired_call_leaves_others_undisturbed(pair: PairFactory) -> None:
    conn, peer = await pair()
    slow = _start(conn, "Slow", timeout=0.05)
    other = _start(conn, "Other")
    (slow_id, _), (other_id, _) = await peer.request(), await peer.request()
    with pytest.raises(errors.DeadlineExceeded):
        await slow
    peer.answer(slow_id, b"too late")
    peer.answer(other_id, b"fine")
    assert await other == b"fine"


async def test_no_timeout_means_no_timeout_nano(pair: PairFactory) -> None:
    conn, peer = await pair()
    call = _start(conn)
    stream_id, request = await peer.request()
    assert request.timeout_nano == 0
    peer.answer(stream_id)
    await call


# --- limits -------------------------------------------------------------------------------


async def test_oversized_response_fails_only_its_call(pair: PairFactory) -> None:
    conn, peer = await pair(max_payload=64)
    big, small = _start(conn), _start(conn)
    (big_id, _), (small_id, _) = await peer.request(), await peer.request()
    peer.writer.write(encode_frame(big_id, TYPE_RESPONSE, encode_response(bytes(100))))
    peer.answer(small_id, b"ok")
    with pytest.raises(errors.ResourceExhausted):
        await big
    assert await small == b"ok"
    assert not conn.is_closed


async def test_four_gib_header_fails_its_call_without_allocating(pair: PairFactory) -> None:
    conn, peer = await pair()
    call = _start(conn)
    stream_id, _ = await peer.request()
    peer.writer.write(encode_header(stream_id, TYPE_RESPONSE, 0xFFFF_FFFF) + bytes(65536))
    with pytest.raises(errors.ResourceExhausted):
        await call
    decoder = conn._decoder  # white box: nothing of the announced 4 GiB is held
    assert decoder.buffered == 0
    assert decoder.skipping > 0xFFFF_FFFF - 65536 - 1
    assert not conn.is_closed


async def test_oversized_request_refused_locally(pair: PairFactory) -> None:
    conn, peer = await pair(max_payload=64)
    with pytest.raises(errors.FrameTooLarge) as raised:
        await conn.call("svc", "Big", bytes(100))
    assert raised.value.operation == "Big"
    call = _start(conn)
    stream_id, _ = await peer.request()
    assert stream_id == 1  # the refused call took no stream id
    peer.answer(stream_id, b"ok")
    assert await call == b"ok"


async def test_max_pending_refuses_locally(pair: PairFactory) -> None:
    conn, peer = await pair(max_pending=2)
    first, second = _start(conn), _start(conn)
    await peer.request()
    await peer.request()
    with pytest.raises(errors.ResourceExhausted):
        await conn.call("svc", "Third", b"")
    assert conn.pending == 2
    first.cancel()
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert conn.pending == 0


async def test_stream_ids_never_wrap(pair: PairFactory) -> None:
    conn, peer = await pair(first_stream_id=MAX_STREAM_ID)
    call = _start(conn)
    stream_id, _ = await peer.request()
    assert stream_id == MAX_STREAM_ID
    assert conn.exhausted
    with pytest.raises(errors.ConnectionClosed, match="exhausted"):
        await conn.call("svc", "Next", b"")
    peer.answer(stream_id, b"last")
    assert await call == b"last"
    await asyncio.wait_for(conn.wait_closed(), BOUND)  # closed once the last call ended


def test_bad_first_stream_id_refused() -> None:
    for first in (2, 0, MAX_STREAM_ID + 2):
        with pytest.raises(errors.ConfigError):
            TtrpcConnection(first_stream_id=first)


# --- connection loss ----------------------------------------------------------------------


async def test_eof_fails_all_pending_and_later_calls_fast(pair: PairFactory) -> None:
    conn, peer = await pair()
    calls = [_start(conn, "WaitProcess") for _ in range(3)]
    for _ in calls:
        await peer.request()
    peer.writer.close()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND)
    for result in results:
        assert isinstance(result, errors.ConnectionClosed)
        assert result.operation == "WaitProcess"
        assert isinstance(result.__cause__, errors.ConnectionClosed)
    with pytest.raises(errors.ConnectionClosed, match="closed by the peer") as raised:
        await conn.call("svc", "Later", b"")
    assert raised.value.operation == "Later"


async def test_garbage_response_envelope_fails_the_connection(pair: PairFactory) -> None:
    conn, peer = await pair()
    first, second = _start(conn), _start(conn)
    (first_id, _), _ = await peer.request(), await peer.request()
    peer.writer.write(encode_frame(first_id, TYPE_RESPONSE, b"\xff\xff\xff"))
    for call in (first, second):
        with pytest.raises(errors.ConnectionClosed) as raised:
            await asyncio.wait_for(call, BOUND)
        assert isinstance(raised.value.__cause__, errors.ProtocolError)
    assert conn.is_closed


async def test_close_fails_pending_calls(pair: PairFactory) -> None:
    conn, peer = await pair()
    call = _start(conn)
    await peer.request()
    conn.close()
    with pytest.raises(errors.ConnectionClosed, match="closed locally"):
        await call
    await asyncio.wait_for(conn.wait_closed(), BOUND)


# --- flow control -------------------------------------------------------------------------


async def test_paused_transport_holds_writers_within_their_timeout(pair: PairFactory) -> None:
    conn, peer = await pair()
    conn.pause_writing()  # as the transport does when its buffer is over the high-water mark
    with pytest.raises(errors.DeadlineExceeded, match="transport stayed full"):
        await conn.call("svc", "Held", b"", timeout=0.05)
    held = _start(conn, "Held")
    await asyncio.sleep(0)  # let it reach the wait; nothing may be written meanwhile
    assert conn.pending == 0
    conn.resume_writing()
    stream_id, request = await peer.request()
    assert request.method == "Held"
    peer.answer(stream_id, b"ok")
    assert await held == b"ok"


async def test_answers_are_read_while_writes_are_paused(pair: PairFactory) -> None:
    conn, peer = await pair()
    first = _start(conn, "First")
    first_id, _ = await peer.request()
    # the peer stops reading; big requests fill the socket and then the transport buffer
    blob = bytes(1 << 20)
    writers = []
    while not conn.writing_paused:
        writers.append(_start(conn, "Write", blob))
        await asyncio.sleep(0)
        assert len(writers) < 200, "transport never paused"
    peer.answer(first_id, b"answered")
    assert await asyncio.wait_for(first, BOUND) == b"answered"  # no deadlock
    assert conn.writing_paused
    for _ in writers:  # the peer reads again: every held writer gets through
        stream_id, _ = await peer.request()
        peer.answer(stream_id)
    await asyncio.wait_for(asyncio.gather(*writers), BOUND)


# --- TtrpcClient --------------------------------------------------------------------------


class CountingConnector:
    """A unix-socket connector that counts dials and can be held at a gate."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.dials = 0
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(
        self, factory: ProtocolFactory
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        self.dials += 1
        self.entered.set()
        await self.gate.wait()
        return await asyncio.get_running_loop().create_unix_connection(factory, self.path)


Served = tuple[TtrpcServer, Path, "asyncio.Queue[ServerCall]"]


@pytest.fixture
async def served(sock_dir: Path) -> AsyncIterator[Served]:
    """A TtrpcServer on a unix socket; each call its handlers see is put in the queue."""
    server = TtrpcServer()
    seen: asyncio.Queue[ServerCall] = asyncio.Queue()

    async def check(call: ServerCall) -> bytes:
        seen.put_nowait(call)
        return b"\x08\x01"

    async def wait_process(call: ServerCall) -> bytes:
        seen.put_nowait(call)
        await asyncio.Event().wait()  # a long poll: ends only when cancelled
        return b""

    server.register("grpc.Health", {"Check": check})
    server.register("grpc.AgentService", {"WaitProcess": wait_process})
    path = sock_dir / "agent.sock"
    await server.start_unix(str(path))
    yield server, path, seen
    await server.close()


async def test_ten_concurrent_first_calls_open_one_connection(
    served: Served,
) -> None:
    server, path, seen = served
    connector = CountingConnector(path)
    connector.gate.clear()
    async with TtrpcClient(connector) as client:
        calls = [asyncio.create_task(client.call("grpc.Health", "Check", b""))
                 for _ in range(10)]
        await connector.entered.wait()  # all ten are already waiting on the one dial
        connector.gate.set()
        assert await asyncio.gather(*calls) == [b"\x08\x01"] * 10
        assert connector.dials == 1
        assert len({seen.get_nowait().stream_id for _ in range(10)}) == 10
        assert len(server._connections) == 1


async def test_server_killed_fails_long_polls_then_explicit_reconnect(
    served: Served,
) -> None:
    server, path, seen = served
    connector = CountingConnector(path)
    client = TtrpcClient(connector)
    polls = [asyncio.create_task(client.call("grpc.AgentService", "WaitProcess", b"",
                                             timeout=60, send_timeout=False))
             for _ in range(5)]
    for _ in polls:  # every long poll has reached its handler
        await asyncio.wait_for(seen.get(), BOUND)
    await server.close()
    results = await asyncio.wait_for(asyncio.gather(*polls, return_exceptions=True), BOUND)
    causes = set()
    for result in results:
        assert isinstance(result, errors.ConnectionClosed)
        assert result.operation == "WaitProcess"
        causes.add(result.__cause__)
    assert len(causes) == 1 and None not in causes  # one cause, shared by all five

    # failed state: fail fast naming the cause, without dialling again
    restarted = TtrpcServer()
    restarted.register("grpc.Health", {"Check": _serving})
    await restarted.start_unix(str(path))
    try:
        for _ in range(2):
            with pytest.raises(errors.ConnectionClosed) as raised:
                await client.call("grpc.Health", "Check", b"")
            assert raised.value.__cause__ in causes
            assert raised.value.message == results[0].message  # type: ignore[union-attr]
        assert connector.dials == 1
        await client.reconnect()
        assert await client.call("grpc.Health", "Check", b"") == b"\x08\x01"
        assert connector.dials == 2
    finally:
        await client.close()
        await restarted.close()
    with pytest.raises(errors.ConnectionClosed, match="client closed"):
        await client.call("grpc.Health", "Check", b"")


async def _serving(call: ServerCall) -> bytes:
    return b"\x08\x01"


async def test_dial_bounded_by_call_timeout(sock_dir: Path) -> None:
    connector = CountingConnector(sock_dir / "nobody.sock")
    connector.gate.clear()  # the dial hangs, like a VM still booting
    client = TtrpcClient(connector)
    with pytest.raises(errors.DeadlineExceeded, match="not connected"):
        await client.call("grpc.Health", "Check", b"", timeout=0.05)
    await client.close()  # cancels the hanging dial
    assert connector.dials == 1


async def test_dial_error_reaches_callers_and_next_call_redials(sock_dir: Path) -> None:
    connector = CountingConnector(sock_dir / "nobody.sock")
    client = TtrpcClient(connector)
    for _ in range(2):
        with pytest.raises(OSError):
            await client.call("grpc.Health", "Check", b"")
    assert connector.dials == 2
    assert client.connection is None
    await client.close()


async def test_exhausted_connection_is_replaced_transparently(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path, seen = served
    connector = CountingConnector(path)
    async with TtrpcClient(connector) as client:
        monkeypatch.setattr(client, "_new_connection",
                            lambda: TtrpcConnection(first_stream_id=MAX_STREAM_ID))
        for _ in range(3):
            assert await client.call("grpc.Health", "Check", b"") == b"\x08\x01"
        assert connector.dials == 3
        assert [seen.get_nowait().stream_id for _ in range(3)] == [MAX_STREAM_ID] * 3


def test_client_rejects_bad_limits() -> None:
    connector: Connector = CountingConnector(Path("/nonexistent"))
    with pytest.raises(errors.ConfigError):
        TtrpcClient(connector, max_pending=0)
    with pytest.raises(errors.ConfigError):
        TtrpcClient(connector, max_payload=-1)


async def test_cancel_landing_as_the_dial_completes_still_cancels_the_call() -> None:
    # The cancel is scheduled from inside the connector, so it reaches the caller in the very
    # iteration the dial finishes: asyncio.wait_for on 3.11 returned the dial's result then and
    # swallowed the cancel, and the caller went on (a Ctrl-C'd program kept running).
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    peer_reader, peer_writer = await asyncio.open_connection(sock=theirs)
    caller: asyncio.Task[bytes] | None = None

    async def connector(factory: ProtocolFactory) -> tuple[asyncio.BaseTransport, TtrpcConnection]:
        transport, conn = await loop.create_connection(factory, sock=ours)
        assert caller is not None
        loop.call_soon(caller.cancel)
        return transport, conn

    async with TtrpcClient(connector) as client:
        caller = asyncio.create_task(client.call("grpc.Health", "Check", b"", timeout=BOUND))
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert caller.cancelled()
    peer_writer.close()
    assert await peer_reader.read() == b""  # the cancelled call never went on the wire
