"""yamux framing and session state machine, sans-I/O.

Layer: transports. Imports only :mod:`agentio.errors`; no sockets, no awaits, no clocks.

yamux (version 0) multiplexes streams over one byte stream. Every frame starts with a 12-byte
big-endian header: version u8 (0), type u8, flags u16, stream id u32, length u32. Types: Data
(the length counts the payload that follows), WindowUpdate (length = window delta), Ping
(length = opaque value, stream 0) and GoAway (length = error code, stream 0). Flags: SYN opens
a stream (or asks a ping), ACK accepts it (or answers a ping), FIN half-closes, RST resets.
Each stream starts with a 256 KiB window in each direction; a SYN or ACK may carry a delta that
grows it. Streams opened by the client have odd ids, those opened by the server even ids.

:class:`YamuxConnection` is one end of a session in the style of h2 and wsproto: feed it the
bytes read from the wire with :meth:`~YamuxConnection.receive_data` and get events back; call
its methods to open, write, close and reset streams, and send what
:meth:`~YamuxConnection.data_to_send` returns. Payload bytes are handed out as they arrive, so
apart from at most one partial header nothing received is ever buffered here. Everything read
from the wire is untrusted and every violation raises :class:`~agentio.errors.YamuxError`;
after that the connection is unusable, and the caller should send
``go_away(error.go_away_code)`` and drop the byte stream.

:class:`FrameReader` splits a byte stream into whole frames; it serves tools and tests that
look at frames rather than streams.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from agentio.errors import ConfigError, ConnectionClosed, YamuxError

HEADER_SIZE: Final = 12
VERSION: Final = 0

TYPE_DATA: Final = 0
TYPE_WINDOW_UPDATE: Final = 1
TYPE_PING: Final = 2
TYPE_GO_AWAY: Final = 3

FLAG_SYN: Final = 0x1
FLAG_ACK: Final = 0x2
FLAG_FIN: Final = 0x4
FLAG_RST: Final = 0x8

GO_AWAY_NORMAL: Final = 0
GO_AWAY_PROTOCOL_ERROR: Final = 1
GO_AWAY_INTERNAL_ERROR: Final = 2

INITIAL_WINDOW: Final = 256 * 1024
"""Every stream's window in both directions before any WindowUpdate (the yamux default)."""
MAX_WINDOW: Final = 0xFFFF_FFFF
MAX_STREAM_ID: Final = 0xFFFF_FFFF
DEFAULT_MAX_FRAME: Final = 64 * 1024
"""Largest Data payload this end sends in one frame (smaller frames interleave streams)."""
DEFAULT_MAX_PEER_STREAMS: Final = 1024

_HEADER = struct.Struct(">BBHII")
_TYPE_NAMES: Final = ("Data", "WindowUpdate", "Ping", "GoAway")

Role = Literal["client", "server"]
Buffer = bytes | bytearray | memoryview


# --- frames -------------------------------------------------------------------------------


class Header(NamedTuple):
    """A decoded frame header; ``length`` is the payload size, delta, opaque or code by type."""

    type: int
    flags: int
    stream_id: int
    length: int
    version: int = VERSION


class Frame(NamedTuple):
    """A whole frame: its header and, for Data frames, the payload."""

    header: Header
    payload: bytes = b""


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12-byte header; raises :class:`ConfigError` for out-of-range fields."""
    if not 0 <= frame_type <= TYPE_GO_AWAY:
        raise ConfigError(f"unknown yamux frame type {frame_type}")
    try:
        return _HEADER.pack(VERSION, frame_type, flags, stream_id, length)
    except struct.error as exc:
        raise ConfigError(f"invalid yamux header field: {exc}") from None


def encode_frame(frame: Frame) -> bytes:
    """A frame's bytes. A Data frame's length is its payload size; others carry no payload."""
    header = frame.header
    if header.type == TYPE_DATA:
        if header.length != len(frame.payload):
            raise ConfigError("a Data frame's length must equal its payload size")
    elif frame.payload:
        raise ConfigError(f"a {_TYPE_NAMES[header.type]} frame carries no payload")
    return encode_header(header.type, header.flags, header.stream_id, header.length) + bytes(
        frame.payload
    )


def decode_header(data: Buffer, offset: int = 0) -> Header:
    """Decode the header at ``data[offset:]``; raises :class:`YamuxError` when it is invalid."""
    if len(data) - offset < HEADER_SIZE:
        raise YamuxError(f"a yamux header needs {HEADER_SIZE} bytes")
    version, frame_type, flags, stream_id, length = _HEADER.unpack_from(data, offset)
    if version != VERSION:
        raise YamuxError(f"unsupported yamux version {version}")
    if frame_type > TYPE_GO_AWAY:
        raise YamuxError(f"unknown yamux frame type {frame_type}")
    return Header(frame_type, flags, stream_id, length, version)


class FrameReader:
    """Incremental splitter of a byte stream into :class:`Frame` objects.

    At most one frame (a header plus at most ``max_payload`` bytes) is buffered; a Data frame
    announcing more raises :class:`YamuxError` before its payload is read.
    """

    __slots__ = ("_buf", "max_payload")

    def __init__(self, max_payload: int = INITIAL_WINDOW) -> None:
        if not 0 <= max_payload <= MAX_WINDOW:
            raise ConfigError(f"max_payload must be within 0..{MAX_WINDOW}")
        self.max_payload = max_payload
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: Buffer) -> list[Frame]:
        """Consume ``data`` and return the frames it completes, in wire order."""
        self._buf += data
        buf = self._buf
        frames: list[Frame] = []
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            header = decode_header(buf, pos)
            if header.type != TYPE_DATA:
                frames.append(Frame(header))
                pos += HEADER_SIZE
                continue
            if header.length > self.max_payload:
                raise YamuxError(
                    f"Data frame of {header.length} bytes exceeds the limit of {self.max_payload}"
                )
            end = pos + HEADER_SIZE + header.length
            if end > len(buf):
                break
            frames.append(Frame(header, bytes(buf[pos + HEADER_SIZE : end])))
            pos = end
        del buf[:pos]
        return frames


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream (SYN); accept it with ``accept_stream`` or refuse with RST."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """The peer accepted (ACK) a stream this end opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamData:
    """Payload bytes for a stream. Acknowledge them once consumed (``acknowledge_received``)."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (FIN): no more data will come on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset the stream (RST); it is gone in both directions."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """The peer granted ``delta`` more bytes of sending on the stream."""

    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer pinged; the answer is already queued in :meth:`YamuxConnection.data_to_send`."""

    opaque: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered one of our pings."""

    opaque: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer will accept no new streams; ``code`` 0 normal, 1 protocol, 2 internal error."""

    code: int


Event = (
    StreamOpened
    | StreamAccepted
    | StreamData
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | PingReceived
    | PongReceived
    | GoAwayReceived
)


# --- the state machine --------------------------------------------------------------------


class _Stream:
    __slots__ = (
        "accepted",
        "held",
        "id",
        "local_fin",
        "ours",
        "pending_update",
        "recv_window",
        "remote_fin",
        "send_window",
    )

    def __init__(self, stream_id: int, ours: bool, recv_window: int) -> None:
        self.id = stream_id
        self.ours = ours
        self.accepted = False  # ours: the peer's ACK came; theirs: we sent our ACK
        self.local_fin = False
        self.remote_fin = False
        self.send_window = INITIAL_WINDOW
        self.recv_window = recv_window  # bytes the peer may still send
        self.held = 0  # received, not yet acknowledged by the application
        self.pending_update = 0  # acknowledged, not yet announced to the peer


class YamuxConnection:
    """One end of a yamux session (client: odd stream ids; server: even ids, accepts SYNs).

    Args:
        role: ``"client"`` or ``"server"``. A client refuses peer-opened streams with RST.
        window: this end's receive window per stream (at least 256 KiB; more is announced in
            the SYN/ACK delta).
        max_frame: largest Data payload sent in one frame.
        max_peer_streams: peer-opened streams held at once; more are refused with RST.
    """

    def __init__(
        self,
        role: Role = "client",
        *,
        window: int = INITIAL_WINDOW,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_peer_streams: int = DEFAULT_MAX_PEER_STREAMS,
    ) -> None:
        if role not in ("client", "server"):
            raise ConfigError(f"yamux role must be 'client' or 'server', not {role!r}")
        if not INITIAL_WINDOW <= window <= MAX_WINDOW:
            raise ConfigError(f"yamux window must be within {INITIAL_WINDOW}..{MAX_WINDOW}")
        if max_frame <= 0:
            raise ConfigError("yamux max_frame must be positive")
        if max_peer_streams < 0:
            raise ConfigError("yamux max_peer_streams must not be negative")
        self.role: Role = role
        self.window = window
        self.max_frame = max_frame
        self.max_peer_streams = max_peer_streams
        self._parity = 1 if role == "client" else 0
        self._next_id = 1 if role == "client" else 2
        self._last_peer_id = 0
        self._peer_streams = 0
        self._streams: dict[int, _Stream] = {}
        self._out = bytearray()
        self._ping_id = 0
        self._error: YamuxError | None = None
        self.local_go_away = False
        self.remote_go_away: int | None = None
        # receive state: a partial header, or the payload of the current Data frame
        self._hdr = bytearray()
        self._payload_left = 0
        self._payload_sid = 0
        self._payload_flags = 0

    # --- inspection ---------------------------------------------------------------------

    @property
    def stream_ids(self) -> list[int]:
        """Streams open in at least one direction, in opening order."""
        return list(self._streams)

    def is_open(self, stream_id: int) -> bool:
        """Whether the stream exists (not reset, not closed in both directions)."""
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        """Bytes the peer currently lets us send on the stream (0 for an unknown stream)."""
        stream = self._streams.get(stream_id)
        return stream.send_window if stream else 0

    def recv_window(self, stream_id: int) -> int:
        """Bytes the peer may still send on the stream before a window update."""
        stream = self._streams.get(stream_id)
        return stream.recv_window if stream else 0

    @property
    def error(self) -> YamuxError | None:
        """The protocol error that ended this connection, if any."""
        return self._error

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[Event]:
        """Consume bytes from the wire and return the events they complete, in order.

        Raises :class:`YamuxError` for a protocol violation (and again on every later call).
        """
        if self._error is not None:
            raise self._error
        events: list[Event] = []
        try:
            self._receive(memoryview(data).cast("B"), events)
        except YamuxError as exc:
            self._error = exc
            raise
        return events

    def _receive(self, view: memoryview, events: list[Event]) -> None:
        pos = 0
        end = len(view)
        while pos < end:
            if self._payload_left:
                take = min(self._payload_left, end - pos)
                if self._payload_sid in self._streams:
                    events.append(StreamData(self._payload_sid, bytes(view[pos : pos + take])))
                pos += take
                self._payload_left -= take
                if not self._payload_left:
                    self._end_frame(self._payload_sid, self._payload_flags, events)
                continue
            if self._hdr:
                take = min(HEADER_SIZE - len(self._hdr), end - pos)
                self._hdr += view[pos : pos + take]
                pos += take
                if len(self._hdr) < HEADER_SIZE:
                    return
                header = decode_header(self._hdr)
                self._hdr.clear()
            elif end - pos >= HEADER_SIZE:
                header = decode_header(view, pos)
                pos += HEADER_SIZE
            else:
                self._hdr += view[pos:]
                return
            self._on_header(header, events)

    def _on_header(self, header: Header, events: list[Event]) -> None:
        frame_type, flags, sid, length = header.type, header.flags, header.stream_id, header.length
        if frame_type == TYPE_PING:
            if flags & FLAG_SYN:
                self._emit(TYPE_PING, FLAG_ACK, 0, length)
                events.append(PingReceived(length))
            elif flags & FLAG_ACK:
                events.append(PongReceived(length))
            else:
                raise YamuxError("yamux Ping without SYN or ACK")
            return
        if frame_type == TYPE_GO_AWAY:
            self.remote_go_away = length
            events.append(GoAwayReceived(length))
            return
        if sid == 0:
            raise YamuxError(f"yamux {_TYPE_NAMES[frame_type]} frame on stream 0")
        stream = self._open_flags(sid, flags, events)
        if frame_type == TYPE_WINDOW_UPDATE:
            if stream is not None and length:
                if stream.send_window + length > MAX_WINDOW:
                    raise YamuxError(f"yamux stream {sid}: send window overflow")
                stream.send_window += length
                events.append(WindowUpdated(sid, length))
            self._end_frame(sid, flags, events)
            return
        # Data: check the announced length before a single payload byte is read.
        if stream is not None:
            if length > stream.recv_window:
                raise YamuxError(
                    f"yamux stream {sid}: {length} bytes exceed the receive window"
                    f" of {stream.recv_window}"
                )
            if length and stream.remote_fin:
                raise YamuxError(f"yamux stream {sid}: data after FIN")
            stream.recv_window -= length
            stream.held += length
        elif length > self.window:
            raise YamuxError(f"yamux stream {sid}: {length} bytes exceed any window granted")
        if length:
            self._payload_left = length
            self._payload_sid = sid
            self._payload_flags = flags
        else:
            self._end_frame(sid, flags, events)

    def _open_flags(self, sid: int, flags: int, events: list[Event]) -> _Stream | None:
        """Apply SYN/ACK; return the frame's stream, or None when its bytes are to be dropped."""
        stream = self._streams.get(sid)
        ours = sid & 1 == self._parity
        if flags & FLAG_SYN:
            if flags & FLAG_ACK:
                raise YamuxError(f"yamux stream {sid}: SYN and ACK together")
            if ours or stream is not None or sid <= self._last_peer_id:
                raise YamuxError(f"yamux stream {sid}: invalid or duplicate SYN")
            self._last_peer_id = sid
            if (
                self.role == "client"
                or self.local_go_away
                or self._peer_streams >= self.max_peer_streams
            ):
                self._emit(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0)
                return None
            stream = _Stream(sid, False, self.window)
            self._streams[sid] = stream
            self._peer_streams += 1
            events.append(StreamOpened(sid))
            return stream
        if stream is None:
            stale = sid < self._next_id if ours else sid <= self._last_peer_id
            if not stale:
                raise YamuxError(f"yamux frame for stream {sid}, which was never opened")
            return None  # a stream closed or reset here; frames still in flight are dropped
        if flags & FLAG_ACK and stream.ours and not stream.accepted:
            stream.accepted = True
            events.append(StreamAccepted(sid))
        return stream

    def _end_frame(self, sid: int, flags: int, events: list[Event]) -> None:
        stream = self._streams.get(sid)
        if stream is None:
            return
        if flags & FLAG_RST:
            self._forget(stream)
            events.append(StreamReset(sid))
        elif flags & FLAG_FIN and not stream.remote_fin:
            stream.remote_fin = True
            events.append(StreamEnded(sid))
            if stream.local_fin:
                self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        del self._streams[stream.id]
        if not stream.ours:
            self._peer_streams -= 1

    # --- sending ------------------------------------------------------------------------

    def _emit(self, frame_type: int, flags: int, sid: int, length: int) -> None:
        self._out += _HEADER.pack(VERSION, frame_type, flags, sid, length)

    def _stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise ConnectionClosed(f"yamux stream {stream_id} is closed or was never opened")
        return stream

    def data_to_send(self) -> bytes:
        """The bytes queued for the wire since the last call (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def open_stream(self) -> int:
        """Open a stream (WindowUpdate+SYN) and return its id; data may follow at once.

        Raises :class:`ConnectionClosed` after a GoAway (either way), a protocol error, or
        when stream ids are exhausted.
        """
        if self._error is not None:
            raise ConnectionClosed("yamux session failed") from self._error
        if self.local_go_away or self.remote_go_away is not None:
            raise ConnectionClosed("yamux session is going away: no new streams")
        sid = self._next_id
        if sid > MAX_STREAM_ID:
            raise ConnectionClosed("yamux stream ids exhausted")
        self._next_id += 2
        self._streams[sid] = _Stream(sid, True, self.window)
        self._emit(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, self.window - INITIAL_WINDOW)
        return sid

    def accept_stream(self, stream_id: int) -> None:
        """Accept a stream the peer opened (WindowUpdate+ACK)."""
        stream = self._stream(stream_id)
        if stream.ours or stream.accepted:
            raise ConfigError(f"yamux stream {stream_id} is not waiting to be accepted")
        stream.accepted = True
        self._emit(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, self.window - INITIAL_WINDOW)

    def send_data(self, stream_id: int, data: Buffer) -> int:
        """Queue as much of ``data`` as the peer's window allows; return how many bytes.

        Returns 0 when the window is exhausted: wait for :class:`WindowUpdated`. Raises
        :class:`ConnectionClosed` on a stream that is reset, closed for writing or unknown.
        """
        stream = self._stream(stream_id)
        if stream.local_fin:
            raise ConnectionClosed(f"yamux stream {stream_id} is closed for writing")
        view = memoryview(data).cast("B")
        total = min(len(view), stream.send_window)
        pos = 0
        while pos < total:
            size = min(total - pos, self.max_frame)
            self._emit(TYPE_DATA, 0, stream_id, size)
            self._out += view[pos : pos + size]
            pos += size
        stream.send_window -= total
        return total

    def close_stream(self, stream_id: int) -> None:
        """Half-close the stream (WindowUpdate+FIN). A no-op if it is already closed or gone."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_fin:
            return
        stream.local_fin = True
        self._emit(TYPE_WINDOW_UPDATE, FLAG_FIN, stream_id, 0)
        if stream.remote_fin:
            self._forget(stream)

    def reset_stream(self, stream_id: int) -> None:
        """Reset the stream (WindowUpdate+RST) and forget it. A no-op if it is gone."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._forget(stream)
        self._emit(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)

    def acknowledge_received(self, stream_id: int, size: int) -> None:
        """Tell the codec the application consumed ``size`` bytes received on the stream.

        A WindowUpdate is queued once half the window has been consumed (what the Go
        implementation does), so the peer is held back exactly as long as we hold data.
        """
        stream = self._streams.get(stream_id)
        if stream is None or size == 0:
            return
        if not 0 < size <= stream.held:
            raise ConfigError(
                f"yamux stream {stream_id}: acknowledged {size} bytes, {stream.held} unacknowledged"
            )
        stream.held -= size
        stream.pending_update += size
        if stream.pending_update >= self.window // 2 and not stream.remote_fin:
            delta = stream.pending_update
            stream.pending_update = 0
            stream.recv_window += delta
            self._emit(TYPE_WINDOW_UPDATE, 0, stream_id, delta)

    def ping(self) -> int:
        """Queue a Ping (SYN) and return its opaque value, echoed in :class:`PongReceived`."""
        opaque = self._ping_id
        self._ping_id = (self._ping_id + 1) & 0xFFFF_FFFF
        self._emit(TYPE_PING, FLAG_SYN, 0, opaque)
        return opaque

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Queue a GoAway with ``code`` (once): no new streams from either side after it."""
        if not 0 <= code <= 0xFFFF_FFFF:
            raise ConfigError(f"invalid yamux GoAway code {code}")
        if self.local_go_away:
            return
        self.local_go_away = True
        self._emit(TYPE_GO_AWAY, 0, 0, code)
