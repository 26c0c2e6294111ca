"""Guards the grpclib internals agentio.protocols.grpc relies on.

grpclib has no public way to run a channel over a connection we made, so the gRPC client
overrides ``Channel._create_connection()`` and bounds message reads in a ``Stream`` subclass.
These tests pin exactly that surface; when one fails after a grpclib upgrade, re-check
agentio/protocols/grpc/client.py before relaxing it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import grpclib.client
import grpclib.protocol
import grpclib.server
import pytest
from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from agentio.protocols.grpc import RawCodec


def test_pinned_minor_version() -> None:
    major, minor, *_ = version("grpclib").split(".")
    assert (major, minor) == ("0", "4")


def test_create_connection_is_a_coroutine_of_self_returning_the_protocol() -> None:
    hook = grpclib.client.Channel._create_connection
    assert inspect.iscoroutinefunction(hook)
    assert list(inspect.signature(hook).parameters) == ["self"]
    assert "_create_connection()" in inspect.getsource(grpclib.client.Channel.__connect__)


def test_protocol_construction_matches_what_we_build() -> None:
    # _ConnectorChannel builds H2Protocol(Handler(), self._config, self._h2_config) itself.
    source = inspect.getsource(grpclib.client.Channel._protocol_factory)
    assert "H2Protocol(Handler(), self._config, self._h2_config)" in source
    params = list(inspect.signature(grpclib.protocol.H2Protocol.__init__).parameters)
    assert params == ["self", "handler", "config", "h2_config"]
    assert "connection_lost" in vars(grpclib.protocol.H2Protocol)


def test_stream_internals_used_by_the_bounded_read() -> None:
    source = inspect.getsource(grpclib.client.Stream)
    for name in ("self._recv_initial_metadata_done", "self._wrapper", "self._stream ="):
        assert name in source, name
    assert list(inspect.signature(grpclib.protocol.Stream.recv_data).parameters) == [
        "self", "size"]
    params = inspect.signature(grpclib.client.Channel.request).parameters
    assert list(params)[:5] == ["self", "name", "cardinality", "request_type", "reply_type"]
    assert {"timeout", "deadline", "metadata"} <= set(params)


def test_client_sends_no_keepalive_pings_by_default() -> None:
    config = Configuration(_keepalive_time=None).__for_client__()
    assert config._keepalive_time is None
    assert Configuration().__for_client__()._keepalive_time is None


class _Echo:
    def __mapping__(self) -> dict[str, Handler]:
        return {"/t.Echo/Say": Handler(self.say, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def say(self, stream: Stream[bytes, bytes]) -> None:
        message = await stream.recv_message()
        assert message is not None
        await stream.send_message(message[::-1])


class _Tracked(grpclib.protocol.H2Protocol):
    gone: asyncio.Event

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.gone.set()


class _OwnSocketChannel(grpclib.client.Channel):
    """The hook as agentio uses it: connect ourselves, hand grpclib the protocol."""

    def __init__(self, target: Path) -> None:
        super().__init__(path="unused", codec=RawCodec())
        self.target = target
        self.transports: list[asyncio.BaseTransport] = []
        self.protocols: list[_Tracked] = []

    async def _create_connection(self) -> grpclib.protocol.H2Protocol:
        loop = asyncio.get_running_loop()
        def factory() -> _Tracked:
            protocol = _Tracked(grpclib.client.Handler(), self._config, self._h2_config)
            protocol.gone = asyncio.Event()
            return protocol

        transport, protocol = await loop.create_unix_connection(factory, str(self.target))
        self.transports.append(transport)
        self.protocols.append(protocol)
        return protocol


@pytest.fixture
async def echo_path(sock_dir: Path) -> AsyncIterator[Path]:
    server = Server([_Echo()], codec=RawCodec())
    path = sock_dir / "echo.sock"
    await server.start(path=str(path))
    yield path
    server.close()
    await server.wait_closed()


async def _say(channel: grpclib.client.Channel, text: bytes) -> bytes:
    async with channel.request("/t.Echo/Say", Cardinality.UNARY_UNARY, bytes, bytes) as stream:
        await stream.send_message(text, end=True)
        reply = await stream.recv_message()
    assert isinstance(reply, bytes)
    return reply


async def test_the_hook_is_used_and_called_again_after_a_lost_connection(
    echo_path: Path,
) -> None:
    channel = _OwnSocketChannel(echo_path)
    try:
        assert await _say(channel, b"abc") == b"cba"
        assert await _say(channel, b"xy") == b"yx"
        assert len(channel.transports) == 1  # one connection for both calls
        channel.transports[0].abort()  # type: ignore[attr-defined]
        await asyncio.wait_for(channel.protocols[0].gone.wait(), 5)
        assert await _say(channel, b"12") == b"21"
        assert len(channel.transports) == 2
    finally:
        channel.close()


def test_server_internals_used_by_the_local_grpc_server() -> None:
    # GrpcServer takes each connection's protocol from Server._protocol_factory() (to serve
    # HTTP/2 on yamux streams) and waits for Server._handlers on close.
    factory = grpclib.server.Server._protocol_factory
    assert list(inspect.signature(factory).parameters) == ["self"]
    source = inspect.getsource(factory)
    assert "self._handlers.add(handler)" in source
    assert "return H2Protocol(handler, self._config, self._h2_config)" in source
    assert "def wait_closed" in inspect.getsource(grpclib.server.Handler)
    assert "self.connection = Connection(" in inspect.getsource(grpclib.protocol.H2Protocol)
