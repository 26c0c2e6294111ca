"""Case 4: a header announcing 4 GiB is rejected without allocating it, in every framing.

Each length-prefixed decoder the library runs on guest bytes (ttrpc frames, yamux frames,
hyperstart ctl and tty frames) is fed the largest length its header can carry, followed by
16 MiB of payload, under tracemalloc: the outcome is typed and the peak allocation stays
far below what was announced (and below what was sent).
"""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from agentio.errors import FrameTooLarge, ProtocolError, ResourceExhausted, YamuxError
from agentio.protocols.hyperstart.codec import CtlDecoder, TtyDecoder
from agentio.protocols.ttrpc import TtrpcConnection
from agentio.protocols.ttrpc.codec import (
    MAX_PAYLOAD,
    TYPE_RESPONSE,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
    encode_header,
    encode_response,
)
from agentio.testing import MemoryTransport
from agentio.transports.yamux.codec import (
    TYPE_DATA,
    FrameReader,
    YamuxConnection,
)
from agentio.transports.yamux.codec import encode_header as yamux_header

U32_MAX = 0xFFFF_FFFF
SENT = 16 << 20  # payload bytes actually sent after the header
CHUNK = 64 << 10
PEAK_BOUND = 2 << 20  # one chunk, one bounded frame buffer and the interpreter's own noise


@contextmanager
def peak_allocation() -> Iterator[Callable[[], int]]:
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def filler() -> Iterator[bytes]:
    chunk = b"\xab" * CHUNK
    for _ in range(SENT // CHUNK):
        yield chunk


def test_ttrpc_decoder_skips_a_4gib_frame_without_buffering_it() -> None:
    decoder = FrameDecoder()
    with peak_allocation() as peak:
        events = decoder.feed(encode_header(1, TYPE_RESPONSE, U32_MAX))
        for chunk in filler():
            assert decoder.feed(chunk) == []
        assert peak() < PEAK_BOUND
    assert events == [OversizedFrame(1, TYPE_RESPONSE, 0, U32_MAX)]


@pytest.mark.parametrize("length", [MAX_PAYLOAD + 1, 64 << 20, U32_MAX])
async def test_ttrpc_client_fails_only_the_call_with_the_oversized_answer(length: int) -> None:
    """The call the huge frame answers fails with ResourceExhausted as soon as the header is
    read; when the peer really sends that much, it is skipped and the framing stays intact
    (the next answer completes its call)."""
    conn = TtrpcConnection()
    transport = MemoryTransport()
    transport.attach(conn)
    first = asyncio.ensure_future(conn.call("svc", "Big", b"", timeout=5))
    second = asyncio.ensure_future(conn.call("svc", "Small", b"", timeout=5))
    await asyncio.sleep(0)
    with peak_allocation() as peak:
        conn.data_received(encode_header(1, TYPE_RESPONSE, length))
        await asyncio.sleep(0)
        assert first.done()
        with pytest.raises(ResourceExhausted):
            first.result()
        remaining = length
        for chunk in filler():
            if remaining <= len(chunk):
                break
            conn.data_received(chunk)
            remaining -= len(chunk)
        assert peak() < PEAK_BOUND
    if length <= SENT:  # the peer sent all it announced: the connection goes on
        conn.data_received(b"\0" * remaining + encode_frame(3, TYPE_RESPONSE,
                                                            encode_response(b"ok")))
        assert await second == b"ok"
    else:
        assert not second.done() and not conn.is_closed
        conn.close()
        with pytest.raises(Exception, match="closed"):
            await second


def test_yamux_data_header_of_4gib_is_a_yamux_error_before_its_payload() -> None:
    reader = FrameReader()
    with peak_allocation() as peak, pytest.raises(YamuxError, match="exceeds"):
        reader.feed(yamux_header(TYPE_DATA, 0, 1, U32_MAX) + b"\xab" * CHUNK)
    assert peak() < PEAK_BOUND
    # and through the connection state machine, which tears the session down
    conn = YamuxConnection("client")
    conn.open_stream()
    conn.data_to_send()
    with pytest.raises(YamuxError):
        conn.receive_data(yamux_header(TYPE_DATA, 0, 1, U32_MAX))
    assert conn.error is not None


@pytest.mark.parametrize("decoder_type, header", [
    (CtlDecoder, struct.pack(">II", 10, U32_MAX)),
    (TtyDecoder, struct.pack(">QI", 7, U32_MAX)),
], ids=["ctl", "tty"])
def test_hyperstart_header_of_4gib_is_too_large_before_its_payload(
    decoder_type: type[CtlDecoder] | type[TtyDecoder], header: bytes
) -> None:
    decoder = decoder_type()
    with peak_allocation() as peak, pytest.raises(FrameTooLarge):
        decoder.feed(header)
    assert peak() < PEAK_BOUND
    with pytest.raises(ProtocolError):  # stays broken: the framing is lost
        decoder.feed(b"\0" * 16)
