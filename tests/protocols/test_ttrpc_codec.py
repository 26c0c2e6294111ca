"""The sans-I/O ttrpc codec: frames, envelopes, the incremental decoder, property tests."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentio.errors import ConfigError, FrameTooLarge, ProtocolError
from agentio.protocols.ttrpc.codec import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_frame,
    encode_header,
    encode_request,
    encode_response,
)

# --- frames -------------------------------------------------------------------------------


def test_header_layout_is_big_endian() -> None:
    assert encode_header(0x01020304, 2, 0x0A0B0C0D, 0x7F) == bytes.fromhex(
        "0a0b0c0d" "01020304" "02" "7f"
    )


def test_encode_frame_refuses_oversized_payload() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(1, TYPE_REQUEST, b"x" * 11, max_payload=10)
    assert len(encode_frame(1, TYPE_REQUEST, b"x" * 10, max_payload=10)) == HEADER_SIZE + 10


@pytest.mark.parametrize("stream_id", [-1, 1 << 32])
def test_encode_frame_refuses_out_of_range_stream_id(stream_id: int) -> None:
    with pytest.raises(ConfigError):
        encode_frame(stream_id, TYPE_REQUEST, b"")


def test_decoder_rejects_bad_limit() -> None:
    with pytest.raises(ConfigError):
        FrameDecoder(-1)
    with pytest.raises(ConfigError):
        FrameDecoder(1 << 32)


def test_decoder_splits_frames_in_one_chunk_and_across_chunks() -> None:
    wire = (
        encode_frame(1, TYPE_REQUEST, b"abc")
        + encode_frame(3, TYPE_RESPONSE, b"")
        + encode_frame(5, 7, b"zz", 9)
    )
    expected = [Frame(1, 1, 0, b"abc"), Frame(3, 2, 0, b""), Frame(5, 7, 9, b"zz")]
    assert FrameDecoder().feed(wire) == expected
    decoder = FrameDecoder()
    events = [event for i in range(len(wire)) for event in decoder.feed(wire[i : i + 1])]
    assert events == expected
    assert decoder.buffered == 0


def test_decoder_accepts_bytearray_and_memoryview() -> None:
    wire = encode_frame(1, TYPE_RESPONSE, b"hi")
    decoder = FrameDecoder()
    assert decoder.feed(bytearray(wire[:4])) == []
    (event,) = decoder.feed(memoryview(wire)[4:])
    assert event == Frame(1, 2, 0, b"hi")
    assert isinstance(event, Frame) and type(event.payload) is bytes


def test_four_gib_header_is_skipped_without_allocation() -> None:
    decoder = FrameDecoder()
    header = encode_header(9, TYPE_RESPONSE, 0xFFFF_FFFF)
    assert decoder.feed(header) == [OversizedFrame(9, TYPE_RESPONSE, 0, 0xFFFF_FFFF)]
    assert decoder.buffered == 0
    assert decoder.skipping == 0xFFFF_FFFF
    chunk = bytes(1 << 20)
    for _ in range(4095):
        assert decoder.feed(chunk) == []
        assert decoder.buffered == 0
    # the last MiB of the skipped payload shares a chunk with the next, normal frame
    tail = bytes((1 << 20) - 1) + encode_frame(11, TYPE_RESPONSE, b"ok")
    assert decoder.feed(tail) == [Frame(11, TYPE_RESPONSE, 0, b"ok")]
    assert decoder.skipping == 0
    assert decoder.buffered == 0


def test_oversized_frame_inside_one_chunk_keeps_framing() -> None:
    decoder = FrameDecoder(max_payload=4)
    wire = encode_frame(1, 1, b"12345", max_payload=5) + encode_frame(3, 1, b"1234")
    assert decoder.feed(wire) == [OversizedFrame(1, 1, 0, 5), Frame(3, 1, 0, b"1234")]


def test_payload_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_payload=MAX_PAYLOAD)
    payload = bytes(MAX_PAYLOAD)
    (event,) = decoder.feed(encode_frame(1, TYPE_REQUEST, payload))
    assert isinstance(event, Frame) and len(event.payload) == MAX_PAYLOAD


def test_large_frame_in_small_chunks_is_linear() -> None:
    # 4 MiB in 1 KiB chunks: re-joining the buffer on every chunk would copy ~8 GiB
    wire = encode_frame(1, TYPE_RESPONSE, bytes(range(256)) * (MAX_PAYLOAD // 256))
    decoder = FrameDecoder()
    started = time.perf_counter()
    events = []
    for i in range(0, len(wire), 1024):
        events += decoder.feed(wire[i : i + 1024])
        assert decoder.buffered <= HEADER_SIZE + MAX_PAYLOAD
    assert time.perf_counter() - started < 5.0
    assert len(events) == 1 and events[0] == Frame(1, 2, 0, wire[HEADER_SIZE:])


# --- envelopes ----------------------------------------------------------------------------


def test_request_encoding_matches_go_field_order_and_omissions() -> None:
    assert encode_request("grpc.Health", "Check") == bytes.fromhex(
        "0a0b677270632e4865616c74681205436865636b"
    )
    full = encode_request("s", "m", b"\x01", 5, [("k", "v")])
    assert full == bytes.fromhex("0a0173" "12016d" "1a0101" "2005" "2a06" "0a016b" "120176")


def test_request_negative_timeout_is_ten_byte_varint() -> None:
    body = encode_request("s", "m", timeout_nano=-1)
    assert body.endswith(b"\x20" + b"\xff" * 9 + b"\x01")
    assert decode_request(body).timeout_nano == -1
    with pytest.raises(ConfigError):
        encode_request("s", "m", timeout_nano=1 << 63)


def test_response_ok_forms() -> None:
    assert decode_response(b"") == Response()
    assert decode_response(b"\x12\x02\x08\x01") == Response(b"\x08\x01")
    explicit = decode_response(b"\x0a\x00\x12\x02\x08\x01")
    assert explicit.code == 0 and explicit.has_status and explicit.payload == b"\x08\x01"
    assert encode_response(b"\x08\x01") == b"\x12\x02\x08\x01"
    assert encode_response(b"\x08\x01", explicit_ok=True) == b"\x0a\x00\x12\x02\x08\x01"
    assert encode_response(b"", explicit_ok=True) == b"\x0a\x00"


def test_response_status_with_details_and_negative_code() -> None:
    body = encode_response(code=-3, message="boom", details=[b"\x0a\x01x", b""])
    response = decode_response(body)
    assert (response.code, response.message, response.details) == (-3, "boom", (b"\x0a\x01x", b""))
    assert response.has_status


def test_repeated_status_merges() -> None:
    body = b"\x0a\x02\x08\x05" + b"\x0a\x03\x12\x01m"
    assert decode_response(body)[1:3] == (5, "m")


# every wire type as an unknown field (number 15): varint, fixed64, bytes, group, fixed32
_UNKNOWN_FIELDS = (
    b"\x78\x96\x01"
    + b"\x79" + bytes(8)
    + b"\x7a\x02hi"
    + b"\x7b" + b"\x08\x01" + b"\x83\x01" + b"\x84\x01" + b"\x7c"  # group 15 holding group 16
    + b"\x7d" + bytes(4)
)


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    body = _UNKNOWN_FIELDS + encode_request("s", "m", b"p", 7, [("a", "b")]) + _UNKNOWN_FIELDS
    assert decode_request(body) == Request("s", "m", b"p", 7, (("a", "b"),))
    response = _UNKNOWN_FIELDS + encode_response(b"x", 5, "nf") + _UNKNOWN_FIELDS
    assert decode_response(response) == Response(b"x", 5, "nf", (), True)
    status = _UNKNOWN_FIELDS + b"\x08\x05"
    assert decode_response(b"\x0a" + bytes([len(status)]) + status).code == 5
    entry = _UNKNOWN_FIELDS + b"\x0a\x01k"
    assert decode_request(b"\x2a" + bytes([len(entry)]) + entry).metadata == (("k", ""),)


def test_known_field_with_other_wire_type_is_skipped_like_go() -> None:
    assert decode_request(b"\x08\x01" + encode_request("s", "m")).service == "s"


@pytest.mark.parametrize(
    ("data", "wording"),
    [
        (b"\xff\xff\xff", "unexpected EOF"),  # vector 29
        (b"\x0a\x05ab", "unexpected EOF"),
        (b"\x1a\xff\xff\xff\xff\x0f", "unexpected EOF"),
        (b"\x20", "unexpected EOF"),
        (b"\x79\x00", "unexpected EOF"),
        (b"\x7d\x00", "unexpected EOF"),
        (b"\x7e", "invalid wire type"),
        (b"\x7f", "invalid wire type"),
        (b"\x00", "invalid field number"),
        (b"\x7c", "end group"),
        (b"\x7b\x84\x01", "mismatching end group"),
        (b"\x7b", "unexpected EOF"),
        (b"\x7b" * 100, "nested too deeply"),
        (b"\x20" + b"\xff" * 10 + b"\x01", "overflow"),
        (b"\x0a\x01\xff", "UTF-8"),
        (b"\x2a\x03\x0a\x01\xff", "UTF-8"),
        (b"\x2a\x05\x0a\x09", "unexpected EOF"),
    ],
)
def test_malformed_request_raises_protocol_error(data: bytes, wording: str) -> None:
    with pytest.raises(ProtocolError, match=wording):
        decode_request(data)


@pytest.mark.parametrize(
    "data", [b"\x12\x05ab", b"\x0a\x03\x08", b"\x0a\x02\x12\x05", b"\x0a\x02\x1a\x09", b"\x0a"]
)
def test_malformed_response_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_response(data)


# --- properties ---------------------------------------------------------------------------

_text = st.text(max_size=40)
_u32 = st.integers(0, 0xFFFF_FFFF)


@given(
    service=_text,
    method=_text,
    payload=st.binary(max_size=300),
    timeout_nano=st.integers(-(1 << 63), (1 << 63) - 1),
    metadata=st.lists(st.tuples(_text, _text), max_size=4),
)
def test_request_round_trip(
    service: str, method: str, payload: bytes, timeout_nano: int, metadata: list[tuple[str, str]]
) -> None:
    body = encode_request(service, method, payload, timeout_nano, metadata)
    assert decode_request(body) == Request(service, method, payload, timeout_nano, tuple(metadata))


@given(
    payload=st.binary(max_size=300),
    code=st.integers(-(1 << 31), (1 << 31) - 1),
    message=_text,
    details=st.lists(st.binary(max_size=20), max_size=3),
    explicit_ok=st.booleans(),
)
def test_response_round_trip(
    payload: bytes, code: int, message: str, details: list[bytes], explicit_ok: bool
) -> None:
    body = encode_response(payload, code, message, explicit_ok=explicit_ok, details=details)
    response = decode_response(body)
    assert response[:4] == (payload, code, message, tuple(details))
    assert response.has_status == bool(code or message or details or explicit_ok)


@st.composite
def _chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(
    frames=st.lists(st.tuples(_u32, st.integers(0, 255), st.integers(0, 255),
                              st.binary(max_size=64)), max_size=6),
    data=st.data(),
)
def test_frames_round_trip_in_any_chunking(
    frames: list[tuple[int, int, int, bytes]], data: st.DataObject
) -> None:
    wire = b"".join(encode_frame(s, t, p, f) for s, t, f, p in frames)
    decoder = FrameDecoder()
    events = [e for chunk in data.draw(_chunked(wire)) for e in decoder.feed(chunk)]
    assert events == [Frame(s, t, f, p) for s, t, f, p in frames]
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(wire=st.binary(max_size=400), max_payload=st.integers(0, 64), data=st.data())
def test_decoder_never_fails_and_stays_bounded(
    wire: bytes, max_payload: int, data: st.DataObject
) -> None:
    decoder = FrameDecoder(max_payload)
    consumed = 0
    for chunk in data.draw(_chunked(wire)):
        for event in decoder.feed(chunk):
            assert isinstance(event, Frame | OversizedFrame)
            if isinstance(event, Frame):
                assert len(event.payload) <= max_payload
                consumed += HEADER_SIZE + len(event.payload)
            else:
                assert event.length > max_payload
        assert decoder.buffered <= HEADER_SIZE + max_payload
    assert consumed <= len(wire)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_envelope_decoders_raise_only_protocol_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


@settings(max_examples=300)
@given(
    prefix=st.binary(max_size=30),
    service=_text,
    payload=st.binary(max_size=30),
    flip=st.integers(0, 200),
    value=st.integers(0, 255),
)
def test_mutated_envelopes_raise_only_protocol_error(
    prefix: bytes, service: str, payload: bytes, flip: int, value: int
) -> None:
    # start from valid messages so mutations reach deep into the parsers
    for body in (
        encode_request(service, "m", payload, 9, [("k", service)]),
        encode_response(payload, 5, service, details=[payload]),
    ):
        mutated = bytearray(prefix + body)
        mutated[flip % len(mutated)] = value
        _decode_or_protocol_error(bytes(mutated))


def _decode_or_protocol_error(data: bytes) -> None:
    """Each envelope decoder returns its envelope or raises ProtocolError, nothing else."""
    for decode, kind in ((decode_request, Request), (decode_response, Response)):
        try:
            result = decode(data)
        except ProtocolError as exc:
            assert exc.message
        else:
            assert isinstance(result, kind)
