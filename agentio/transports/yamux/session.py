"""yamux over asyncio: a session protocol whose streams are asyncio transports.

Layer: transports. Imports only :mod:`agentio.errors` and its own package.

:class:`YamuxSession` is an :class:`asyncio.Protocol` for the byte stream (a unix socket, a
serial port's socket, any asyncio transport) that runs :class:`~.codec.YamuxConnection`. Each
stream is a :class:`YamuxStream`, an :class:`asyncio.Transport` that drives an ordinary
:class:`asyncio.Protocol` (an HTTP/2 connection, for the Kata 1.x agent)::

    _, session = await loop.create_unix_connection(YamuxSession, path)
    transport, protocol = await session.connect_stream(MyProtocol)

Flow control is end to end. Writes beyond the peer's window wait in the stream's buffer, and
the protocol is paused (``pause_writing``) once that buffer passes its high-water mark; it is
resumed when window updates drain it. Received bytes are acknowledged to the peer only once
they were delivered to the protocol, so a protocol that pauses reading holds the peer back
instead of growing our memory: at most one receive window per stream is ever held.

Nothing here times out on its own: an idle session, or a peer that stops reading (a paused VM),
is left alone. A heartbeat (periodic pings, optionally with a deadline) is available but off by
default. When the session is lost (the byte stream closed, a GoAway with an error code, a
protocol violation) every stream's protocol gets ``connection_lost`` with
:class:`~agentio.errors.ConnectionClosed`, whose ``__cause__`` tells why.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from agentio.errors import (
    AgentError,
    AgentTimeout,
    ConfigError,
    ConnectionClosed,
    YamuxError,
)
from agentio.transports.yamux.codec import (
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PEER_STREAMS,
    GO_AWAY_NORMAL,
    INITIAL_WINDOW,
    Buffer,
    GoAwayReceived,
    PongReceived,
    Role,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
    YamuxConnection,
)

log = logging.getLogger(__name__)

P = TypeVar("P", bound=asyncio.Protocol)
_DEFAULT_HIGH_WATER = 64 * 1024
MAX_STREAM_BACKLOG = 16 * 1024 * 1024
"""Bytes a stream may hold for a peer that grants it no window. Data writers stop at the
high-water mark; only a protocol answering the peer's control frames (HTTP/2 PING and
SETTINGS acknowledgements) ignores it, so this much means a flood: the stream fails."""
MAX_SESSION_BACKLOG = 32 * 1024 * 1024
"""Bytes the byte stream may hold unsent. Stream data is bounded by the peer's windows; what
grows past this is answers to the peer's own frames (RST for its SYNs, ping replies) while
it does not read them: a flood, and the session fails."""


@dataclass(frozen=True, slots=True)
class YamuxConfig:
    """Settings of one session.

    Attributes:
        window: receive window per stream (at least the 256 KiB yamux default).
        max_frame: largest Data frame payload we send.
        max_peer_streams: peer-opened streams held at once (server role); more get RST.
        accept_backlog: accepted streams waiting for :meth:`YamuxSession.accept`; more get RST.
        write_high_water: default per-stream write-buffer size above which the stream's
            protocol is paused (``set_write_buffer_limits`` changes it per stream).
        heartbeat_interval: seconds between pings, or None (default) for no heartbeat.
        heartbeat_timeout: with a heartbeat, seconds a ping may stay unanswered before the
            session is declared lost; None (default) never declares it lost.
    """

    window: int = INITIAL_WINDOW
    max_frame: int = DEFAULT_MAX_FRAME
    max_peer_streams: int = DEFAULT_MAX_PEER_STREAMS
    accept_backlog: int = 256
    write_high_water: int = _DEFAULT_HIGH_WATER
    heartbeat_interval: float | None = None
    heartbeat_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.accept_backlog < 0:
            raise ConfigError("YamuxConfig.accept_backlog must not be negative")
        if self.write_high_water < 0:
            raise ConfigError("YamuxConfig.write_high_water must not be negative")
        for name in ("heartbeat_interval", "heartbeat_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"YamuxConfig.{name} must be positive or None")


class YamuxStream(asyncio.Transport):
    """One yamux stream, as an :class:`asyncio.Transport` for an :class:`asyncio.Protocol`.

    Received bytes wait (at most one window's worth) until a protocol is attached and
    reading. ``write_eof`` half-closes (FIN); ``close`` sends what is buffered, half-closes
    and then calls ``connection_lost(None)``; ``abort`` resets the stream (RST) at once.
    """

    def __init__(self, session: YamuxSession, stream_id: int) -> None:
        super().__init__()
        self._session = session
        self._loop = session.loop
        self.stream_id = stream_id
        self._protocol: asyncio.BaseProtocol | None = None
        self._started = False  # connection_made was called on the protocol
        self._out = bytearray()  # waiting for the peer's window
        self._high = session.config.write_high_water
        self._low = self._high // 4
        self._writing_paused = False
        self._eof_requested = False  # write_eof() or close(): FIN once _out drains
        self._fin_sent = False
        self._closing = False  # close() or abort()
        self._in: collections.deque[bytes] = collections.deque()  # undelivered received data
        self._in_eof = False  # the peer's FIN, not delivered yet
        self._reading_paused = False
        self._drain_scheduled = False
        self._lost = False  # connection_lost delivered or scheduled
        self._lost_exc: BaseException | None = None
        self._ignored_writes = 0

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id} {'closed' if self._lost else 'open'}>"

    @property
    def buffered(self) -> int:
        """Received bytes not delivered to the protocol yet (at most one receive window)."""
        return sum(map(len, self._in))

    # --- asyncio.BaseTransport ----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``yamux_stream_id``, ``yamux_session``, or the session transport's info.

        ``socket`` is not passed through: the socket carries every stream of the session.
        """
        if name == "yamux_stream_id":
            return self.stream_id
        if name == "yamux_session":
            return self._session
        if name == "socket":
            return default
        return self._session.get_extra_info(name, default)

    def is_closing(self) -> bool:
        """True once the stream is closing, reset or lost."""
        return self._closing or self._lost

    def close(self) -> None:
        """Send the buffered bytes, half-close (FIN), then ``connection_lost(None)``."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._eof_requested = True
        # Whatever is received from now on is dropped (and acknowledged, so the peer can
        # finish writing).
        dropped = sum(len(chunk) for chunk in self._in)
        self._in.clear()
        self._session._acknowledge(self.stream_id, dropped)
        self._pump()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Install ``protocol``; data held for the stream is delivered to it soon after."""
        self._protocol = protocol
        self._schedule_drain()

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol driven by this stream (raises before one was set)."""
        if self._protocol is None:
            raise RuntimeError("no protocol attached to this yamux stream yet")
        return self._protocol

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Install ``protocol`` and call its ``connection_made``; held data follows."""
        self._protocol = protocol
        self._started = True
        protocol.connection_made(self)
        if self._lost:
            self._loop.call_soon(self._deliver_lost)
        else:
            self._schedule_drain()

    # --- asyncio.ReadTransport ----------------------------------------------------------

    def is_reading(self) -> bool:
        """False while reading is paused (or the stream is gone)."""
        return not self._reading_paused and not self.is_closing()

    def pause_reading(self) -> None:
        """Stop delivering data; the peer is held back once the window is used up."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        """Deliver held data again (soon, not from within this call)."""
        if self._reading_paused:
            self._reading_paused = False
            self._schedule_drain()

    # --- asyncio.WriteTransport ---------------------------------------------------------

    def write(self, data: Buffer) -> None:
        """Queue ``data``; it goes out as fast as the peer's window and the socket allow."""
        if self._eof_requested and not self._closing:
            raise RuntimeError("cannot call write() after write_eof()")
        if self._closing or self._lost:
            self._ignored_writes += 1
            if self._ignored_writes == 5:
                log.warning("yamux stream %d: writes after close are ignored", self.stream_id)
            return
        if not data:
            return
        self._out += data
        if len(self._out) > MAX_STREAM_BACKLOG:
            self._closing = True
            self._out.clear()
            self._in.clear()
            self._session._reset(self.stream_id)
            self._set_lost(YamuxError(
                f"yamux stream {self.stream_id}: over {MAX_STREAM_BACKLOG} bytes queued "
                f"while the peer granted no window"))
            return
        self._pump()

    def write_eof(self) -> None:
        """Half-close: FIN once everything written so far has been sent."""
        if self._eof_requested or self.is_closing():
            return
        self._eof_requested = True
        self._pump()

    def can_write_eof(self) -> bool:
        """Always True: yamux has half-close (FIN)."""
        return True

    def abort(self) -> None:
        """Reset the stream (RST): buffered bytes are dropped; ``connection_lost(None)``."""
        if self._lost:
            return
        self._closing = True
        self._out.clear()
        self._in.clear()
        self._session._reset(self.stream_id)
        self._set_lost(None)

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet sent because the peer's window (or the socket) is full."""
        return len(self._out)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The (low, high) water marks for ``pause_writing``/``resume_writing``."""
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks, like the asyncio transports (high 64 KiB, low high/4)."""
        if high is None:
            high = _DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_pause()

    # --- driven by the session ----------------------------------------------------------

    def _pump(self) -> None:
        """Move buffered bytes into the codec as far as the window allows; FIN when done."""
        if self._lost:
            return
        if self._out:
            sent = self._session._send(self.stream_id, self._out)
            if sent:
                del self._out[:sent]
        if not self._out and self._eof_requested:
            if not self._fin_sent:
                self._fin_sent = True
                self._session._close_stream(self.stream_id)
            if self._closing:
                self._set_lost(None)
                return
        self._check_pause()

    def _check_pause(self) -> None:
        protocol = self._protocol
        if protocol is None or not self._started:
            return
        size = len(self._out)
        if not self._writing_paused and size > self._high:
            self._writing_paused = True
            self._call(protocol.pause_writing)
        elif self._writing_paused and size <= self._low:
            self._writing_paused = False
            self._call(protocol.resume_writing)

    def _on_data(self, data: bytes) -> None:
        if self._closing or self._lost:
            self._session._acknowledge(self.stream_id, len(data))
            return
        if self._in or self._reading_paused or not self._started:
            self._in.append(data)
            return
        self._deliver(data)

    def _on_eof(self) -> None:
        self._in_eof = True
        if not self._in and not self._reading_paused and self._started:
            self._deliver_eof()

    def _deliver(self, data: bytes) -> None:
        protocol = self._protocol
        try:
            if not isinstance(protocol, asyncio.Protocol):
                raise TypeError(f"{protocol!r} is not an asyncio.Protocol")
            protocol.data_received(data)
        except Exception:
            log.exception("yamux stream %d: data_received failed; resetting", self.stream_id)
            self.abort()
            return
        self._session._acknowledge(self.stream_id, len(data))

    def _deliver_eof(self) -> None:
        self._in_eof = False
        protocol = self._protocol
        if self.is_closing() or not isinstance(protocol, asyncio.Protocol):
            return
        try:
            keep_open = protocol.eof_received()
        except Exception:
            log.exception("yamux stream %d: eof_received failed; resetting", self.stream_id)
            self.abort()
            return
        if not keep_open:
            self.close()

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and (self._in or self._in_eof):
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if not self._started or self._lost:
            return
        while self._in and not self._reading_paused and not self.is_closing():
            self._deliver(self._in.popleft())
        if self._in_eof and not self._in and not self._reading_paused:
            self._deliver_eof()

    def _on_reset(self) -> None:
        self._out.clear()
        self._in.clear()
        self._set_lost(ConnectionClosed(f"yamux stream {self.stream_id} was reset by the peer"))

    def _on_session_lost(self, exc: ConnectionClosed) -> None:
        """The whole session is gone: deliver what the peer completed, then fail."""
        if self._lost:
            return
        if self._started and not self._closing:
            self._reading_paused = False
            self._drain()
        self._out.clear()
        self._in.clear()
        self._set_lost(exc)

    def _set_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._lost_exc = exc
        self._session._forget(self.stream_id)
        if self._started:
            self._loop.call_soon(self._deliver_lost)

    def _deliver_lost(self) -> None:
        protocol = self._protocol
        self._protocol = None
        if protocol is not None:
            self._call(protocol.connection_lost, self._lost_exc)

    def _call(self, method: Callable[..., object], *args: object) -> None:
        try:
            method(*args)
        except Exception:
            log.exception("yamux stream %d: protocol callback failed", self.stream_id)


class YamuxSession(asyncio.Protocol):
    """A yamux session on an asyncio byte stream; each stream is a :class:`YamuxStream`.

    Args:
        role: ``"client"`` (opens odd streams, refuses the peer's) or ``"server"`` (accepts
            the peer's streams).
        config: window, backlog and heartbeat settings.
        stream_protocol_factory: server role: every accepted stream gets a protocol from it at
            once; without it, accepted streams wait for :meth:`accept`.
    """

    def __init__(
        self,
        role: Role = "client",
        config: YamuxConfig | None = None,
        *,
        stream_protocol_factory: Callable[[], asyncio.Protocol] | None = None,
    ) -> None:
        self.config = config or YamuxConfig()
        self.role: Role = role
        self._conn = YamuxConnection(
            role,
            window=self.config.window,
            max_frame=self.config.max_frame,
            max_peer_streams=self.config.max_peer_streams,
        )
        self._factory = stream_protocol_factory
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[int, YamuxStream] = {}
        self._backlog: collections.deque[YamuxStream] = collections.deque()
        self._accepters: collections.deque[asyncio.Future[YamuxStream]] = collections.deque()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._heartbeat: asyncio.TimerHandle | None = None
        self._heartbeat_checks: dict[int, asyncio.TimerHandle] = {}
        self._socket_paused = False
        self._flush_scheduled = False
        self._exception: AgentError | None = None
        self._closed = False
        self._closed_future: asyncio.Future[None] | None = None

    # --- public API ---------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the session runs on (known once connected)."""
        if self._loop is None:
            raise RuntimeError("the yamux session is not connected yet")
        return self._loop

    @property
    def connection(self) -> YamuxConnection:
        """The sans-I/O state machine (for inspection)."""
        return self._conn

    @property
    def streams(self) -> int:
        """Streams currently open on the session."""
        return len(self._streams)

    def exception(self) -> AgentError | None:
        """Why the session ended (None while it runs or after a clean close)."""
        return self._exception

    def is_closing(self) -> bool:
        """True once the session is closing or lost."""
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Extra info of the byte stream's transport."""
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    async def open_stream(self) -> YamuxStream:
        """Open a stream (no round trip: data may be written at once).

        The stream has no protocol yet: :meth:`YamuxStream.attach` one. Raises
        :class:`ConnectionClosed` when the session is lost or going away.
        """
        self._check_open()
        sid = self._conn.open_stream()
        stream = YamuxStream(self, sid)
        self._streams[sid] = stream
        self._flush()
        return stream

    async def connect_stream(self, protocol_factory: Callable[[], P]) -> tuple[YamuxStream, P]:
        """Open a stream and run ``protocol_factory()`` on it: the shape of a connector.

        Returns ``(transport, protocol)`` like ``loop.create_connection``.
        """
        stream = await self.open_stream()
        protocol = protocol_factory()
        try:
            stream.attach(protocol)
        except BaseException:
            stream.abort()
            raise
        return stream, protocol

    async def accept(self) -> YamuxStream:
        """Wait for a stream the peer opened (server role, without a protocol factory)."""
        if self.role != "server":
            raise ConfigError("only a server-role yamux session accepts streams")
        if self._backlog:
            return self._backlog.popleft()
        self._check_open()
        waiter: asyncio.Future[YamuxStream] = self.loop.create_future()
        self._accepters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in self._accepters:
                self._accepters.remove(waiter)

    async def ping(self) -> float:
        """Send a ping and return the round trip in seconds (cancel it to stop waiting)."""
        self._check_open()
        loop = self.loop
        waiter: asyncio.Future[None] = loop.create_future()
        opaque = self._conn.ping()
        self._pings[opaque] = waiter
        started = loop.time()
        self._flush()
        try:
            await waiter
        finally:
            self._pings.pop(opaque, None)
        return loop.time() - started

    def close(self) -> None:
        """Say GoAway (normal), fail the open streams and close the byte stream."""
        self._teardown(ConnectionClosed("yamux session closed"), GO_AWAY_NORMAL, error=False)

    def abort(self) -> None:
        """Drop the byte stream at once and fail the open streams."""
        self._teardown(ConnectionClosed("yamux session aborted"), None, error=False)
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        """Stop reading the byte stream (every stream stalls; the peer is held back by its
        windows and the socket). For tests and tools that play a paused VM."""
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the byte stream again after :meth:`pause_reading`."""
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    async def wait_closed(self) -> None:
        """Wait until the byte stream is closed."""
        if self._closed_future is not None:
            await asyncio.shield(self._closed_future)

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the session on ``transport``."""
        # uvloop's transports do not derive from asyncio.Transport, but behave like one.
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._closed_future = self._loop.create_future()
        if self.config.heartbeat_interval is not None:
            self._heartbeat = self._loop.call_later(
                self.config.heartbeat_interval, self._beat
            )

    def data_received(self, data: bytes) -> None:
        """Feed the state machine and dispatch its events."""
        if self._closed:
            return
        try:
            events = self._conn.receive_data(data)
        except YamuxError as exc:
            log.warning("yamux: %s; going away", exc)
            self._teardown(exc, exc.go_away_code, error=True)
            return
        for event in events:
            if self._closed:
                break
            if isinstance(event, StreamData):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_data(event.data)
                else:
                    self._conn.acknowledge_received(event.stream_id, len(event.data))
            elif isinstance(event, WindowUpdated):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._pump()
            elif isinstance(event, StreamEnded):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_eof()
            elif isinstance(event, StreamReset):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_reset()
            elif isinstance(event, StreamOpened):
                self._on_peer_stream(event.stream_id)
            elif isinstance(event, PongReceived):
                self._on_pong(event.opaque)
            elif isinstance(event, GoAwayReceived):
                self._on_go_away(event.code)
        self._flush()

    def eof_received(self) -> bool:
        """The byte stream ended: let the transport close (``connection_lost`` follows)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every stream: the session is gone."""
        lost = ConnectionClosed("yamux session connection lost")
        lost.__cause__ = exc
        self._teardown(lost, None, error=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)

    def pause_writing(self) -> None:
        """The byte stream's buffer is full: streams keep their bytes."""
        self._socket_paused = True

    def resume_writing(self) -> None:
        """The byte stream drained: let every stream send again."""
        self._socket_paused = False
        for stream in list(self._streams.values()):
            stream._pump()
            if self._socket_paused:
                break
        self._flush()

    # --- used by the streams ------------------------------------------------------------

    def _send(self, stream_id: int, data: bytearray) -> int:
        if self._socket_paused or self._closed:
            return 0
        sent = self._conn.send_data(stream_id, data)
        self._flush()
        return sent

    def _close_stream(self, stream_id: int) -> None:
        self._conn.close_stream(stream_id)
        self._flush()

    def _reset(self, stream_id: int) -> None:
        if not self._closed:
            self._conn.reset_stream(stream_id)
            self._flush()

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self._closed:
            self._conn.acknowledge_received(stream_id, size)
            self._flush()

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    # --- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._transport is None:
            raise ConnectionClosed("yamux session is closed") from self._exception

    def _flush(self) -> None:
        # Everything the codec produced during this turn of the loop goes out in one write:
        # an HTTP/2 request or answer is several stream writes (HEADERS, DATA, trailers), and
        # one socket write per frame costs a system call (and a wake-up of the peer) each.
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_scheduled = False
        data = self._conn.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            if transport.get_write_buffer_size() > MAX_SESSION_BACKLOG:
                self._teardown(YamuxError(
                    f"yamux: over {MAX_SESSION_BACKLOG} bytes unsent: the peer sends frames "
                    f"to answer but does not read the answers"), None, error=True)
                transport.abort()

    def _on_peer_stream(self, stream_id: int) -> None:
        if self._factory is None and len(self._backlog) >= self.config.accept_backlog:
            log.warning("yamux: accept backlog full; refusing stream %d", stream_id)
            self._conn.reset_stream(stream_id)
            return
        self._conn.accept_stream(stream_id)
        stream = YamuxStream(self, stream_id)
        self._streams[stream_id] = stream
        if self._factory is not None:
            try:
                stream.attach(self._factory())
            except Exception:
                log.exception("yamux: stream protocol factory failed; resetting %d", stream_id)
                stream.abort()
            return
        while self._accepters:
            waiter = self._accepters.popleft()
            if not waiter.done():
                waiter.set_result(stream)
                return
        self._backlog.append(stream)

    def _on_pong(self, opaque: int) -> None:
        waiter = self._pings.get(opaque)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        check = self._heartbeat_checks.pop(opaque, None)
        if check is not None:
            check.cancel()

    def _on_go_away(self, code: int) -> None:
        if code == GO_AWAY_NORMAL:
            # No new streams either way; the open ones finish (or fail when the socket goes).
            log.info("yamux: peer is going away")
            return
        self._teardown(ConnectionClosed(f"yamux peer went away with error code {code}"), None,
                       error=True)

    def _beat(self) -> None:
        self._heartbeat = None
        if self._closed:
            return
        opaque = self._conn.ping()
        self._flush()
        loop = self.loop
        timeout = self.config.heartbeat_timeout
        if timeout is not None:
            self._heartbeat_checks[opaque] = loop.call_later(timeout, self._heartbeat_missed)
        assert self.config.heartbeat_interval is not None
        self._heartbeat = loop.call_later(self.config.heartbeat_interval, self._beat)

    def _heartbeat_missed(self) -> None:
        timeout = self.config.heartbeat_timeout
        cause = AgentTimeout(f"yamux peer did not answer a ping within {timeout} s")
        self._teardown(cause, None, error=True)

    def _teardown(self, cause: AgentError, go_away: int | None, *, error: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if error:
            self._exception = cause
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for handle in self._heartbeat_checks.values():
            handle.cancel()
        self._heartbeat_checks.clear()
        transport = self._transport
        if go_away is not None and transport is not None and not transport.is_closing():
            self._conn.go_away(go_away)
            transport.write(self._conn.data_to_send())
        for stream in list(self._streams.values()) + list(self._backlog):
            stream._on_session_lost(_lost_error(cause))
        self._streams.clear()
        self._backlog.clear()
        waiters: list[asyncio.Future[Any]] = [*self._accepters, *self._pings.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(_lost_error(cause))
        self._accepters.clear()
        if transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size():
                transport.abort()  # a peer that does not read must not keep us waiting
            else:
                transport.close()


def _lost_error(cause: AgentError) -> ConnectionClosed:
    """A fresh :class:`ConnectionClosed` per receiver, whose ``__cause__`` says why."""
    if isinstance(cause, ConnectionClosed):
        fresh = ConnectionClosed(cause.message)
        fresh.__cause__ = cause.__cause__
    else:
        fresh = ConnectionClosed(f"yamux session failed: {cause}")
        fresh.__cause__ = cause
    return fresh


async def start_session(
    sock: socket.socket,
    role: Role = "client",
    config: YamuxConfig | None = None,
    *,
    stream_protocol_factory: Callable[[], asyncio.Protocol] | None = None,
) -> YamuxSession:
    """Run a :class:`YamuxSession` on a connected socket (unix or other stream socket)."""
    loop = asyncio.get_running_loop()

    def factory() -> YamuxSession:
        return YamuxSession(role, config, stream_protocol_factory=stream_protocol_factory)

    if sock.family == socket.AF_UNIX:
        _, session = await loop.create_unix_connection(factory, sock=sock)
    else:
        _, session = await loop.create_connection(factory, sock=sock)
    return session
