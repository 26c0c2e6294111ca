"""Fixtures for the transport tests: both event loops, a fake hybrid-vsock VMM, fd counting."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from agentio.transports import Address, default_socket_factory

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, LoopFactory]:
    """Run every async transport test on the stdlib loop and on uvloop."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class FakeVMM:
    """A unix server that plays a Firecracker-style VMM, one scripted action per connection.

    Actions: ``ok`` (answer ``OK 1234`` then echo), ``burst`` (``OK`` line + ``payload``, then
    ``burst``, then echo), ``silent`` (read CONNECT, never answer),
    ``close`` (read CONNECT, hang up), ``payload`` (``OK`` line and payload in one write, then
    echo), ``garbage``, ``endless`` (a line that never ends). After the script, ``default``.
    """

    def __init__(self, path: Path, script: list[str], default: str = "ok") -> None:
        self.path = path
        self.script = script
        self.default = default
        self.requests: list[bytes] = []
        self.connected = asyncio.Event()
        self.payload = b"HELLO"
        self.burst = b""
        self.endless_sent = 0
        self._server: asyncio.Server | None = None
        self._release = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def address(self) -> Address:
        return Address.hvsock(str(self.path), 1024)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def stop(self) -> None:
        self._release.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        index = len(self.requests)
        action = self.script[index] if index < len(self.script) else self.default
        try:
            self.requests.append(await reader.readline())
            self.connected.set()
            await getattr(self, "_" + action)(reader, writer)
        except (ConnectionError, OSError):
            pass  # the client gave up on us: that is what several tests provoke
        finally:
            writer.close()

    async def _ok(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"OK 1234\n")
        await self._echo(reader, writer)

    async def _payload(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"OK 1234\n" + self.payload)
        await self._echo(reader, writer)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _burst(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The OK line with a payload in one write, then more right behind it: the client's
        # loop may well read the second part before the protocol is attached.
        writer.write(b"OK 1234\n" + self.payload)
        writer.write(self.burst)
        await writer.drain()
        await self._echo(reader, writer)

    async def _silent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._release.wait()

    async def _close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None

    async def _garbage(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await self._release.wait()

    async def _endless(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Keep writing until the client hangs up: a bounded client must stop us, not vice versa.
        chunk = b"OK " + b"1" * 4093
        while not writer.is_closing():
            writer.write(chunk)
            self.endless_sent += len(chunk)
            await writer.drain()


@pytest.fixture
async def fake_vmm(sock_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await fake_vmm(script, default="ok")`` starts a FakeVMM in ``sock_dir``."""
    vmms: list[FakeVMM] = []

    async def start(script: list[str] | None = None, default: str = "ok") -> FakeVMM:
        vmm = FakeVMM(sock_dir / f"vmm{len(vmms)}.sock", script or [], default)
        await vmm.start()
        vmms.append(vmm)
        return vmm

    yield start
    for vmm in vmms:
        await vmm.stop()


class SocketRecorder:
    """A socket factory that remembers every socket it made, to check they get closed."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def __call__(self, address: Address) -> socket.socket:
        sock = default_socket_factory(address)
        self.sockets.append(sock)
        return sock

    def all_closed(self) -> bool:
        # uvloop marks the socket object closed at once but hands the fd to libuv, which
        # releases it a loop iteration later: either state means our code closed it.
        return all(sock.fileno() == -1 or getattr(sock, "_closed", False) for sock in self.sockets)


@pytest.fixture
def recorder() -> SocketRecorder:
    return SocketRecorder()


class _Recorder:
    """Records every protocol callback and can wait for an amount of data."""

    def __init__(self, *, keep_open: bool = False) -> None:
        self.keep_open = keep_open
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wanted: tuple[int, asyncio.Future[None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        self.transport = transport

    def _got(self, data: bytes | bytearray) -> None:
        self.data += data
        if self._wanted and len(self.data) >= self._wanted[0] and not self._wanted[1].done():
            self._wanted[1].set_result(None)

    def eof_received(self) -> bool:
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    async def wait_for(self, size: int) -> bytes:
        """All data so far, once at least ``size`` bytes have arrived."""
        if len(self.data) < size:
            self._wanted = (size, asyncio.get_running_loop().create_future())
            await self._wanted[1]
        return bytes(self.data)


# Not one class that is both: asyncio reads such a protocol buffered, uvloop plain.
class Recording(_Recorder, asyncio.Protocol):
    """A plain recording Protocol."""

    def data_received(self, data: bytes) -> None:
        self.events.append("data")
        self._got(data)


class BufferedRecording(_Recorder, asyncio.BufferedProtocol):
    """A recording BufferedProtocol with a small buffer, to force many reads."""

    def __init__(self, *, keep_open: bool = False) -> None:
        super().__init__(keep_open=keep_open)
        self._buf = bytearray(1000)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.events.append("buffer")
        self._got(self._buf[:nbytes])


@pytest.fixture
def recording() -> Callable[..., _Recorder]:
    """Factory of recording protocols: ``recording(buffered=False, keep_open=False)``."""

    def make(*, buffered: bool = False, keep_open: bool = False) -> _Recorder:
        cls = BufferedRecording if buffered else Recording
        return cls(keep_open=keep_open)

    return make
