"""YamuxDialer: one lazily dialled session, a stream per connect, a new session after loss."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentio.errors import ConnectionClosed
from agentio.transports.yamux.dialer import YamuxDialer
from agentio.transports.yamux.session import YamuxSession

BOUND = 5.0


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Reader(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.got = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()


async def _echo(dialer: YamuxDialer, payload: bytes) -> None:
    stream, reader = await dialer.connect_stream(Reader)
    stream.write(payload)
    while len(reader.data) < len(payload):
        reader.got.clear()
        await asyncio.wait_for(reader.got.wait(), BOUND)
    assert bytes(reader.data) == payload
    stream.close()


async def test_streams_share_one_session_and_a_lost_session_is_redialled(
    sock_dir: Path,
) -> None:
    loop = asyncio.get_running_loop()
    path = str(sock_dir / "mux.sock")
    served: list[YamuxSession] = []

    def serve() -> YamuxSession:
        served.append(YamuxSession("server", stream_protocol_factory=Echo))
        return served[-1]

    server = await loop.create_unix_server(serve, path)
    dials = 0

    async def dial(factory: object) -> tuple[asyncio.BaseTransport, YamuxSession]:
        nonlocal dials
        dials += 1
        return await loop.create_unix_connection(factory, path)  # type: ignore[arg-type]

    dialer = YamuxDialer(dial)
    try:
        await asyncio.gather(*(_echo(dialer, b"stream %d" % i) for i in range(5)))
        assert (dials, len(served)) == (1, 1)
        first = dialer.session
        assert first is not None

        served[0].abort()  # the "VM" drops the channel
        await asyncio.wait_for(first.wait_closed(), BOUND)
        await _echo(dialer, b"again")
        assert dials == 2 and dialer.session is not first
    finally:
        await dialer.close()
        server.close()
        await server.wait_closed()
    with pytest.raises(ConnectionClosed):
        await dialer.connect_stream(Reader)
