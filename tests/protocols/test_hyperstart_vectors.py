"""The hyperstart transcripts: every frame parses, the ctl state machine follows every session,
and the requests the library builds for the same commands match the recorded payloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentio.errors import ConfigError, FrameTooLarge, ProtocolError
from agentio.protocols.hyperstart import codec, messages
from agentio.protocols.hyperstart.codec import HOST_COMMANDS, Code, CtlDecoder, TtyDecoder
from agentio.protocols.hyperstart.ctl import Consumed, CtlClient, Ready, Reply
from agentio.protocols.hyperstart.messages import HyperContainer, HyperPod, HyperProcess

FILES = ("session-full", "session-bulk", "session-errors", "session-reconnect")

Line = dict[str, Any]


def _lines(vectors_dir: Path, name: str) -> list[Line]:
    path = vectors_dir / "hyperstart" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sessions(lines: list[Line]) -> Iterator[list[Line]]:
    """A file may hold several connections: each ends with the guest closing both channels."""
    session: list[Line] = []
    for line in lines:
        if line.get("event") == "closed" and line["ch"] == "ctl":
            if session:
                yield session
                session = []
            continue
        if session and line["ch"] == "ctl" and line["dir"] == "in" and line["code"] == Code.READY:
            yield session
            session = []
        session.append(line)
    if session:
        yield session


def _payload(line: Line) -> bytes:
    return line["payload"].encode("latin-1")


def _wire(line: Line) -> bytes:
    if "hdr" in line:
        return bytes.fromhex(line["hdr"]) + _payload(line)
    if line["ch"] == "ctl":
        return codec.encode_ctl(line["code"], _payload(line))
    return codec.encode_tty(line["seq"], _payload(line), max_frame=1 << 20)


@pytest.fixture(params=FILES)
def transcript(request: pytest.FixtureRequest, vectors_dir: Path) -> list[Line]:
    return _lines(vectors_dir, request.param)


def test_every_frame_parses_and_reencodes(transcript: list[Line]) -> None:
    frames = [line for line in transcript if "length" in line]
    assert frames
    for line in frames:
        wire = _wire(line)
        assert len(wire) == line["length"]
        if "hdr" in line:  # what the guest sent: re-encoding gives the same bytes
            if line["ch"] == "ctl":
                assert codec.encode_ctl(line["code"], _payload(line)) == wire
            else:
                assert codec.encode_tty(line["seq"], _payload(line), max_frame=1 << 20) == wire
    # each direction of each channel, as one byte stream, decodes frame for frame
    for channel, decoder_type in (("ctl", CtlDecoder), ("tty", TtyDecoder)):
        for direction in ("in", "out"):
            chosen = [line for line in frames if line["ch"] == channel and line["dir"] == direction]
            stream = b"".join(_wire(line) for line in chosen)
            decoder = decoder_type()
            decoded = []
            for i in range(0, len(stream), 997):  # arbitrary split points
                decoded.extend(decoder.feed(stream[i:i + 997]))
            assert decoder.buffered == 0
            assert [tuple(f) for f in decoded] == [
                (line.get("code", line.get("seq")), _payload(line)) for line in chosen]


def test_ctl_state_machine_follows_every_session(vectors_dir: Path) -> None:
    replies = 0
    for name in FILES:
        for session in _sessions(_lines(vectors_dir, name)):
            replies += _replay(session)
    assert replies == 56  # every ACK/ERROR in the four files, matched to its command


def _replay(session: list[Line]) -> int:
    first = session[0]
    boot = first["ch"] == "ctl" and first["dir"] == "in" and first["code"] == Code.READY
    client = CtlClient(wait_ready=boot)
    raw = False  # after a frame a host must never send, skip the guest's answer to it
    replies = 0
    for line in session:
        if "length" not in line or line["ch"] != "ctl":
            continue
        if line["dir"] == "out":
            code, payload = line["code"], _payload(line)
            if code in HOST_COMMANDS:
                assert client.send(Code(code), payload) == _wire(line)
                raw = False
            else:
                with pytest.raises(ConfigError):
                    client.send(code, payload)
                with pytest.raises(ConfigError):
                    codec.encode_command(code, payload)
                raw = True
            continue
        if raw and line["code"] in (Code.NEXT, Code.ACK, Code.ERROR):
            continue
        pending = client.pending
        (event,) = client.receive(_wire(line))
        if line["code"] == Code.READY:
            assert event == Ready()
        elif line["code"] == Code.NEXT:
            assert isinstance(event, Consumed)
        elif line["code"] in (Code.ACK, Code.ERROR):
            assert isinstance(event, Reply) and event.command is pending
            assert event.ok is (line["code"] == Code.ACK)
            replies += 1
            if event.command is Code.VERSION:
                assert codec.decode_u32(event.payload, "version") == 4244
        else:
            assert isinstance(event, messages.ProcessEvent)
            assert event.event == "finished"
    return replies


def test_process_events_and_error_texts(vectors_dir: Path) -> None:
    lines = _lines(vectors_dir, "session-full")
    events = [messages.parse_process_event(_payload(line)) for line in lines
              if line.get("code") == Code.PROCESSASYNCEVENT and line["dir"] == "in"]
    assert ("c1", "e2", "finished", 3) in events
    assert ("c1", "e3", "finished", 127) in events
    errors = [messages.error_text(_payload(line)) for line in lines
              if line.get("code") == Code.ERROR and line["dir"] == "in"]
    assert "no such container" in errors


# --- requests built by the library ---------------------------------------------------------

_PROCESS_KEYS = {"id", "user", "group", "additionalGroups", "terminal", "stdio", "stderr",
                 "args", "envs", "workdir"}
_CONTAINER_KEYS = {"id", "rootfs", "image", "fstype", "sysctl", "process", "restartPolicy",
                   "initialize"}


def _process(obj: dict[str, Any], fallback_id: str) -> HyperProcess:
    return HyperProcess(
        id=obj.get("id", fallback_id), args=obj["args"], stdio=obj.get("stdio", 0),
        stderr=obj.get("stderr", 0), workdir=obj.get("workdir", ""),
        terminal=obj.get("terminal", False),
        envs=[(e["env"], e["value"]) for e in obj.get("envs", [])])


def _build(code: Code, payload: bytes) -> messages.Command:
    """Our request for the command a transcript line carries, from its known fields."""
    if code is Code.WRITEFILE:
        end = payload.index(b"}") + 1
        head = json.loads(payload[:end])
        return messages.write_file(head["container"], head["file"], payload[end:])
    obj = json.loads(payload) if payload else {}
    simple = {Code.VERSION: messages.version, Code.PING: messages.ping,
              Code.DESTROYPOD: messages.destroy_pod, Code.ONLINECPUMEM: messages.online_cpu_mem}
    if code in simple:
        assert not payload
        return simple[code]()
    if code is Code.STARTPOD:
        return messages.start_pod(HyperPod(hostname=obj.get("hostname", ""),
                                           share_dir=obj.get("shareDir", "")))
    if code is Code.NEWCONTAINER:
        return messages.new_container(HyperContainer(
            id=obj["id"], rootfs=obj.get("rootfs", ""), image=obj.get("image", ""),
            process=_process(obj["process"], f"{obj['id']}-init"),
            restart_policy=obj.get("restartPolicy"), initialize=obj.get("initialize")))
    if code is Code.EXECCMD:
        return messages.exec_cmd(obj["container"], _process(obj["process"], "added-id"))
    if code is Code.WINSIZE:
        return messages.winsize(obj["container"], obj["process"], obj["row"], obj["column"])
    if code is Code.SIGNALPROCESS:
        return messages.signal_process(obj["container"], obj["process"], obj["signal"])
    if code is Code.KILLCONTAINER:
        return messages.kill_container(obj["container"], obj["signal"])
    if code is Code.REMOVECONTAINER:
        return messages.remove_container(obj["container"])
    if code is Code.READFILE:
        return messages.read_file(obj["container"], obj["file"])
    if code is Code.SETUPINTERFACE:
        return messages.setup_interface(
            obj["device"], new_name=obj.get("newDeviceName", ""), mtu=obj.get("mtu", 0),
            addresses=[(a["ipAddress"], a["netMask"]) for a in obj["ipAddresses"]])
    if code is Code.SETUPROUTE:
        return messages.setup_route(obj["routes"])
    if code is Code.DELETEINTERFACE:
        return messages.delete_interface(obj["device"])
    raise AssertionError(f"no builder for {code.name}")


def _known(code: Code, obj: Any) -> Any:
    """The transcript's object cut down to the keys hyperstart parses (the rest is refused)."""
    if code is Code.STARTPOD:
        return {k: v for k, v in obj.items() if k in {"hostname", "shareDir", "dns"}}
    if code is Code.NEWCONTAINER:
        out = {k: v for k, v in obj.items() if k in _CONTAINER_KEYS}
        out["process"] = {k: v for k, v in obj["process"].items() if k in _PROCESS_KEYS}
        return out
    if code is Code.EXECCMD:
        return {"container": obj["container"],
                "process": {k: v for k, v in obj["process"].items() if k in _PROCESS_KEYS}}
    if code is Code.SETUPINTERFACE:
        return {k: v for k, v in obj.items()
                if k in {"device", "newDeviceName", "ipAddresses", "mtu"}}
    return obj


def _normal(value: Any) -> Any:
    """Defaults (false, 0, "", empty) dropped: sent or omitted, the agent reads the same."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v not in (False, 0, "", [], {}, None)}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _replies(lines: list[Line]) -> Iterator[tuple[Line, bool | None]]:
    """Each host command with whether the guest ACKed it (None: no reply recorded)."""
    pending: Line | None = None
    for line in lines:
        if line.get("ch") != "ctl" or "length" not in line:
            continue
        if line["dir"] == "out":
            if pending is not None:
                yield pending, None
            pending = line if line["code"] in HOST_COMMANDS else None
        elif pending is not None and line["code"] in (Code.ACK, Code.ERROR):
            yield pending, line["code"] == Code.ACK
            pending = None
    if pending is not None:
        yield pending, None


def test_built_requests_match_the_transcripts(vectors_dir: Path) -> None:
    checked: dict[str, int] = {}
    for name in FILES:
        for line, acked in _replies(_lines(vectors_dir, name)):
            code, payload = Code(line["code"]), _payload(line)
            if code is Code.EXECCMD and "stdio" not in json.loads(payload)["process"]:
                assert acked is False  # refused: the agent needs a stdio seq, and so do we
                with pytest.raises(ConfigError):
                    _build(code, payload.replace(b'"args"', b'"stdio":0,"args"'))
                continue
            if code is Code.NEWCONTAINER and "process" not in json.loads(payload):
                assert acked is False  # a container is built with its init process, always
                continue
            ours = _build(code, payload)
            assert ours.code is code
            checked[code.name] = checked.get(code.name, 0) + 1
            if code is Code.WRITEFILE:
                assert ours.payload == payload  # JSON then the raw bytes, byte for byte
                continue
            theirs = json.loads(payload) if payload else {}
            mine = json.loads(ours.payload) if ours.payload else {}
            process = theirs.get("process") if isinstance(theirs, dict) else None
            if isinstance(process, dict) and "id" not in process:
                # the one deliberate difference: every process gets an id
                assert mine["process"].pop("id")
            known = _known(code, theirs)
            if acked:  # unknown keys in a pod or container are refused (in a process, ignored)
                outer = {k: v for k, v in theirs.items() if k != "process"}
                assert outer == {k: v for k, v in known.items() if k != "process"}, code.name
            assert _normal(mine) == _normal(known), (name, code.name, mine, theirs)
    for code in ("STARTPOD", "NEWCONTAINER", "EXECCMD", "WINSIZE", "SIGNALPROCESS",
                 "KILLCONTAINER", "REMOVECONTAINER", "READFILE", "WRITEFILE", "VERSION",
                 "DESTROYPOD", "SETUPINTERFACE", "SETUPROUTE", "DELETEINTERFACE"):
        assert checked.get(code), code


def test_accepted_requests_are_byte_identical_where_key_order_matches(vectors_dir: Path) -> None:
    lines = _lines(vectors_dir, "session-full")
    wanted = {
        '{"container":"c1","process":{"id":"e1","args":["echo","hi"],"stdio":3,"stderr":4,'
        '"workdir":"/"}}',
        '{"container":"c1","process":"e5","row":40,"column":100}',
        '{"container":"c1","process":"e6","signal":15}',
    }
    seen = set()
    for line, _ in _replies(lines):
        payload = _payload(line)
        if payload.decode("latin-1") in wanted:
            assert _build(Code(line["code"]), payload).payload == payload
            seen.add(payload)
    assert len(seen) == len(wanted)


def test_what_crashed_the_agent_cannot_be_built(vectors_dir: Path) -> None:
    bulk = _lines(vectors_dir, "session-bulk")
    big = next(line for line in bulk if line["ch"] == "tty" and line["length"] > 4096)
    with pytest.raises(FrameTooLarge):
        codec.encode_tty(big["seq"], _payload(big))
    # chunked instead: every frame within the limits, the bytes in order
    frames = list(codec.iter_stdin_frames(big["seq"], _payload(big)))
    assert all(len(f) <= codec.TTY_HEADER_SIZE + codec.MAX_STDIN_CHUNK for f in frames)
    decoded = TtyDecoder().feed(b"".join(frames))
    assert b"".join(f.payload for f in decoded) == _payload(big)
    no_id = next(line for line in bulk if line.get("code") == Code.EXECCMD
                 and '"id"' not in line["payload"])
    process = json.loads(_payload(no_id))["process"]
    with pytest.raises(ConfigError):
        HyperProcess(id="", args=process["args"], stdio=process["stdio"])


def test_host_sent_next_is_refused_and_guest_replies_are_checked() -> None:
    client = CtlClient()
    with pytest.raises(ConfigError):
        client.send(Code.PING)  # before READY
    assert client.receive(codec.encode_ctl(Code.READY)) == [Ready()]
    with pytest.raises(ConfigError):
        client.send(Code.NEXT, codec.encode_u32(8))
    client.send(Code.PING)
    with pytest.raises(ConfigError):
        client.send(Code.PING)  # one outstanding command
    with pytest.raises(ProtocolError):
        client.receive(codec.encode_ctl(Code.NEXT, codec.encode_u32(9)))  # only 8 were sent
    with pytest.raises(ProtocolError):  # broken for good
        client.receive(b"")
