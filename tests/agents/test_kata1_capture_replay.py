"""The recorded 1.x agent, byte for byte, against our client over yamux.

A scripted peer plays the agent's side of each capture (``NAME.agent_to_client.bin``) on a
unix socket, releasing each recorded yamux frame only once our client has sent what the
agent had received at that point (the stream's SYN, the requests it answers, the FIN it
echoes). The client — ``open_agent(..., "kata1")`` with its yamux session, one HTTP/2
connection per stream, grpclib and the 1.x messages — makes the same calls in the same order
and must get the recorded outcomes: the agent's HPACK state, pings, window updates and
trailers-only errors exactly as the real agent sent them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentio.agents import Kata1Agent, open_agent
from agentio.protocols.grpc import GrpcClient
from agentio.transports import connect, parse_address
from agentio.transports.yamux.codec import FLAG_SYN, HEADER_SIZE, FrameReader
from agentio.transports.yamux.dialer import YamuxDialer

from .test_kata1_requests import SANDBOX, _check_outcome

PREFACE = 24
END_STREAM = 0x1
BOUND = 10.0


class RecordedAgent(asyncio.Protocol):
    """Replays one capture's agent-to-client frames, each when the client has earned it."""

    def __init__(self, session: dict[str, Any], a2c: bytes) -> None:
        h2 = session["h2_frames"]
        self.frames: list[tuple[bytes, int, int]] = []  # bytes, stream, requests answered
        needed: Counter[int] = Counter()
        for frame in (f for f in session["yamux_frames"] if f["dir"] == "a2c"):
            size = HEADER_SIZE + (frame["len"] if frame["type"] == "Data" else 0)
            stream = frame["stream"]
            for index in frame.get("h2_frames", []):
                h2_stream = h2[index]["stream"]
                if h2_stream:  # answers the ((s + 1) / 2)-th request on this yamux stream
                    needed[stream] = max(needed[stream], (h2_stream + 1) // 2)
            self.frames.append((a2c[frame["off"]:frame["off"] + size], stream, needed[stream]))
        assert sum(len(f[0]) for f in self.frames) == len(a2c)
        self.released = 0
        self.opened: set[int] = set()
        self.requests: Counter[int] = Counter()  # END_STREAMs the client sent, per stream
        self.sent_requests = 0
        self.progress = asyncio.Event()
        self._reader = FrameReader()
        self._h2: dict[int, bytearray] = {}
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._release()

    def data_received(self, data: bytes) -> None:
        for frame in self._reader.feed(data):
            stream = frame.header.stream_id
            if frame.header.flags & FLAG_SYN:
                self.opened.add(stream)
                self._h2[stream] = bytearray()
            if frame.payload:
                self._count_requests(stream, frame.payload)
        self._release()
        self.progress.set()

    def _count_requests(self, stream: int, payload: bytes) -> None:
        buf = self._h2[stream]
        buf += payload
        if buf.startswith(b"PRI * HTTP/2.0"):
            del buf[:PREFACE]
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
            if kind in (0, 1) and flags & END_STREAM:  # DATA or HEADERS ending a request
                self.requests[stream] += 1
                self.sent_requests += 1
            del buf[:9 + length]

    def _release(self) -> None:
        while self.released < len(self.frames):
            data, stream, needed = self.frames[self.released]
            # (a FIN goes after the stream's last answer, whether or not our client has
            # closed its side yet: the Go client closed stream 1 before its last call on 3)
            if stream and (stream not in self.opened or self.requests[stream] < needed):
                return
            self.released += 1
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(data)

    async def wait_requests(self, count: int) -> None:
        while self.sent_requests < count:
            self.progress.clear()
            await asyncio.wait_for(self.progress.wait(), BOUND)


async def _replay(vectors_dir: Path, sock_dir: Path, name: str,
                  clients: Callable[[str], Awaitable[dict[int, Kata1Agent]]]) -> RecordedAgent:
    doc = json.loads((vectors_dir / "kata1" / "vectors.json").read_text())
    session = {s["name"]: s for s in doc["sessions"]}[name]
    a2c = (vectors_dir / "kata1" / f"{name}.agent_to_client.bin").read_bytes()
    peers: list[RecordedAgent] = []

    def accept() -> RecordedAgent:
        peers.append(RecordedAgent(session, a2c))
        return peers[-1]

    path = str(sock_dir / f"{name}.sock")
    server = await asyncio.get_running_loop().create_unix_server(accept, path)
    agents = await clients(f"unix://{path}")
    try:
        calls: list[asyncio.Task[None]] = []
        for index, call in enumerate(session["calls"]):
            # each call goes out once the previous one's request is on the wire, so requests
            # (and HTTP/2 stream ids) follow the recording; answers come as the peer frees them
            agent = agents[call["yamux_stream"]]
            calls.append(asyncio.create_task(_check_outcome(agent, call)))
            while not peers or peers[0].sent_requests <= index:
                waiting: Awaitable[Any] = (peers[0].wait_requests(index + 1) if peers
                                           else asyncio.sleep(0))
                done, _ = await asyncio.wait({calls[-1], asyncio.ensure_future(waiting)},
                                             timeout=BOUND, return_when="FIRST_COMPLETED")
                assert done, f"{name}[{index}] {call['path']} never went out"
                if calls[-1].done():
                    calls[-1].result()
                    break
        await asyncio.wait_for(asyncio.gather(*calls), BOUND)
    finally:
        for agent in set(agents.values()):
            await agent.disconnect()
        server.close()
        await server.wait_closed()
    (peer,) = peers
    return peer


@pytest.mark.parametrize("name", ["health", "lifecycle", "errors"])
async def test_client_completes_the_recorded_session(
    vectors_dir: Path, sock_dir: Path, name: str
) -> None:
    async def one_stream(address: str) -> dict[int, Kata1Agent]:
        agent = open_agent(address, "kata1", sandbox_id=SANDBOX)  # unix: yamux by default
        assert isinstance(agent, Kata1Agent)
        return {1: agent}

    peer = await _replay(vectors_dir, sock_dir, name, one_stream)
    assert peer.opened == {1}
    assert peer.released == len(peer.frames)  # the agent's whole side was played


async def test_client_completes_the_recorded_two_stream_session(
    vectors_dir: Path, sock_dir: Path
) -> None:
    dialers: list[YamuxDialer] = []

    async def two_streams(address: str) -> dict[int, Kata1Agent]:
        target = parse_address(address)
        dialer = YamuxDialer(lambda factory: connect(target, factory))
        dialers.append(dialer)
        agents = {}
        for stream in (1, 3):  # connect in order: yamux stream ids 1, then 3
            client = GrpcClient(dialer.connect_stream)
            await client.connect()
            agents[stream] = Kata1Agent(client, sandbox_id=SANDBOX)
        return agents

    try:
        peer = await _replay(vectors_dir, sock_dir, "concurrent", two_streams)
    finally:
        for dialer in dialers:
            await dialer.close()
    assert peer.opened == {1, 3}
    assert peer.released == len(peer.frames)
