"""ttrpc wire codec, sans-I/O (layer: protocols): frames, envelopes and an incremental decoder.

Layer: protocols. Imports only :mod:`agentio.errors`; no sockets, no awaits, no clocks.

A frame is a 10-byte big-endian header (payload length u32, stream id u32, type u8, flags u8)
followed by the payload. Request and response payloads are small protobuf envelopes that this
module encodes and decodes by hand: they are on the per-call hot path, and a generic protobuf
runtime costs tens of microseconds per message where these loops cost a few.

Everything read from the wire is untrusted: lengths are checked against the bytes actually
present (or the configured maximum) before anything is sliced or buffered, and every malformed
input raises :class:`agentio.errors.ProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, NamedTuple

from agentio.errors import ConfigError, FrameTooLarge, ProtocolError

HEADER_SIZE: Final = 10
MAX_PAYLOAD: Final = 4 * 1024 * 1024
MAX_STREAM_ID: Final = 0xFFFF_FFFF

TYPE_REQUEST: Final = 1
TYPE_RESPONSE: Final = 2
TYPE_DATA: Final = 3

_HEADER = struct.Struct(">IIBB")
_U64: Final = 1 << 64
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_MAX_FIELD: Final = (1 << 29) - 1
# Groups are deprecated but legal protobuf; bound their nesting so a hostile peer cannot make
# the skipper hold an unbounded stack.
_MAX_GROUP_DEPTH: Final = 64
# Wording follows Go's decoder where the vectors show it (a truncated message is reported to
# clients as "unexpected EOF").
_EOF: Final = "unexpected EOF"


# --- events -------------------------------------------------------------------------------


class Frame(NamedTuple):
    """A complete frame as read from the wire; the payload is not decoded yet."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


class OversizedFrame(NamedTuple):
    """A header announced a payload over the limit; its bytes are skipped, never buffered.

    Emitted as soon as the header is read, so a server can answer RESOURCE_EXHAUSTED on that
    stream (and a client can fail that one call) while the payload is still being discarded.
    """

    stream_id: int
    type: int
    flags: int
    length: int


FrameEvent = Frame | OversizedFrame
Buffer = bytes | bytearray | memoryview


class Request(NamedTuple):
    """The ttrpc ``Request`` envelope."""

    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: tuple[tuple[str, str], ...] = ()


class Response(NamedTuple):
    """The ttrpc ``Response`` envelope, with its ``google.rpc.Status`` flattened in.

    ``has_status`` tells an explicit status (the Rust agent's ``0a 00`` OK included) from an
    absent one (the Go server on success); ``details`` are the raw encoded ``Any`` messages.
    """

    payload: bytes = b""
    code: int = 0
    message: str = ""
    details: tuple[bytes, ...] = ()
    has_status: bool = False


_EMPTY_RESPONSE: Final = Response()


# --- frames -------------------------------------------------------------------------------


def encode_header(stream_id: int, frame_type: int, length: int, flags: int = 0) -> bytes:
    """The 10-byte header; raises :class:`ConfigError` for out-of-range fields."""
    try:
        return _HEADER.pack(length, stream_id, frame_type, flags)
    except struct.error as exc:
        raise ConfigError(f"invalid ttrpc frame header field: {exc}") from None


def encode_frame(
    stream_id: int,
    frame_type: int,
    payload: bytes,
    flags: int = 0,
    *,
    max_payload: int = MAX_PAYLOAD,
) -> bytes:
    """Header plus payload, refusing payloads over ``max_payload`` with :class:`FrameTooLarge`."""
    length = len(payload)
    if length > max_payload:
        raise FrameTooLarge(
            f"message length {length} exceeds maximum message size of {max_payload}"
        )
    return encode_header(stream_id, frame_type, length, flags) + payload


class FrameDecoder:
    """Incremental frame parser: ``feed(bytes) -> list of events``.

    Each byte is copied a bounded number of times whatever the chunking (no O(n^2) re-joining
    of a large frame arriving in small pieces), and at most one frame of at most
    ``max_payload`` bytes (plus one header) is ever buffered.
    """

    __slots__ = ("_buf", "_need", "_skip", "max_payload")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= MAX_STREAM_ID:
            raise ConfigError(f"max_payload must be within 0..{MAX_STREAM_ID}")
        self.max_payload = max_payload
        self._buf = bytearray()
        self._need = HEADER_SIZE  # bytes the buffer must hold before parsing can progress
        self._skip = 0  # payload bytes of an oversized frame still to discard

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    @property
    def skipping(self) -> int:
        """Bytes of an oversized frame still to be discarded."""
        return self._skip

    def feed(self, data: Buffer) -> list[FrameEvent]:
        """Consume ``data`` and return the frames it completes, in wire order."""
        events: list[FrameEvent] = []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return events
            data = memoryview(data)[self._skip :]
            self._skip = 0
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return events
            chunk = bytes(buf)
            buf.clear()
        else:
            chunk = data if type(data) is bytes else bytes(data)
        self._parse(chunk, events)
        return events

    def _parse(self, data: bytes, events: list[FrameEvent]) -> None:
        end = len(data)
        pos = 0
        need = HEADER_SIZE
        max_payload = self.max_payload
        unpack = _HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            length, stream_id, frame_type, flags = unpack(data, pos)
            start = pos + HEADER_SIZE
            if length > max_payload:
                events.append(OversizedFrame(stream_id, frame_type, flags, length))
                if length > end - start:
                    self._skip = length - (end - start)
                    return
                pos = start + length
                continue
            stop = start + length
            if stop > end:
                need = HEADER_SIZE + length
                break
            events.append(Frame(stream_id, frame_type, flags, data[start:stop]))
            pos = stop
        if pos < end:
            self._buf += memoryview(data)[pos:]
        self._need = need


# --- protobuf primitives ------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        value += _U64  # negative int32/int64 travel as 64-bit two's complement (10 bytes)
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, tag: int, value: bytes) -> None:
    # proto3: an empty string/bytes field is omitted, as Go's encoder does
    if value:
        out.append(tag)
        _put_varint(out, len(value))
        out += value


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError(_EOF)
        byte = data[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise ProtocolError("variable length integer overflow")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length prefix, checked against the bytes present before anything is sliced."""
    if pos < end and data[pos] < 0x80:
        length = data[pos]
        pos += 1
    else:
        length, pos = _varint(data, pos, end)
    if length > end - pos:
        raise ProtocolError(_EOF)
    return length, pos + length


def _text(data: bytes, start: int, stop: int) -> str:
    try:
        return data[start:stop].decode()
    except UnicodeDecodeError:
        raise ProtocolError("string field contains invalid UTF-8") from None


def _signed64(value: int) -> int:
    return value - _U64 if value >= 1 << 63 else value


def _signed32(value: int) -> int:
    # int32 fields are read like Go does: truncate the varint to 32 bits, then sign it
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _skip_field(data: bytes, pos: int, end: int, key: int) -> int:
    """Skip one unknown field whose key was just read; return the position after it."""
    field, wire_type = key >> 3, key & 7
    if field == 0 or field > _MAX_FIELD:
        raise ProtocolError("invalid field number")
    if wire_type == 3:
        return _skip_group(data, pos, end, field)
    return _skip_value(data, pos, end, wire_type)


def _skip_value(data: bytes, pos: int, end: int, wire_type: int) -> int:
    if wire_type == 0:
        return _varint(data, pos, end)[1]
    if wire_type == 2:
        return _length(data, pos, end)[1]
    if wire_type == 1 or wire_type == 5:
        pos += 8 if wire_type == 1 else 4
        if pos > end:
            raise ProtocolError(_EOF)
        return pos
    if wire_type == 4:
        raise ProtocolError("unexpected end group marker")
    raise ProtocolError(f"invalid wire type {wire_type}")


def _skip_group(data: bytes, pos: int, end: int, field: int) -> int:
    open_groups = [field]
    while open_groups:
        key, pos = _varint(data, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 0 or field > _MAX_FIELD:
            raise ProtocolError("invalid field number")
        if wire_type == 4:
            if field != open_groups.pop():
                raise ProtocolError("mismatching end group marker")
        elif wire_type == 3:
            if len(open_groups) >= _MAX_GROUP_DEPTH:
                raise ProtocolError("groups nested too deeply")
            open_groups.append(field)
        else:
            pos = _skip_value(data, pos, end, wire_type)
    return pos


def _key(data: bytes, pos: int, end: int) -> tuple[int, int]:
    key = data[pos]
    if key < 0x80:
        return key, pos + 1
    return _varint(data, pos, end)


# --- Request ------------------------------------------------------------------------------


def encode_request(
    service: str,
    method: str,
    payload: bytes = b"",
    timeout_nano: int = 0,
    metadata: Sequence[tuple[str, str]] = (),
) -> bytes:
    """Encode a ``Request`` envelope byte-identically to the Go client (fields in order 1..5)."""
    out = bytearray()
    _put_bytes(out, 0x0A, service.encode())
    _put_bytes(out, 0x12, method.encode())
    _put_bytes(out, 0x1A, payload)
    if timeout_nano:
        if not _I64_MIN <= timeout_nano <= _I64_MAX:
            raise ConfigError("timeout_nano does not fit in an int64")
        out.append(0x20)
        _put_varint(out, timeout_nano)
    for key, value in metadata:
        entry = bytearray()
        _put_bytes(entry, 0x0A, key.encode())
        _put_bytes(entry, 0x12, value.encode())
        out.append(0x2A)
        _put_varint(out, len(entry))
        out += entry
    return bytes(out)


def decode_request(buffer: Buffer) -> Request:
    """Decode a ``Request`` envelope; unknown fields are skipped, malformed input raises."""
    data = buffer if type(buffer) is bytes else bytes(buffer)
    service = method = ""
    payload = b""
    timeout_nano = 0
    metadata: list[tuple[str, str]] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _key(data, pos, end)
        if key == 0x0A:
            length, pos = _length(data, pos, end)
            service = _text(data, pos - length, pos)
        elif key == 0x12:
            length, pos = _length(data, pos, end)
            method = _text(data, pos - length, pos)
        elif key == 0x1A:
            length, pos = _length(data, pos, end)
            payload = data[pos - length : pos]
        elif key == 0x20:
            value, pos = _varint(data, pos, end)
            timeout_nano = _signed64(value)
        elif key == 0x2A:
            length, pos = _length(data, pos, end)
            metadata.append(_decode_key_value(data, pos - length, pos))
        else:
            pos = _skip_field(data, pos, end, key)
    return Request(service, method, payload, timeout_nano, tuple(metadata))


def _decode_key_value(data: bytes, pos: int, end: int) -> tuple[str, str]:
    key_text = value_text = ""
    while pos < end:
        key, pos = _key(data, pos, end)
        if key == 0x0A or key == 0x12:
            length, pos = _length(data, pos, end)
            text = _text(data, pos - length, pos)
            if key == 0x0A:
                key_text = text
            else:
                value_text = text
        else:
            pos = _skip_field(data, pos, end, key)
    return key_text, value_text


# --- Response -----------------------------------------------------------------------------


def encode_response(
    payload: bytes = b"",
    code: int = 0,
    message: str = "",
    *,
    explicit_ok: bool = False,
    details: Sequence[bytes] = (),
) -> bytes:
    """Encode a ``Response`` envelope.

    A success carries no status (Go server style) unless ``explicit_ok`` asks for the Rust
    agent's empty ``0a 00`` status.
    """
    out = bytearray()
    if code or message or details or explicit_ok:
        status = bytearray()
        if code:
            status.append(0x08)
            _put_varint(status, code)
        _put_bytes(status, 0x12, message.encode())
        for detail in details:
            status.append(0x1A)
            _put_varint(status, len(detail))
            status += detail
        out.append(0x0A)
        _put_varint(out, len(status))
        out += status
    _put_bytes(out, 0x12, payload)
    return bytes(out)


def decode_response(buffer: Buffer) -> Response:
    """Decode a ``Response`` envelope; both OK forms (no status, empty status) give code 0."""
    if not buffer:
        return _EMPTY_RESPONSE
    data = buffer if type(buffer) is bytes else bytes(buffer)
    payload = b""
    code = 0
    message = ""
    details: list[bytes] = []
    has_status = False
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _key(data, pos, end)
        if key == 0x12:
            length, pos = _length(data, pos, end)
            payload = data[pos - length : pos]
        elif key == 0x0A:
            length, pos = _length(data, pos, end)
            # a repeated embedded message merges into the earlier one, per protobuf rules
            code, message = _decode_status(data, pos - length, pos, code, message, details)
            has_status = True
        else:
            pos = _skip_field(data, pos, end, key)
    return Response(payload, code, message, tuple(details), has_status)


def _decode_status(
    data: bytes, pos: int, end: int, code: int, message: str, details: list[bytes]
) -> tuple[int, str]:
    while pos < end:
        key, pos = _key(data, pos, end)
        if key == 0x08:
            value, pos = _varint(data, pos, end)
            code = _signed32(value)
        elif key == 0x12:
            length, pos = _length(data, pos, end)
            message = _text(data, pos - length, pos)
        elif key == 0x1A:
            length, pos = _length(data, pos, end)
            details.append(data[pos - length : pos])
        else:
            pos = _skip_field(data, pos, end, key)
    return code, message
