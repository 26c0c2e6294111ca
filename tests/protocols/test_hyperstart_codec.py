"""hyperstart framing: encoders keep the agent's limits, decoders survive arbitrary bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentio.errors import ConfigError, FrameTooLarge, ProtocolError
from agentio.protocols.hyperstart import codec, messages
from agentio.protocols.hyperstart.codec import Code, CtlDecoder, TtyDecoder
from agentio.protocols.hyperstart.ctl import CtlClient, CtlState, Reply


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_ctl_decoder_takes_any_bytes(data: bytes, step: int) -> None:
    decoder = CtlDecoder(max_payload=256)
    frames: list[codec.CtlFrame] = []
    try:
        for i in range(0, len(data), step):
            frames.extend(decoder.feed(data[i:i + step]))
    except ProtocolError:
        with pytest.raises(ProtocolError):  # a broken stream stays broken
            decoder.feed(b"\0" * 8)
        return
    assert decoder.buffered < 8 + 256
    assert b"".join(codec.encode_ctl(f.code, f.payload) for f in frames) == \
        data[:len(data) - decoder.buffered]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_tty_decoder_takes_any_bytes(data: bytes, step: int) -> None:
    decoder = TtyDecoder(max_payload=256)
    frames: list[codec.TtyFrame] = []
    try:
        for i in range(0, len(data), step):
            frames.extend(decoder.feed(data[i:i + step]))
    except ProtocolError:
        return
    assert decoder.buffered < 12 + 256
    assert b"".join(codec.encode_tty(f.seq, f.payload, max_frame=1 << 20) for f in frames) == \
        data[:len(data) - decoder.buffered]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.binary(max_size=40)), max_size=8),
       st.binary(max_size=40))
def test_ctl_client_takes_any_frames(frames: list[tuple[int, bytes]], tail: bytes) -> None:
    """Whatever the guest sends, the client yields events or a ProtocolError, nothing else."""
    client = CtlClient(wait_ready=False)
    client.send(Code.EXECCMD, b"{}")
    try:
        for code, payload in frames:
            client.receive(codec.encode_ctl(code, payload))
        client.receive(tail)
    except ProtocolError:
        pass


@pytest.mark.parametrize("size", [7, 0, 5])
def test_ctl_length_shorter_than_header_is_refused(size: int) -> None:
    with pytest.raises(ProtocolError, match="shorter than its header"):
        CtlDecoder().feed(b"\0\0\0\x09" + size.to_bytes(4, "big"))


def test_oversized_frames_are_refused_before_buffering() -> None:
    with pytest.raises(FrameTooLarge):
        CtlDecoder(max_payload=100).feed(codec.encode_ctl(Code.ACK, b"x" * 101)[:8])
    with pytest.raises(FrameTooLarge):
        TtyDecoder(max_payload=100).feed(b"\0" * 8 + (12 + 101).to_bytes(4, "big"))


def test_tty_frames_never_exceed_4096_bytes() -> None:
    assert len(codec.encode_tty(1, b"x" * 4084)) == 4096
    with pytest.raises(FrameTooLarge):
        codec.encode_tty(1, b"x" * 4085)
    with pytest.raises(ConfigError):
        codec.encode_tty(-1)


@given(st.binary(max_size=3000), st.integers(1, 512))
def test_stdin_is_split_in_order_within_512_bytes(data: bytes, chunk: int) -> None:
    wire = codec.encode_stdin(7, data, chunk=chunk)
    frames = TtyDecoder().feed(wire)
    assert all(f.seq == 7 and 0 < len(f.payload) <= chunk for f in frames)
    assert b"".join(f.payload for f in frames) == data


def test_stdin_chunk_over_512_is_refused() -> None:
    with pytest.raises(ConfigError):
        codec.encode_stdin(1, b"x", chunk=513)
    assert codec.encode_stdin_close(5) == bytes.fromhex("00000000000000050000000c")


def test_host_only_codes() -> None:
    for code in (Code.NEXT, Code.ACK, Code.ERROR, Code.READY, Code.PROCESSASYNCEVENT, 2, 3, 5,
                 7, 13, 99):
        with pytest.raises(ConfigError):
            codec.encode_command(code)
    assert codec.encode_command(Code.PING) == bytes.fromhex("0000000c00000008")


def test_guest_may_not_send_host_codes_or_unknown_ones() -> None:
    for code in (Code.EXECCMD, 99):
        client = CtlClient(wait_ready=False)
        with pytest.raises(ProtocolError):
            client.receive(codec.encode_ctl(code))


def test_ctl_session_lifecycle() -> None:
    client = CtlClient(wait_ready=False)
    assert client.state is CtlState.IDLE
    client.send(Code.VERSION)
    with pytest.raises(ProtocolError):  # a VERSION ACK carries a u32
        CtlClient(wait_ready=False).receive(codec.encode_ctl(Code.ACK))
    (reply,) = client.receive(codec.encode_ctl(Code.ACK, codec.encode_u32(4244)))
    assert reply == Reply(Code.VERSION, True, codec.encode_u32(4244))
    client.send(Code.DESTROYPOD)
    client.receive(codec.encode_ctl(Code.ACK))
    assert client.state is CtlState.DESTROYED
    with pytest.raises(ConfigError):
        client.send(Code.PING)


@pytest.mark.parametrize("payload", [
    b"", b"[]", b"{", b'{"container":1,"process":"p","event":"finished"}',
    b'{"container":"c","process":"p","event":"finished","status":"0"}',
    b'{"container":"c","process":"p","event":"finished","status":true}',
    b"\xff", b"[" * 100_000,
])
def test_bad_process_events(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        messages.parse_process_event(payload)


def test_messages_refuse_what_the_agent_cannot_take() -> None:
    with pytest.raises(ConfigError):
        messages.HyperProcess(id="", args=["true"], stdio=1)
    with pytest.raises(ConfigError):
        messages.HyperProcess(id="p", args=[], stdio=1)
    with pytest.raises(ConfigError):
        messages.HyperProcess(id="p", args=["a\0b"], stdio=1)
    with pytest.raises(ConfigError):
        messages.HyperProcess(id="p", args=["true"], stdio=0)
    with pytest.raises(ConfigError):
        messages.winsize("c", "p", 0, 80)
    with pytest.raises(ConfigError):
        messages.signal_process("c", "p", 0)
    with pytest.raises(ConfigError):
        messages.setup_route([{"dest": "x", "metric": "1"}])
    process = messages.HyperProcess(id="p", args=["sh"], stdio=3, envs=[("A", "1")], user="u")
    obj = json.loads(messages.exec_cmd("c", process).payload)
    assert list(obj["process"]) == ["id", "user", "args", "envs", "stdio"]
    pod = json.loads(messages.start_pod(messages.HyperPod(hostname="h", dns=["1.1.1.1"])).payload)
    assert pod == {"hostname": "h", "dns": ["1.1.1.1"]}
