"""The baseline: a minimal framed echo over a unix socket (layer: tools).

Layer: tools. Same 10-byte header as ttrpc (length u32, stream id u32, type u8, flags u8, big
endian) but no envelope and no protobuf: the server sends each request payload back as a
response on the same stream id, the client keeps a dict of futures keyed by stream id. Both
sides are plain :class:`asyncio.Protocol` objects. It is the floor a Python ttrpc client on
this machine and event loop can hope to approach.

``python -m bench.echo PATH`` serves on ``PATH`` (stdlib asyncio, like the local agent),
prints ``ready`` once listening and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
from typing import Final

HEADER: Final = struct.Struct(">IIBB")
MAX_PAYLOAD: Final = 4 * 1024 * 1024
TYPE_REQUEST: Final = 1
TYPE_RESPONSE: Final = 2


class EchoServerProtocol(asyncio.Protocol):
    """Answers every request frame with a response frame carrying the same payload."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        transport = self._transport
        assert transport is not None
        offset = 0
        size = len(buf)
        while size - offset >= HEADER.size:
            length, stream_id, _type, _flags = HEADER.unpack_from(buf, offset)
            if length > MAX_PAYLOAD:
                transport.abort()
                return
            end = offset + HEADER.size + length
            if end > size:
                break
            payload = bytes(buf[offset + HEADER.size:end])
            transport.write(HEADER.pack(length, stream_id, TYPE_RESPONSE, 0) + payload)
            offset = end
        del buf[:offset]


class EchoClient(asyncio.Protocol):
    """The client side: concurrent calls multiplexed over one connection by stream id."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 1
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pending = self._pending
        offset = 0
        size = len(buf)
        while size - offset >= HEADER.size:
            length, stream_id, _type, _flags = HEADER.unpack_from(buf, offset)
            end = offset + HEADER.size + length
            if end > size:
                break
            future = pending.pop(stream_id, None)
            if future is not None and not future.done():
                future.set_result(bytes(buf[offset + HEADER.size:end]))
            offset = end
        del buf[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("echo connection closed")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self._lost)

    async def call(self, payload: bytes) -> bytes:
        """Send ``payload`` and wait for it to come back."""
        if self._lost is not None:
            raise self._lost
        stream_id = self._next_id
        self._next_id = stream_id + 2
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[stream_id] = future
        assert self._transport is not None
        self._transport.write(HEADER.pack(len(payload), stream_id, TYPE_REQUEST, 0) + payload)
        try:
            return await future
        finally:
            self._pending.pop(stream_id, None)

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()


async def _serve(path: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_unix_server(EchoServerProtocol, path)
    try:
        os.chmod(path, 0o600)
        print("ready", flush=True)
        await stop.wait()
    finally:
        server.close()  # no wait_closed(): on 3.12+ it would wait for clients to hang up


def main(argv: list[str] | None = None) -> int:
    """Serve the echo on the unix socket path given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.echo SOCKET_PATH", file=sys.stderr)
        return 2
    asyncio.run(_serve(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
