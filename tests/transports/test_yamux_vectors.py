"""The yamux codec against byte streams recorded between the Kata 1.x agent and its Go client.

Each capture is parsed frame by frame (every byte accounted for), then replayed through a
client and a server :class:`YamuxConnection` driven with the same operations the Go peers
performed: both must reproduce their side of the recording byte for byte, and the per-stream
payloads they deliver must be whole HTTP/2 connections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hyperframe.frame import Frame as H2Frame

from agentio.transports.yamux.codec import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    FrameReader,
    PingReceived,
    PongReceived,
    StreamAccepted,
    StreamData,
    StreamEnded,
    StreamOpened,
    YamuxConnection,
)

SESSIONS = ("health", "lifecycle", "errors", "concurrent")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TYPES = {"Data": TYPE_DATA, "WindowUpdate": TYPE_WINDOW_UPDATE, "Ping": TYPE_PING,
         "GoAway": TYPE_GO_AWAY}
FLAGS = {"SYN": FLAG_SYN, "ACK": FLAG_ACK, "FIN": FLAG_FIN, "RST": FLAG_RST}
H2_SETTINGS = 0x4


@pytest.fixture(scope="module")
def kata1(vectors_dir: Path) -> dict[str, Any]:
    path = vectors_dir / "kata1"
    if not (path / "vectors.json").is_file():
        pytest.skip("kata1 vectors absent")
    doc = json.loads((path / "vectors.json").read_text())
    return {"dir": path, "sessions": {s["name"]: s for s in doc["sessions"]}}


def _read(kata1: dict[str, Any], name: str, direction: str) -> bytes:
    suffix = "client_to_agent" if direction == "c2a" else "agent_to_client"
    data: bytes = (kata1["dir"] / f"{name}.{suffix}.bin").read_bytes()
    return data


def _length_field(frame: dict[str, Any]) -> int:
    for key in ("len", "delta", "opaque", "code"):
        if key in frame:
            value: int = frame[key]
            return value
    raise AssertionError(f"frame without a length field: {frame}")


@pytest.mark.parametrize("name", SESSIONS)
@pytest.mark.parametrize("direction", ["c2a", "a2c"])
def test_every_byte_is_a_typed_frame(kata1: dict[str, Any], name: str, direction: str) -> None:
    data = _read(kata1, name, direction)
    session = kata1["sessions"][name]
    reader = FrameReader()
    frames = reader.feed(data)
    assert reader.buffered == 0
    assert sum(HEADER_SIZE + len(f.payload) for f in frames) == len(data)
    expected = [f for f in session["yamux_frames"] if f["dir"] == direction]
    assert len(frames) == len(expected)
    offset = 0
    for frame, want in zip(frames, expected, strict=True):
        assert want["off"] == offset
        header = frame.header
        assert header.version == 0
        assert header.type == TYPES[want["type"]]
        assert header.flags == sum(FLAGS[f] for f in want["flags"])
        assert header.stream_id == want["stream"]
        assert header.length == _length_field(want)
        if header.type in (TYPE_PING, TYPE_GO_AWAY):
            assert header.stream_id == 0
        else:
            assert header.stream_id in session["summary"]["yamux_streams"]
            # Client-opened streams: odd ids only.
            assert header.stream_id % 2 == 1
        offset += HEADER_SIZE + len(frame.payload)


@pytest.mark.parametrize("name", SESSIONS)
def test_replay_reproduces_both_sides(kata1: dict[str, Any], name: str) -> None:
    """Drive a client and a server connection like the Go peers; both outputs match exactly."""
    session = kata1["sessions"][name]
    wire = {d: _read(kata1, name, d) for d in ("c2a", "a2c")}
    client = YamuxConnection("client")
    agent = YamuxConnection("server")
    produced = {"c2a": bytearray(), "a2c": bytearray()}
    received: dict[str, dict[int, bytearray]] = {"c2a": {}, "a2c": {}}
    pongs: list[int] = []
    answers: list[bytes] = []
    for frame in sorted(session["yamux_frames"], key=lambda f: f["i"]):
        direction, sid = frame["dir"], frame["stream"]
        flags = set(frame["flags"])
        sender, receiver = (client, agent) if direction == "c2a" else (agent, client)
        start = frame["off"]
        size = HEADER_SIZE + (frame["len"] if frame["type"] == "Data" else 0)
        raw = wire[direction][start : start + size]
        # The sender performs the operation the recorded frame stands for.
        if frame["type"] == "Data":
            assert sender.send_data(sid, raw[HEADER_SIZE:]) == frame["len"]
        elif frame["type"] == "WindowUpdate" and "SYN" in flags:
            assert client.open_stream() == sid
        elif frame["type"] == "WindowUpdate" and "ACK" in flags:
            agent.accept_stream(sid)
        elif frame["type"] == "WindowUpdate" and "FIN" in flags:
            sender.close_stream(sid)
        elif frame["type"] == "Ping" and "SYN" in flags:
            assert client.ping() == frame["opaque"]
        elif frame["type"] == "Ping" and "ACK" in flags:
            # Queued by the agent's connection when the ping arrived; the Go agent happened
            # to write it a little later, and the replay keeps the recorded order.
            produced[direction] += answers.pop(0)
        produced[direction] += sender.data_to_send()
        for event in receiver.receive_data(raw):
            if isinstance(event, StreamOpened):
                assert event.stream_id == sid
            elif isinstance(event, StreamData):
                received[direction].setdefault(event.stream_id, bytearray()).extend(event.data)
                receiver.acknowledge_received(event.stream_id, len(event.data))
            elif isinstance(event, PongReceived):
                pongs.append(event.opaque)
            elif isinstance(event, PingReceived):
                answers.append(receiver.data_to_send())
            else:
                assert isinstance(event, StreamAccepted | StreamEnded)
    assert not answers
    for direction in ("c2a", "a2c"):
        produced[direction] += (client if direction == "c2a" else agent).data_to_send()
        assert bytes(produced[direction]) == wire[direction]
    assert pongs == [p[2] for p in session["summary"]["yamux_pings"] if p[0] == "a2c"]
    assert sorted(received["c2a"]) == session["summary"]["yamux_streams"]
    for payload in received["c2a"].values():
        assert payload.startswith(PREFACE)
        _assert_h2_frames(bytes(payload[len(PREFACE) :]), first=H2_SETTINGS)
    for payload in received["a2c"].values():
        _assert_h2_frames(bytes(payload), first=H2_SETTINGS)


def _assert_h2_frames(data: bytes, *, first: int) -> None:
    """``data`` is a whole sequence of HTTP/2 frames, the first of type ``first``."""
    pos = 0
    types = []
    while pos < len(data):
        frame, length = H2Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        types.append(frame.type)
        pos += 9 + length
    assert pos == len(data)
    assert types[0] == first
