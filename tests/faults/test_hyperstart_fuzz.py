"""A hyperstart client fed by a malicious guest on both channels (hypothesis).

After a proper VERSION exchange, the guest sends anything on ctl and tty: well-formed replies
(ACK, ERROR, NEXT) with no command pending, exit events as any JSON (for known and unknown
processes, with any status), tty frames for known and unknown seqs (data, and the empty end
frame), truncated frames and garbage, in arbitrary chunks, honouring the client's
pause_reading as a real transport does. Whatever arrives, ``data_received`` never raises, a
process's unread output stays within its limit plus one chunk, and once the client is closed
every call, wait and read has ended with bytes, a status or an
:class:`agentio.errors.AgentError`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentio.errors import AgentError
from agentio.protocols.hyperstart import codec, messages
from agentio.protocols.hyperstart.client import HyperstartClient
from agentio.protocols.hyperstart.codec import Code
from agentio.testing import MemoryTransport

LIMIT = 1024  # per output stream, small so that the bound is reached
MAX_CHUNK = 512
PROCESSES = (("c1", "e1"), ("c1", "e2"))


def _connector(transports: list[MemoryTransport]) -> Callable[..., Any]:
    async def connect(factory: Callable[[], asyncio.Protocol]) -> tuple[MemoryTransport,
                                                                         asyncio.Protocol]:
        protocol = factory()
        transport = MemoryTransport()
        transport.attach(protocol)
        transports.append(transport)
        return transport, protocol
    return connect


def _event(container: str, process: str, status: Any, event: str) -> bytes:
    return codec.encode_ctl(Code.PROCESSASYNCEVENT, json.dumps(
        {"container": container, "process": process, "event": event,
         "status": status}).encode())


names = st.sampled_from(["c1", "e1", "e2", "", "other"])
ctl_frames = st.one_of(
    st.builds(lambda code, body: codec.encode_ctl(code, body),
              st.sampled_from([Code.ACK, Code.ERROR, Code.NEXT, Code.READY, 99, 0]),
              st.binary(max_size=16)),
    st.builds(_event, names, names, st.one_of(st.integers(-5, 300), st.text(max_size=3)),
              st.sampled_from(["finished", "started", ""])),
    st.builds(lambda body: codec.encode_ctl(Code.PROCESSASYNCEVENT, body), st.binary(max_size=32)),
    st.binary(min_size=1, max_size=16),
)


@st.composite
def chunks(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> list[bytes]:
    data = b"".join(draw(st.lists(frames, max_size=12)))
    size = draw(st.integers(1, MAX_CHUNK))
    return [data[i:i + size] for i in range(0, len(data), size)]


async def _scenario(ctl_chunks: list[bytes], tty_data: list[tuple[int, bytes]],
                    tty_garbage: bytes) -> None:
    transports: list[MemoryTransport] = []
    client = HyperstartClient(_connector(transports), _connector(transports),
                              wait_ready=False, output_buffer=LIMIT)
    connecting = asyncio.ensure_future(client.connect(timeout=5))
    await asyncio.sleep(0)
    ctl, tty = (t.get_protocol() for t in transports)
    ctl.data_received(codec.encode_ctl(Code.ACK, codec.encode_u32(4244)))  # type: ignore[attr-defined]
    assert await connecting == 4244
    ios = []
    for container, process in PROCESSES:
        stdio, stderr = client.allocate_seqs(terminal=False)
        ios.append(client.register(container, process, stdio, stderr))
    seqs = [s for io in ios for s in (io.stdio, io.stderr_seq)]
    pending = [asyncio.ensure_future(client.call(messages.ping(), timeout=None))]
    pending += [asyncio.ensure_future(io.wait(0.01)) for io in ios]
    pending += [asyncio.ensure_future(io.read("stderr", 10)) for io in ios]
    await asyncio.sleep(0)
    tty_bytes = b"".join(codec.encode_tty(seqs[i % len(seqs)] if i >= 0 else -i, payload,
                                          max_frame=1 << 20)
                         for i, payload in tty_data) + tty_garbage
    tty_chunks = [tty_bytes[i:i + MAX_CHUNK] for i in range(0, len(tty_bytes), MAX_CHUNK)]
    ctl_transport, tty_transport = transports
    for index in range(max(len(ctl_chunks), len(tty_chunks))):
        if index < len(ctl_chunks) and not ctl_transport.closed:
            ctl.data_received(ctl_chunks[index])  # type: ignore[attr-defined]
        if index < len(tty_chunks) and tty_transport.reading and not tty_transport.closed:
            tty.data_received(tty_chunks[index])  # type: ignore[attr-defined]
        for io in ios:
            assert len(io.stdout.buffer) <= LIMIT + MAX_CHUNK
            assert len(io.stderr.buffer) <= LIMIT + MAX_CHUNK
        await asyncio.sleep(0)
    client.close()
    for _ in range(3):
        await asyncio.sleep(0)
    for task in pending:
        assert task.done()
        exc = task.exception()
        assert exc is None or isinstance(exc, AgentError), repr(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ctl_chunks=chunks(ctl_frames),
    tty_data=st.lists(st.tuples(st.integers(-(1 << 40), 8), st.binary(max_size=700)),
                      max_size=12),
    tty_garbage=st.binary(max_size=24),
)
def test_any_guest_bytes_end_everything_typed_and_bounded(
    ctl_chunks: list[bytes], tty_data: list[tuple[int, bytes]], tty_garbage: bytes
) -> None:
    asyncio.run(_scenario(ctl_chunks, tty_data, tty_garbage))
