"""TtrpcServer driven by raw frames: wordings, limits, deadlines, teardown, backpressure."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agentio import errors
from agentio.protocols.ttrpc.codec import (
    HEADER_SIZE,
    TYPE_REQUEST,
    Response,
    decode_response,
    encode_frame,
    encode_header,
    encode_request,
)
from agentio.protocols.ttrpc.server import Handler, ServerCall, TtrpcServer, WireStyle

BOUND = 5.0  # generous upper bound on "promptly"


class Client:
    """A raw ttrpc client: writes request frames, reads response frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, stream_id: int, service: str, method: str, payload: bytes = b"",
             timeout_nano: int = 0) -> None:
        body = encode_request(service, method, payload, timeout_nano)
        self.writer.write(encode_frame(stream_id, TYPE_REQUEST, body))

    async def receive(self) -> tuple[int, int, Response]:
        header = await asyncio.wait_for(self.reader.readexactly(HEADER_SIZE), BOUND)
        body = await self.reader.readexactly(int.from_bytes(header[:4], "big"))
        return int.from_bytes(header[4:8], "big"), header[8], decode_response(body)


async def _echo(call: ServerCall) -> bytes:
    return b"echo:" + call.payload


Connect = Callable[..., Awaitable[tuple[TtrpcServer, Client]]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Make a server (with the echo service) and a raw client over a socketpair."""
    made: list[tuple[TtrpcServer, Client]] = []

    async def make(wire_style: WireStyle = "go", max_payload: int = 4 << 20,
                   max_in_flight: int = 10_000,
                   **methods: Handler) -> tuple[TtrpcServer, Client]:
        server = TtrpcServer(wire_style=wire_style, max_payload=max_payload,
                             max_in_flight=max_in_flight)
        server.register("svc", {"Echo": _echo, **methods})
        ours, theirs = socket.socketpair()
        await server.serve_socket(theirs)
        client = Client(*await asyncio.open_connection(sock=ours))
        made.append((server, client))
        return server, client

    yield make
    for server, client in made:
        client.writer.close()
        await server.close()


async def _roundtrip_ok(client: Client, stream_id: int = 101) -> None:
    client.send(stream_id, "svc", "Echo", b"x")
    answer_id, frame_type, response = await client.receive()
    assert (answer_id, frame_type, response.code, response.payload) == (stream_id, 2, 0, b"echo:x")


# --- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "even", "no_service", "no_method"),
    [
        ("go", (3, "StreamID must be odd for client initiated streams"),
         (12, "service nope"), (12, "method Nope")),
        ("rust", (3, "stream id must be odd"),
         (3, "nope service does not exist"), (12, "Nope method")),
    ],
)
async def test_refusals_use_each_wire_style_wording(
    connect: Connect, style: WireStyle,
    even: tuple[int, str], no_service: tuple[int, str], no_method: tuple[int, str],
) -> None:
    _, client = await connect(style)
    client.send(2, "svc", "Echo")
    client.send(3, "nope", "Echo")
    client.send(5, "svc", "Nope")
    answers = [await client.receive() for _ in range(3)]
    assert [(sid, r.code, r.message) for sid, _, r in answers] == [
        (2, *even), (3, *no_service), (5, *no_method)
    ]
    await _roundtrip_ok(client)  # the connection stays usable


async def test_success_status_form_follows_wire_style(connect: Connect) -> None:
    _, go = await connect("go")
    _, rust = await connect("rust")
    for client, explicit in ((go, False), (rust, True)):
        client.send(1, "svc", "Echo", b"")
        _, _, response = await client.receive()
        assert (response.code, response.payload, response.has_status) == (0, b"echo:", explicit)


async def test_garbage_request_payload_is_invalid_argument(connect: Connect) -> None:
    _, client = await connect()
    client.writer.write(encode_frame(1, TYPE_REQUEST, b"\xff\xff\xff"))
    _, _, response = await client.receive()
    assert (response.code, response.message) == (3, "unmarshal request error: unexpected EOF")
    await _roundtrip_ok(client)


async def test_unknown_frame_types_are_ignored(connect: Connect) -> None:
    _, client = await connect()
    client.writer.write(encode_frame(1, 5, b"\x01\x02") + encode_frame(1, 3, b"data"))
    client.writer.write(encode_frame(7, 2, b""))  # a response sent to a server
    await _roundtrip_ok(client, 9)


async def test_handler_errors_become_statuses(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    async def not_found(call: ServerCall) -> bytes:
        raise errors.NotFound("InvalidExecId")

    async def crash(call: ServerCall) -> bytes:
        raise RuntimeError("disk on fire")

    async def own_timeout(call: ServerCall) -> bytes:
        raise TimeoutError("inner wait")

    async def wrong_type(call: ServerCall) -> bytes:
        return "text"  # type: ignore[return-value]

    _, client = await connect(NotFound=not_found, Crash=crash, Own=own_timeout,
                              Wrong=wrong_type)
    with caplog.at_level(logging.ERROR, logger="agentio.protocols.ttrpc.server"):
        for stream_id, method in ((1, "NotFound"), (3, "Crash"), (5, "Own"), (7, "Wrong")):
            client.send(stream_id, "svc", method, timeout_nano=10**10)
            answer = await client.receive()
            assert answer[0] == stream_id
            assert (answer[2].code, answer[2].message) == {
                "NotFound": (5, "InvalidExecId"), "Crash": (13, "disk on fire"),
                "Own": (13, "inner wait"), "Wrong": (13, "handler returned str"),
            }[method]
    assert "svc/Crash failed" in caplog.text and "disk on fire" in caplog.text


# --- limits and deadlines -----------------------------------------------------------------


async def test_oversized_request_answered_and_connection_kept(connect: Connect) -> None:
    _, client = await connect(max_payload=64)
    client.writer.write(encode_header(5, TYPE_REQUEST, 100))
    for _ in range(10):  # the oversized payload arrives in pieces
        client.writer.write(bytes(10))
    _, _, response = await client.receive()
    assert (response.code, response.message) == (
        8, "message length 100 exceed maximum message size of 64"
    )
    await _roundtrip_ok(client)


async def test_oversized_answer_becomes_resource_exhausted(connect: Connect) -> None:
    async def huge(call: ServerCall) -> bytes:
        return bytes(100)

    _, client = await connect(max_payload=64, Huge=huge)
    client.send(1, "svc", "Huge")
    _, _, response = await client.receive()
    assert response.code == 8 and "exceeds maximum message size of 64" in response.message


async def test_timeout_nano_cancels_handler_with_deadline_exceeded(connect: Connect) -> None:
    cancelled = asyncio.Event()

    async def wait_forever(call: ServerCall) -> bytes:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return b""

    _, client = await connect(Wait=wait_forever)
    client.send(1, "svc", "Wait", timeout_nano=20_000_000)
    await _roundtrip_ok(client)  # others are served while it waits
    _, _, response = await client.receive()
    assert (response.code, response.message) == (4, "timeout")
    assert cancelled.is_set()


async def test_handlers_cancelled_when_connection_closes(connect: Connect) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def long_poll(call: ServerCall) -> bytes:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    server, client = await connect(Poll=long_poll)
    client.send(1, "svc", "Poll")
    await asyncio.wait_for(started.wait(), BOUND)
    client.writer.close()
    await asyncio.wait_for(cancelled.wait(), BOUND)
    assert not server._connections  # forgotten in the same callback that cancelled it


async def test_requests_in_flight_are_capped_per_connection(connect: Connect) -> None:
    running, cancelled = asyncio.Queue[None](), asyncio.Queue[None]()

    async def long_poll(call: ServerCall) -> bytes:
        running.put_nowait(None)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.put_nowait(None)
            raise
        return b""

    server, client = await connect(max_in_flight=3, Poll=long_poll)
    assert server.max_in_flight == 3
    for stream_id in (1, 3, 5, 7, 9):
        client.send(stream_id, "svc", "Poll")
    refused = [await client.receive() for _ in range(2)]
    assert [(sid, r.code) for sid, _, r in refused] == [(7, 8), (9, 8)]  # RESOURCE_EXHAUSTED
    assert "at most 3" in refused[0][2].message
    async with asyncio.timeout(BOUND):
        for _ in range(3):
            await running.get()
        client.writer.close()  # the three running handlers are cancelled with the connection
        for _ in range(3):
            await cancelled.get()
    assert running.empty()


# --- backpressure -------------------------------------------------------------------------


async def test_stops_reading_a_client_that_stops_reading(connect: Connect) -> None:
    called = asyncio.Event()

    async def big(call: ServerCall) -> bytes:
        called.set()
        return bytes(1 << 20)

    server, client = await connect(Big=big)
    (conn,) = server._connections
    transport = conn._transport
    assert transport is not None and transport.is_reading()
    client.send(1, "svc", "Big")
    await asyncio.wait_for(called.wait(), BOUND)
    await asyncio.gather(*conn._tasks)  # the handler has returned and its answer is written
    # 1 MiB does not fit in the socket: the rest waits in the transport, over the high-water
    # mark, so the server must not take more requests from this client
    assert not transport.is_reading()
    stream_id, _, response = await client.receive()
    assert (stream_id, len(response.payload)) == (1, 1 << 20)
    assert transport.is_reading()  # drained: reading resumed
    await _roundtrip_ok(client)


# --- unix sockets and teardown ------------------------------------------------------------


async def test_unix_socket_mode_0600_and_unlinked_on_close(sock_dir: Path) -> None:
    path = sock_dir / "agent.sock"
    server = TtrpcServer()
    server.register("svc", {"Echo": _echo})
    await server.start_unix(str(path))
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    client = Client(*await asyncio.open_unix_connection(str(path)))
    await _roundtrip_ok(client)
    client.writer.close()
    await server.close()
    assert not path.exists()


async def test_stale_socket_replaced_other_files_refused(sock_dir: Path) -> None:
    stale = sock_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))
    leftover.close()
    server = TtrpcServer()
    await server.start_unix(str(stale))
    regular = sock_dir / "file"
    regular.write_text("keep me")
    with pytest.raises(errors.ConfigError):
        await server.start_unix(str(regular))
    assert regular.read_text() == "keep me"
    await server.close()


async def test_close_cancels_every_handler_and_leaks_no_task(sock_dir: Path) -> None:
    started = asyncio.Queue[None]()

    async def long_poll(call: ServerCall) -> bytes:
        started.put_nowait(None)
        await asyncio.Event().wait()
        return b""

    server = TtrpcServer()
    server.register("svc", {"Poll": long_poll})
    await server.start_unix(str(sock_dir / "a.sock"))
    clients = [Client(*await asyncio.open_unix_connection(str(sock_dir / "a.sock")))
               for _ in range(3)]
    for client in clients:
        client.send(1, "svc", "Poll")
        client.send(3, "svc", "Poll")
    for _ in range(6):
        await asyncio.wait_for(started.get(), BOUND)
    await server.close()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    for client in clients:  # every connection was closed by the server
        assert await asyncio.wait_for(client.reader.read(), BOUND) == b""
        client.writer.close()
    with pytest.raises(errors.ConfigError):
        server.make_protocol()


def test_bad_configuration_refused() -> None:
    with pytest.raises(errors.ConfigError):
        TtrpcServer(wire_style="java")  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigError):
        TtrpcServer(max_payload=-1)
