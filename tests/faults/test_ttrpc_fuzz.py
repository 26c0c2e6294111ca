"""A ttrpc client connection fed by a malicious peer (hypothesis).

The peer's bytes are a mix of well-formed answers (right and wrong stream ids, any status,
duplicated), frames of any type, oversized headers, truncated frames and raw garbage, cut
into arbitrary chunks, optionally followed by end of file. Whatever arrives: every call ends
with its answer bytes or an :class:`agentio.errors.AgentError` (never another exception),
nothing waits once the connection is closed, and the connection never holds more than one
frame of input.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentio.errors import AgentError
from agentio.protocols.ttrpc import TtrpcConnection
from agentio.protocols.ttrpc.codec import (
    HEADER_SIZE,
    TYPE_RESPONSE,
    encode_frame,
    encode_header,
    encode_response,
)
from agentio.testing import MemoryTransport

CALLS = 6
MAX_PAYLOAD = 4096  # small, so that oversized frames are cheap to generate

stream_ids = st.one_of(
    st.integers(0, 2 * CALLS + 2),  # the ids in use, their even neighbours, 0
    st.integers(0, 0xFFFF_FFFF),
)
responses = st.builds(
    encode_response,
    payload=st.binary(max_size=64),
    code=st.integers(0, 20),
    message=st.text(max_size=16),
)
frames = st.one_of(
    st.builds(lambda sid, body: encode_frame(sid, TYPE_RESPONSE, body), stream_ids, responses),
    st.builds(lambda sid, t, body: encode_header(sid, t, len(body)) + body,
              stream_ids, st.integers(0, 255), st.binary(max_size=64)),
    st.builds(lambda sid, n: encode_header(sid, TYPE_RESPONSE, n), stream_ids,
              st.integers(MAX_PAYLOAD + 1, 0xFFFF_FFFF)),  # header only: announced, not sent
    st.builds(lambda f, cut: f[:cut], st.builds(
        lambda sid, body: encode_frame(sid, TYPE_RESPONSE, body), stream_ids, responses),
        st.integers(0, HEADER_SIZE + 8)),
    st.binary(min_size=1, max_size=64),
)


@st.composite
def wire(draw: st.DrawFn) -> list[bytes]:
    """The peer's bytes, cut into chunks at arbitrary places."""
    data = b"".join(draw(st.lists(frames, max_size=20)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


async def _scenario(chunks: list[bytes], deadlines: list[float | None], eof: bool) -> None:
    conn = TtrpcConnection(max_payload=MAX_PAYLOAD)
    transport = MemoryTransport()
    transport.attach(conn)
    calls = [asyncio.ensure_future(conn.call("svc", f"M{i}", b"x", timeout=deadline))
             for i, deadline in enumerate(deadlines)]
    await asyncio.sleep(0)  # every request written
    for chunk in chunks:
        conn.data_received(chunk)
        assert conn.buffered <= HEADER_SIZE + MAX_PAYLOAD
        assert conn.pending <= CALLS
        await asyncio.sleep(0)
    if eof:
        conn.eof_received()
    conn.close()
    await asyncio.sleep(0)
    # closed: nothing may still be waiting, and every outcome is typed
    assert all(call.done() for call in calls)
    for call in calls:
        exc = call.exception()
        assert exc is None or isinstance(exc, AgentError), repr(exc)
        if exc is None:
            assert isinstance(call.result(), bytes)
    assert conn.pending == 0 and conn.is_closed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=wire(),
    deadlines=st.lists(st.sampled_from([None, 5.0]), min_size=CALLS, max_size=CALLS),
    eof=st.booleans(),
)
def test_any_peer_bytes_end_every_call_typed_and_bounded(
    chunks: list[bytes], deadlines: list[float | None], eof: bool
) -> None:
    asyncio.run(_scenario(chunks, deadlines, eof))
