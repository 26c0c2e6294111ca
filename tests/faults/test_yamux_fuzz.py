"""A yamux client session fed by a malicious peer (hypothesis).

The peer's bytes mix frames that fit the protocol (data within or beyond the window, window
updates, pings, SYN/ACK/FIN/RST on any stream, GoAway) with truncated frames and garbage,
cut into arbitrary chunks. Whatever arrives, ``data_received`` never raises; either the
session is still running and every stream holds at most one window of undelivered bytes, or
it ended with a typed error, its byte stream closed and every stream told it was lost (or, for
a stream the peer had already finished, given its end of file and then closed).
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentio.errors import AgentError, ConnectionClosed
from agentio.testing import MemoryTransport
from agentio.transports.yamux.codec import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    TYPE_DATA,
    encode_header,
)
from agentio.transports.yamux.session import YamuxSession, YamuxStream

STREAMS = 3  # ours: 1, 3, 5


class Held(asyncio.Protocol):
    """Never reads: what arrives stays in the stream, bounded by the window."""

    def __init__(self) -> None:
        self.received = 0
        self.eof = False
        self.lost: list[Exception | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, YamuxStream)
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None  # close our side too, as asyncio's default does

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


stream_ids = st.one_of(st.integers(0, 2 * STREAMS + 3), st.integers(0, 0xFFFF_FFFF))
flags = st.sampled_from([0, 1, 2, 4, 8, 3, 5, 0xFFFF])
frames = st.one_of(
    st.builds(lambda sid, f, n: encode_header(TYPE_DATA, f, sid, n) + b"\x5a" * n,
              stream_ids, flags, st.integers(0, 4096)),
    st.builds(lambda t, f, sid, n: encode_header(t, f, sid, n),
              st.integers(1, 3), flags, stream_ids, st.integers(0, 0xFFFF_FFFF)),
    st.builds(lambda t, f, sid, n, cut: encode_header(t, f, sid, n)[:cut],
              st.integers(0, 3), flags, stream_ids, st.integers(0, 1 << 20),
              st.integers(0, HEADER_SIZE - 1)),
    st.binary(min_size=1, max_size=32),
)


@st.composite
def wire(draw: st.DrawFn) -> list[bytes]:
    data = b"".join(draw(st.lists(frames, max_size=16)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)]) if b > a]


async def _scenario(chunks: list[bytes]) -> None:
    session = YamuxSession("client")
    transport = MemoryTransport()
    transport.attach(session)
    opened = [await session.connect_stream(Held) for _ in range(STREAMS)]
    for chunk in chunks:
        session.data_received(chunk)  # must never raise
        if session.exception() is None:
            assert all(s.buffered + p.received <= INITIAL_WINDOW for s, p in opened)
    await asyncio.sleep(0)
    error = session.exception()
    if error is not None:
        assert isinstance(error, AgentError)
        assert transport.closed
        for _, protocol in opened:
            # a stream the peer had finished (FIN) is delivered to its end first, and then
            # closes cleanly as asyncio's convention has it; any other learns the session died
            assert len(protocol.lost) == 1
            assert isinstance(protocol.lost[0], ConnectionClosed) or (
                protocol.lost[0] is None and protocol.eof)
    session.abort()
    await asyncio.sleep(0)
    for _, protocol in opened:
        assert len(protocol.lost) == 1  # told exactly once, however it ended


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=wire())
def test_any_peer_bytes_keep_the_session_bounded_or_end_it_typed(chunks: list[bytes]) -> None:
    asyncio.run(_scenario(chunks))
