"""A minimal stream transport over ``loop.add_reader``/``add_writer``.

Layer: transports. Imports only :mod:`agentio.errors`.

Why it exists: uvloop refuses AF_VSOCK sockets in ``create_connection(sock=...)`` (it treats
every non-unix socket as TCP), but its ``add_reader``/``add_writer`` work on a vsock fd. This
transport gives such sockets the ordinary :class:`asyncio.Transport` interface — write
buffering with high/low water marks, pause/resume of reading, ``write_eof``, ``close`` after
flushing, ``abort`` — for both :class:`asyncio.Protocol` and :class:`asyncio.BufferedProtocol`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from agentio.errors import ConfigError

log = logging.getLogger(__name__)

P = TypeVar("P", bound=asyncio.BaseProtocol)

_READ_SIZE = 256 * 1024
_HIGH_WATER = 64 * 1024
_BLOCKED = (BlockingIOError, InterruptedError)


def deliver(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand ``data`` to a Protocol or BufferedProtocol as if it had been read from the socket."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view))).cast("B")
            if not buf:
                raise ConfigError(f"{protocol!r}.get_buffer() returned an empty buffer")
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
    else:
        raise ConfigError(f"{protocol!r} is not a stream protocol")


def create_selector_connection(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol_factory: Callable[[], P],
    initial_data: bytes = b"",
) -> tuple[SelectorTransport, P]:
    """Wrap a connected socket: build the protocol, call ``connection_made``, then feed
    ``initial_data`` before anything read from the socket. The transport owns ``sock``."""
    protocol = protocol_factory()
    transport = SelectorTransport(loop, sock, protocol)
    transport.start(initial_data)
    return transport, protocol


class SelectorTransport(asyncio.Transport):
    """An asyncio stream transport driven by the loop's reader/writer callbacks."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.BaseProtocol
    ) -> None:
        super().__init__(_extra_info(sock))
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._buffer = bytearray()
        self._high, self._low = _HIGH_WATER, _HIGH_WATER // 4
        self._closing = False  # no more reads; close once the buffer is flushed
        self._lost = False  # connection_lost scheduled
        self._reading = False
        self._reading_paused = False
        self._eof_requested = False
        self._eof_seen = False  # the peer shut its side: nothing more to read, ever
        self._writing_paused = False

    def start(self, initial_data: bytes = b"") -> None:
        """Call ``connection_made``, deliver ``initial_data``, then start reading."""
        self._protocol.connection_made(self)
        if initial_data and not self._closing:
            self._call_protocol(deliver, self._protocol, initial_data)
        self._update_reader()

    # --- reading -------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not (self._reading_paused or self._closing or self._eof_seen)

    def pause_reading(self) -> None:
        self._reading_paused = True
        self._update_reader()

    def resume_reading(self) -> None:
        self._reading_paused = False
        self._update_reader()

    def _update_reader(self) -> None:
        want = self.is_reading()
        if want and not self._reading:
            self._loop.add_reader(self._fd, self._read_ready)
        elif not want and self._reading:
            self._loop.remove_reader(self._fd)
        self._reading = want

    def _read_ready(self) -> None:
        try:
            if isinstance(self._protocol, asyncio.BufferedProtocol):
                self._read_into(self._protocol)
                return
            data = self._sock.recv(_READ_SIZE)
        except _BLOCKED:
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            self._call_protocol(deliver, self._protocol, data)
        else:
            self._eof_received()

    def _read_into(self, protocol: asyncio.BufferedProtocol) -> None:
        buf = self._call_protocol(protocol.get_buffer, -1)
        if buf is None:
            return
        n = self._sock.recv_into(buf)
        if n:
            self._call_protocol(protocol.buffer_updated, n)
        else:
            self._eof_received()

    def _eof_received(self) -> None:
        self._eof_seen = True
        self._update_reader()
        eof_received = getattr(self._protocol, "eof_received", None)
        keep_open = eof_received is not None and self._call_protocol(eof_received)
        if not keep_open:
            self.close()

    # --- writing -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_requested:
            raise RuntimeError("write() after write_eof()")
        if not data or self._lost:
            return
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except _BLOCKED:
                sent = 0
            except OSError as exc:
                self._fatal(exc)
                return
            data = memoryview(data)[sent:]
            if not data:
                return
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer.extend(data)
        self._maybe_pause_protocol()

    def _write_ready(self) -> None:
        try:
            sent = self._sock.send(self._buffer)
        except _BLOCKED:
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del self._buffer[:sent]
        self._maybe_resume_protocol()
        if self._buffer:
            return
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._schedule_lost(None)
        elif self._eof_requested:
            self._shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        if not self._buffer:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc)

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = _HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ConfigError(f"write buffer limits need 0 <= low <= high, got {low}, {high}")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if len(self._buffer) > self._high and not self._writing_paused:
            self._writing_paused = True
            self._call_protocol(self._protocol.pause_writing)

    def _maybe_resume_protocol(self) -> None:
        if self._writing_paused and len(self._buffer) <= self._low:
            self._writing_paused = False
            self._call_protocol(self._protocol.resume_writing)

    # --- closing -------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._update_reader()
        if not self._buffer:
            self._schedule_lost(None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal(self, exc: BaseException) -> None:
        log.debug("%r: fatal error on fd %d: %r", self, self._fd, exc)
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._buffer:
            self._buffer.clear()
            self._loop.remove_writer(self._fd)
        self._closing = True
        self._update_reader()
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        exc = exc if isinstance(exc, Exception) else None
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()

    # --- protocol ------------------------------------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def _call_protocol(self, func: Any, *args: Any) -> Any:
        # A protocol callback that raises must not escape into the loop's reader callback
        # and leave the transport half-alive: report it and tear the connection down.
        try:
            return func(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {"message": f"protocol callback {func!r} failed", "exception": exc,
                 "transport": self, "protocol": self._protocol}
            )
            self._force_close(exc)
            return None

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<SelectorTransport fd={self._fd} {state}>"


def _extra_info(sock: socket.socket) -> dict[str, Any]:
    extra: dict[str, Any] = {"socket": sock}
    for key, getter in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
        try:
            extra[key] = getter()
        except OSError:
            extra[key] = None
    return extra
