"""GrpcClient end to end against an in-process grpclib server on a unix socket.

The server plays a Kata 1.x agent with the 1.x message classes; the client only moves bytes.
A recording proxy between them lets the tests read what the client put on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from agentio import errors
from agentio.proto.kata1 import grpc as pb
from agentio.protocols.grpc import GrpcClient, RawCodec

HEALTH = "grpc.Health"
AGENT = "grpc.AgentService"


class FakeAgent:
    """Enough of the 1.x AgentService to drive the channel; behaviour keyed by exec_id."""

    def __init__(self) -> None:
        self.deadlines: list[tuple[str, float | None]] = []
        self.blocked = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.big = 4096

    def __mapping__(self) -> dict[str, Handler]:
        return {
            f"/{HEALTH}/Check": Handler(self.check, Cardinality.UNARY_UNARY, bytes, bytes),
            f"/{AGENT}/ReadStdout": Handler(self.read, Cardinality.UNARY_UNARY, bytes, bytes),
            f"/{AGENT}/WaitProcess": Handler(self.wait, Cardinality.UNARY_UNARY, bytes, bytes),
        }

    def _note(self, method: str, stream: Stream[Any, Any]) -> None:
        left = stream.deadline.time_remaining() if stream.deadline is not None else None
        self.deadlines.append((method, left))

    async def check(self, stream: Stream[bytes, bytes]) -> None:
        self._note("Check", stream)
        request = pb.CheckRequest.parse(await _recv(stream))
        status = pb.HealthCheckResponseServingStatus.SERVING
        if request.service == "down":
            status = pb.HealthCheckResponseServingStatus.NOT_SERVING
        await stream.send_message(bytes(pb.HealthCheckResponse(status=status)))

    async def read(self, stream: Stream[bytes, bytes]) -> None:
        self._note("ReadStdout", stream)
        request = pb.ReadStreamRequest.parse(await _recv(stream))
        if request.exec_id == "done":
            raise GRPCError(Status.UNKNOWN, "EOF")
        if request.exec_id == "missing":
            raise GRPCError(Status.NOT_FOUND, f"Process {request.exec_id} not found")
        if request.exec_id == "block":
            self.blocked.set()
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled.set()
        data = b"x" * self.big if request.exec_id == "big" else b"out\n"[: request.len]
        await stream.send_message(bytes(pb.ReadStreamResponse(data=data)))

    async def wait(self, stream: Stream[bytes, bytes]) -> None:
        self._note("WaitProcess", stream)
        pb.WaitProcessRequest.parse(await _recv(stream))
        await stream.send_message(bytes(pb.WaitProcessResponse(status=3)))


async def _recv(stream: Stream[bytes, bytes]) -> bytes:
    message = await stream.recv_message()
    assert message is not None
    return message


class Proxy:
    """Pipes unix connections to the server, keeping every byte the client sent."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path, self.target = path, target
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        if keep:
                            self.sent += data
                        dst.write(data)
                        await dst.drain()
            finally:
                dst.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer, True)),
                 asyncio.create_task(pipe(up_reader, writer, False))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    def client_events(self) -> list[h2.events.Event]:
        """The client's bytes as an HTTP/2 server sees them."""
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        return list(conn.receive_data(bytes(self.sent)))


def _headers(event: h2.events.RequestReceived) -> dict[str, str]:
    return {bytes(k).decode(): bytes(v).decode() for k, v in event.headers or ()}


class Dialer:
    """A connector to a unix path that counts dials and keeps the transports it made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.transports: list[asyncio.BaseTransport] = []
        self.protocols: list[asyncio.BaseProtocol] = []

    async def __call__(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(factory, str(self.path))
        self.transports.append(transport)
        self.protocols.append(protocol)
        return transport, protocol


@pytest.fixture
async def agent(sock_dir: Path) -> AsyncIterator[tuple[FakeAgent, Path]]:
    service = FakeAgent()
    server = Server([service], codec=RawCodec())
    path = sock_dir / "agent.sock"
    await server.start(path=str(path))
    yield service, path
    server.close()
    await server.wait_closed()


@pytest.fixture
async def client(agent: tuple[FakeAgent, Path]) -> AsyncIterator[tuple[GrpcClient, Dialer]]:
    dialer = Dialer(agent[1])
    async with GrpcClient(dialer, max_message=1024) as grpc_client:
        yield grpc_client, dialer


async def _read(client: GrpcClient, exec_id: str, *, timeout: float | None = 5.0,
                send_timeout: bool = False) -> bytes:
    request = pb.ReadStreamRequest(container_id="c1", exec_id=exec_id, len=1024)
    reply = await client.call(AGENT, "ReadStdout", bytes(request), timeout=timeout,
                              send_timeout=send_timeout)
    return pb.ReadStreamResponse.parse(reply).data


async def test_unary_call_carries_1x_messages(client: tuple[GrpcClient, Dialer]) -> None:
    grpc_client, dialer = client
    reply = await grpc_client.call(HEALTH, "Check", b"", timeout=5)
    assert pb.HealthCheckResponse.parse(reply).status == pb.HealthCheckResponseServingStatus.SERVING
    down = await grpc_client.call(HEALTH, "Check", bytes(pb.CheckRequest(service="down")))
    assert pb.HealthCheckResponse.parse(down).status.name == "NOT_SERVING"
    assert await _read(grpc_client, "e1") == b"out\n"
    assert len(dialer.transports) == 1


async def test_concurrent_calls_share_one_connection(client: tuple[GrpcClient, Dialer]) -> None:
    grpc_client, dialer = client
    replies = await asyncio.gather(*(
        grpc_client.call(AGENT, "WaitProcess", bytes(pb.WaitProcessRequest(exec_id=f"e{i}")),
                         timeout=5)
        for i in range(40)))
    assert [pb.WaitProcessResponse.parse(r).status for r in replies] == [3] * 40
    assert len(dialer.transports) == 1
    assert grpc_client.pending == 0


@pytest.mark.parametrize(("exec_id", "error", "eof"), [
    ("done", errors.Unknown, True),  # how a 1.x agent says end of output
    ("missing", errors.NotFound, False),
])
async def test_status_becomes_the_typed_error(
    client: tuple[GrpcClient, Dialer], exec_id: str, error: type[errors.RpcError], eof: bool
) -> None:
    with pytest.raises(error) as raised:
        await _read(client[0], exec_id)
    assert raised.value.operation == "ReadStdout"
    assert errors.is_end_of_stream(raised.value) is eof
    assert await _read(client[0], "e1") == b"out\n"  # the connection carries on


async def test_wire_has_timeouts_only_on_ordinary_calls_and_no_pings(
    agent: tuple[FakeAgent, Path], sock_dir: Path
) -> None:
    service, path = agent
    proxy = Proxy(sock_dir / "proxy.sock", path)
    await proxy.start()
    try:
        async with GrpcClient(Dialer(proxy.path)) as grpc_client:
            await grpc_client.call(HEALTH, "Check", b"", timeout=30)
            await _read(grpc_client, "e1", timeout=30, send_timeout=False)
            await grpc_client.call(AGENT, "WaitProcess", b"", timeout=None)
    finally:
        await proxy.stop()
    events = proxy.client_events()
    headers = [_headers(e) for e in events if isinstance(e, h2.events.RequestReceived)]
    assert [h[":path"] for h in headers] == [
        "/grpc.Health/Check", "/grpc.AgentService/ReadStdout", "/grpc.AgentService/WaitProcess"]
    assert [h.get("grpc-timeout") is not None for h in headers] == [True, False, False]
    assert all(h["content-type"] == "application/grpc" and h["te"] == "trailers"
               for h in headers)
    assert not [e for e in events if isinstance(e, h2.events.PingReceived)]
    [(_, left), (_, none1), (_, none2)] = service.deadlines
    assert left is not None and 25 < left <= 30
    assert none1 is None and none2 is None


async def test_long_poll_is_bounded_here_and_cancelled_on_the_wire(
    agent: tuple[FakeAgent, Path], client: tuple[GrpcClient, Dialer]
) -> None:
    service, _ = agent
    # the bound is ours alone (no grpc-timeout goes out); it is long enough for the handler
    # to be reached first on a loaded machine, which the test waits for
    call = asyncio.create_task(_read(client[0], "block", timeout=2.0))
    async with asyncio.timeout(5):
        await service.blocked.wait()
    with pytest.raises(errors.DeadlineExceeded, match="ReadStdout"):
        await call
    async with asyncio.timeout(5):
        await service.cancelled.wait()  # RST_STREAM reached the handler
    assert service.deadlines[-1] == ("ReadStdout", None)
    assert await _read(client[0], "e1") == b"out\n"


async def test_zero_timeout_fails_before_sending(client: tuple[GrpcClient, Dialer]) -> None:
    with pytest.raises(errors.DeadlineExceeded):
        await client[0].call(HEALTH, "Check", b"", timeout=0)
    assert client[1].transports == []


async def test_oversized_response_fails_the_call_not_the_connection(
    agent: tuple[FakeAgent, Path], client: tuple[GrpcClient, Dialer]
) -> None:
    agent[0].big = 4096
    with pytest.raises(errors.FrameTooLarge, match="exceeds maximum message size of 1024"):
        await _read(client[0], "big")
    assert await _read(client[0], "e1") == b"out\n"
    assert len(client[1].transports) == 1


async def test_oversized_request_is_refused_before_sending(
    client: tuple[GrpcClient, Dialer]
) -> None:
    with pytest.raises(errors.FrameTooLarge, match="WriteStdin"):
        await client[0].call(AGENT, "WriteStdin", b"x" * 1025, timeout=5)
    assert client[1].transports == []


async def test_lost_connection_fails_pending_and_later_calls_until_reconnect(
    agent: tuple[FakeAgent, Path], client: tuple[GrpcClient, Dialer]
) -> None:
    service, _ = agent
    grpc_client, dialer = client
    pending = asyncio.create_task(_read(grpc_client, "block", timeout=None))
    await asyncio.wait_for(service.blocked.wait(), 5)
    dialer.transports[0].abort()  # type: ignore[attr-defined]
    with pytest.raises(errors.ConnectionClosed, match="ReadStdout"):
        await pending
    with pytest.raises(errors.ConnectionClosed, match="reconnect"):
        await grpc_client.call(HEALTH, "Check", b"", timeout=5)
    assert len(dialer.transports) == 1  # no silent redial
    await grpc_client.reconnect()
    assert len(dialer.transports) == 2
    assert await _read(grpc_client, "e1") == b"out\n"


async def test_close_refuses_calls_and_closes_the_transport(
    client: tuple[GrpcClient, Dialer]
) -> None:
    grpc_client, dialer = client
    await grpc_client.call(HEALTH, "Check", b"", timeout=5)
    await grpc_client.close()
    assert dialer.transports[0].is_closing()
    assert dialer.protocols[0].lost.done()  # type: ignore[attr-defined]
    with pytest.raises(errors.ConnectionClosed, match="client closed"):
        await grpc_client.call(HEALTH, "Check", b"", timeout=5)
    await grpc_client.close()  # idempotent


async def test_dial_errors_pass_through_with_the_operation() -> None:
    async def refuse(factory: Callable[[], asyncio.Protocol]) -> Any:
        raise errors.DialError("agent unreachable")

    async with GrpcClient(refuse) as grpc_client:
        with pytest.raises(errors.DialError, match="Check: agent unreachable"):
            await grpc_client.call(HEALTH, "Check", b"", timeout=5)


async def test_a_connector_must_run_the_given_protocol() -> None:
    made: list[asyncio.BaseTransport] = []

    async def foreign(factory: Callable[[], asyncio.Protocol]) -> Any:
        ours, theirs = socket.socketpair()
        theirs.close()
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(asyncio.Protocol, sock=ours)
        made.append(transport)
        return transport, protocol

    async with GrpcClient(foreign) as grpc_client:
        with pytest.raises(errors.ConfigError, match="protocol"):
            await grpc_client.call(HEALTH, "Check", b"", timeout=5)
    assert made[0].is_closing()


def test_limits_are_validated_and_no_loop_is_needed_to_build() -> None:
    async def never(factory: Callable[[], asyncio.Protocol]) -> Any:
        raise AssertionError("not dialled")

    GrpcClient(never)
    with pytest.raises(errors.ConfigError):
        GrpcClient(never, max_message=0)
    with pytest.raises(errors.ConfigError):
        GrpcClient(never, max_pending=0)


async def test_a_peer_that_is_not_http2_fails_the_call_at_once_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # e.g. a ttrpc agent reached with the kata1 type: grpclib's event handler raised in
    # data_received, and the loop printed a "Fatal error" traceback before closing
    peers: list[socket.socket] = []

    async def ttrpc_peer(factory: Callable[[], asyncio.Protocol]) -> Any:
        ours, theirs = socket.socketpair()
        peers.append(theirs)
        # bytes h2 parses but grpclib cannot handle: an empty SETTINGS, then a frame of an
        # unknown type (0x20), as a ttrpc header can look to an HTTP/2 parser
        theirs.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                       b"\x00\x00\x02\x20\x00\x00\x00\x00\x01ok")
        loop = asyncio.get_running_loop()
        return await loop.create_unix_connection(factory, sock=ours)

    loop = asyncio.get_running_loop()
    async with GrpcClient(ttrpc_peer) as grpc_client:
        started = loop.time()
        with pytest.raises(errors.AgentConnectionError):
            await grpc_client.call(HEALTH, "Check", b"", timeout=30)
        assert loop.time() - started < 5
    for peer in peers:
        peer.close()
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert any("not an HTTP/2 peer" in r.getMessage() for r in caplog.records)
