"""hyperstart wire codec, sans-I/O: ctl and tty frames, incremental decoders, safe encoders.

Layer: protocols. Imports only :mod:`agentio.errors`; no sockets, no awaits, no clocks.

hyperstart talks on two byte streams, all integers big-endian:

* **ctl** — ``code u32 | length u32 | payload``; ``length`` counts the 8-byte header. Payloads
  are JSON objects (or raw bytes for a few replies, e.g. the VERSION number or READFILE data).
* **tty** — ``seq u64 | length u32 | payload``; ``length`` counts the 12-byte header. Each
  process's stdio travels on sequence numbers the host chose; a zero-length frame ends a stream.

The guest is untrusted: every length is checked against the bytes it claims and a configured
maximum before anything is buffered, and every malformed input raises a
:class:`~agentio.errors.ProtocolError` (or :class:`~agentio.errors.FrameTooLarge`). A decoder
that raised stays broken: the stream has lost its framing.

The real agent is also fragile, so the encoders refuse what would crash it: a tty frame over
4096 bytes (guest kernel panic), stdin over 512 bytes per frame (silently cut), host-sent NEXT /
ACK / ERROR and the deprecated codes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

from agentio.errors import ConfigError, FrameTooLarge, ProtocolError

CTL_HEADER_SIZE: Final = 8
TTY_HEADER_SIZE: Final = 12

MAX_TTY_FRAME_OUT: Final = 4096
"""Largest tty frame (header included) the host may send: a bigger one panics the guest."""
MAX_STDIN_CHUNK: Final = 512
"""Largest stdin payload per frame: the agent silently drops what follows in the same frame."""
MAX_TTY_PAYLOAD_IN: Final = 64 * 1024
"""Default bound on an incoming tty payload (the agent sends at most 10240-byte frames)."""
MAX_CTL_PAYLOAD: Final = 4 * 1024 * 1024
"""Default bound on a ctl payload, either direction."""
MAX_SEQ: Final = (1 << 64) - 1

_CTL = struct.Struct(">II")
_TTY = struct.Struct(">QI")
_U32 = struct.Struct(">I")


class Code(enum.IntEnum):
    """ctl message codes (hyperstart ``api.h``)."""

    VERSION = 0
    STARTPOD = 1
    GETPOD_DEPRECATED = 2
    STOPPOD_DEPRECATED = 3
    DESTROYPOD = 4
    RESTARTCONTAINER_DEPRECATED = 5
    EXECCMD = 6
    CMDFINISHED_DEPRECATED = 7
    READY = 8
    ACK = 9
    ERROR = 10
    WINSIZE = 11
    PING = 12
    PODFINISHED_DEPRECATED = 13
    NEXT = 14
    WRITEFILE = 15
    READFILE = 16
    NEWCONTAINER = 17
    KILLCONTAINER = 18
    ONLINECPUMEM = 19
    SETUPINTERFACE = 20
    SETUPROUTE = 21
    REMOVECONTAINER = 22
    PROCESSASYNCEVENT = 23
    SIGNALPROCESS = 24
    DELETEINTERFACE = 25


HOST_COMMANDS: Final = frozenset({
    Code.VERSION, Code.STARTPOD, Code.DESTROYPOD, Code.EXECCMD, Code.WINSIZE, Code.PING,
    Code.WRITEFILE, Code.READFILE, Code.NEWCONTAINER, Code.KILLCONTAINER, Code.ONLINECPUMEM,
    Code.SETUPINTERFACE, Code.SETUPROUTE, Code.REMOVECONTAINER, Code.SIGNALPROCESS,
    Code.DELETEINTERFACE,
})
"""The codes a host may send: commands the agent answers with one ACK or ERROR."""

GUEST_CODES: Final = frozenset({
    Code.READY, Code.ACK, Code.ERROR, Code.NEXT, Code.PROCESSASYNCEVENT,
})
"""The codes the agent sends to the host."""


class CtlFrame(NamedTuple):
    """One ctl message: its code (an int, as unknown codes can be decoded) and payload."""

    code: int
    payload: bytes


class TtyFrame(NamedTuple):
    """One tty message: the stream's sequence number and its bytes (``b""`` ends the stream)."""

    seq: int
    payload: bytes


def code_name(code: int) -> str:
    """The name of a ctl code, or the number when it is not one."""
    member = Code._value2member_map_.get(code)
    return member.name if isinstance(member, Code) else str(code)


# --- encoders -----------------------------------------------------------------------------


def encode_ctl(code: int, payload: bytes = b"", *, max_payload: int = MAX_CTL_PAYLOAD) -> bytes:
    """One ctl frame. Any code is accepted here; :func:`encode_command` is the safe entry."""
    if not 0 <= code <= 0xFFFF_FFFF:
        raise ConfigError(f"ctl code {code} out of range")
    if len(payload) > max_payload:
        raise FrameTooLarge(f"ctl payload of {len(payload)} bytes exceeds {max_payload}")
    return _CTL.pack(code, CTL_HEADER_SIZE + len(payload)) + payload


def encode_command(code: Code | int, payload: bytes = b"", *,
                   max_payload: int = MAX_CTL_PAYLOAD) -> bytes:
    """A ctl frame for a host command; refuses codes a host must never send."""
    if code not in HOST_COMMANDS:
        raise ConfigError(f"ctl code {code_name(code)} is not a host command")
    return encode_ctl(int(code), payload, max_payload=max_payload)


def encode_tty(seq: int, payload: bytes = b"", *, max_frame: int = MAX_TTY_FRAME_OUT) -> bytes:
    """One tty frame; refuses a frame over ``max_frame`` bytes (4096: the guest's limit)."""
    if not 0 <= seq <= MAX_SEQ:
        raise ConfigError(f"tty seq {seq} out of range")
    size = TTY_HEADER_SIZE + len(payload)
    if size > max_frame:
        raise FrameTooLarge(f"tty frame of {size} bytes exceeds {max_frame}")
    return _TTY.pack(seq, size) + payload


def iter_stdin_frames(seq: int, data: bytes, *, chunk: int = MAX_STDIN_CHUNK) -> Iterator[bytes]:
    """Frames carrying ``data`` to stdin ``seq``, in order, at most ``chunk`` bytes each.

    Empty ``data`` yields nothing (a zero-length frame would close stdin: see
    :func:`encode_stdin_close`).
    """
    if not 0 < chunk <= MAX_STDIN_CHUNK:
        raise ConfigError(f"stdin chunk must be 1..{MAX_STDIN_CHUNK}, not {chunk}")
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        yield encode_tty(seq, bytes(view[start:start + chunk]))


def encode_stdin(seq: int, data: bytes, *, chunk: int = MAX_STDIN_CHUNK) -> bytes:
    """All of :func:`iter_stdin_frames` joined: ready for one transport write."""
    return b"".join(iter_stdin_frames(seq, data, chunk=chunk))


def encode_stdin_close(seq: int) -> bytes:
    """The zero-length frame that closes stdin ``seq``."""
    return encode_tty(seq)


def encode_u32(value: int) -> bytes:
    """A big-endian u32 payload (the VERSION reply, NEXT counts)."""
    return _U32.pack(value)


def decode_u32(payload: bytes, what: str) -> int:
    """A u32 payload: exactly four bytes, else :class:`ProtocolError`."""
    if len(payload) != 4:
        raise ProtocolError(f"{what}: expected a 4-byte number, got {len(payload)} bytes")
    value: int = _U32.unpack(payload)[0]
    return value


# --- decoders -----------------------------------------------------------------------------


class _Decoder:
    """Shared incremental framing: a header with the total length, then the payload."""

    _header: struct.Struct
    _name: str

    def __init__(self, max_payload: int) -> None:
        if max_payload < 0:
            raise ConfigError("max_payload must not be negative")
        self._max_payload = max_payload
        self._buffer = bytearray()
        self._broken: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)

    def _frames(self, data: bytes | bytearray | memoryview) -> Iterator[tuple[int, bytes]]:
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        header_size = self._header.size
        pos = 0
        buf = self._buffer
        try:
            while len(buf) - pos >= header_size:
                key, length = self._header.unpack_from(buf, pos)
                if length < header_size:
                    raise ProtocolError(
                        f"{self._name} frame length {length} is shorter than its header")
                if length - header_size > self._max_payload:
                    raise FrameTooLarge(f"{self._name} frame of {length} bytes exceeds the "
                                        f"{self._max_payload}-byte payload limit")
                if len(buf) - pos < length:
                    break
                yield key, bytes(buf[pos + header_size:pos + length])
                pos += length
        except ProtocolError as exc:
            self._broken = exc
            self._buffer = bytearray()
            raise
        del buf[:pos]


class CtlDecoder(_Decoder):
    """Turns ctl bytes into :class:`CtlFrame` values, whatever their code."""

    _header = _CTL
    _name = "ctl"

    def __init__(self, max_payload: int = MAX_CTL_PAYLOAD) -> None:
        super().__init__(max_payload)

    def feed(self, data: bytes | bytearray | memoryview) -> list[CtlFrame]:
        """Every frame completed by ``data``; raises :class:`ProtocolError` on bad framing."""
        return [CtlFrame(code, payload) for code, payload in self._frames(data)]


class TtyDecoder(_Decoder):
    """Turns tty bytes into :class:`TtyFrame` values."""

    _header = _TTY
    _name = "tty"

    def __init__(self, max_payload: int = MAX_TTY_PAYLOAD_IN) -> None:
        super().__init__(max_payload)

    def feed(self, data: bytes | bytearray | memoryview) -> list[TtyFrame]:
        """Every frame completed by ``data``; raises :class:`ProtocolError` on bad framing."""
        return [TtyFrame(seq, payload) for seq, payload in self._frames(data)]
