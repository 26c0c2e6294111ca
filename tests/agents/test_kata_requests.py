"""KataAgent builds the requests real clients send and reads the answers real agents give.

Every call is checked against the ttrpc wire vectors: the request payload the agent builds for
the vector's values must be byte-identical to what the Go client sent, and the agent's answer
(status and payload) must come back as the operation's result or typed error.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agentio import errors
from agentio.agents import KataAgent, ProcessSpec, SandboxSpec


class ScriptedChannel:
    """Answers each call with one vector's response; records what was sent."""

    def __init__(self, status: int, message: str, payload: bytes) -> None:
        self.answer = (status, message, payload)
        self.sent: list[tuple[str, str, bytes, float | None, bool]] = []

    async def call(self, service: str, method: str, payload: bytes, *, timeout: float | None,
                   send_timeout: bool = True) -> bytes:
        self.sent.append((service, method, payload, timeout, send_timeout))
        status, message, answer = self.answer
        if status:
            raise errors.rpc_error(status, message, operation=method)
        return answer

    async def close(self) -> None:
        pass


def _vectors(vectors_dir: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((vectors_dir / "ttrpc" / "vectors.json").read_text())
    return {v["name"]: v for v in data["vectors"]}


def _exchange(vector: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    frames = vector["frames"]
    request = next(f["envelope"] for f in frames if f["dir"] == "c2s")
    response = next(f["envelope"] for f in frames if f["dir"] == "s2c")
    return request, response


def _agent(response: dict[str, Any]) -> tuple[KataAgent, ScriptedChannel]:
    channel = ScriptedChannel(response.get("status_code", 0) or 0,
                              response.get("status_message") or "",
                              bytes.fromhex(response.get("payload_hex") or ""))
    return KataAgent(channel, sandbox_id="sandbox-0001"), channel


def _process_spec(process: dict[str, Any]) -> ProcessSpec:
    return ProcessSpec(args=process["Args"], env=process.get("Env", ()), cwd=process["Cwd"])


async def _run(name: str, vector: dict[str, Any]) -> tuple[Any, ScriptedChannel]:
    request, response = _exchange(vector)
    agent, channel = _agent(response)
    body = request["payload_json"]
    cid, eid = body.get("container_id", ""), body.get("exec_id", "")
    method = request["method"]
    if method == "Check":
        result: Any = await agent.check()
    elif method == "Version":
        result = await agent.version()
    elif method == "CreateSandbox":
        result = await agent.start_sandbox(
            SandboxSpec(sandbox_id=body.get("sandbox_id", ""), hostname=body["hostname"]))
    elif method == "CreateContainer":
        result = await agent.create_container(cid, body["OCI"])
    elif method == "StartContainer":
        result = await agent.start_container(cid)
    elif method == "ExecProcess":
        process = body["process"]
        spec: Any = process if "Capabilities" in process else _process_spec(process)
        result = await agent.exec_process(cid, eid, spec)
    elif method == "ReadStdout":
        result = await agent.read_stdout(cid, eid, body["len"])
    elif method == "ReadStderr":
        result = await agent.read_stderr(cid, eid, body["len"])
    elif method == "WaitProcess":
        result = await agent.wait_process(cid, eid)
    elif method == "WriteStdin":
        import base64

        result = await agent.write_stdin(cid, eid, base64.b64decode(body["data"]))
    elif method == "CloseStdin":
        result = await agent.close_stdin(cid, eid)
    elif method == "SignalProcess":
        result = await agent.signal_process(cid, eid, body["signal"])
    elif method == "StatsContainer":
        result = await agent.stats_container(cid)
    elif method == "DestroySandbox":
        result = await agent.stop_sandbox("sandbox-0001")
    else:
        raise AssertionError(f"no mapping for {method} in {name}")
    return result, channel


BYTE_EXACT = [
    "01_health_check", "02_health_version", "03_create_sandbox", "04_create_container",
    "05_start_container", "06_exec_process", "07_read_stdout", "08_read_stderr",
    "10_wait_process", "15_exec_cat", "16_write_stdin", "17_read_stdout_echo", "18_close_stdin",
    "19_wait_process_zero", "20_exec_sleep", "21_signal_process", "22_wait_process_signaled",
    "37_destroy_sandbox", "38_read_stdout_eof_empty", "40_rust_wire_check",
    "41_rust_wire_empty_response",
]


@pytest.mark.parametrize("name", BYTE_EXACT)
async def test_request_bytes_match_the_go_client(vectors_dir: Path, name: str) -> None:
    vector = _vectors(vectors_dir)[name]
    request, _ = _exchange(vector)
    _, channel = await _run(name, vector)
    [(service, method, payload, _, _)] = channel.sent
    assert (service, method) == (request["service"], request["method"])
    assert payload.hex() == request["payload_hex"]


EXPECTED_RESULTS: dict[str, Any] = {
    "07_read_stdout": b"hello",
    "08_read_stderr": b"oops",
    "09_read_stdout_eof": b"",
    "38_read_stdout_eof_empty": b"",
    "10_wait_process": 3,
    "19_wait_process_zero": 0,
    "22_wait_process_signaled": 143,
    "16_write_stdin": 5,
    "17_read_stdout_echo": b"ping\n",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_RESULTS))
async def test_answers_become_results(vectors_dir: Path, name: str) -> None:
    result, _ = await _run(name, _vectors(vectors_dir)[name])
    assert result == EXPECTED_RESULTS[name]


async def test_version_answer(vectors_dir: Path) -> None:
    version, _ = await _run("02_health_version", _vectors(vectors_dir)["02_health_version"])
    assert (version.agent_version, version.api_version) == ("4.1.0", "0.0.1")


@pytest.mark.parametrize(("name", "error", "text"), [
    ("11_wait_process_unknown_exec", errors.NotFound, "InvalidExecId"),
    ("12_wait_process_unknown_container", errors.InvalidArgument, "InvalidContainerId"),
    ("13_exec_process_unknown_container", errors.Internal, "Invalid container id"),
    ("14_stats_container_unknown", errors.InvalidArgument, '"invalid container id"'),
])
async def test_errors_are_typed_and_name_what_failed(
    vectors_dir: Path, name: str, error: type[errors.RpcError], text: str
) -> None:
    vector = _vectors(vectors_dir)[name]
    request, _ = _exchange(vector)
    with pytest.raises(error) as raised:
        await _run(name, vector)
    message = str(raised.value)
    assert text in message
    assert request["method"] in message
    assert "sandbox=sandbox-0001" in message
    assert f"container={request['payload_json']['container_id']}" in message


async def test_long_polls_carry_no_wire_deadline(vectors_dir: Path) -> None:
    for name in ("07_read_stdout", "10_wait_process", "16_write_stdin"):
        _, channel = await _run(name, _vectors(vectors_dir)[name])
        [(_, _, _, timeout, send_timeout)] = channel.sent
        assert (timeout, send_timeout) == (None, False)
    _, channel = await _run("05_start_container", _vectors(vectors_dir)["05_start_container"])
    [(_, _, _, timeout, send_timeout)] = channel.sent
    assert send_timeout and timeout == KataAgent(channel).call_timeout


@pytest.mark.parametrize(("status", "message"), [(13, "read meet eof"), (2, "EOF")])
async def test_every_end_of_output_form_is_eof(status: int, message: str) -> None:
    agent = KataAgent(ScriptedChannel(status, message, b""))
    assert await agent.read_stdout("c", "e", 1024) == b""
    assert await agent.read_stderr("c", "e", 1024) == b""


@pytest.mark.parametrize(("status", "message"), [
    (13, "disk geofence failure"),                       # merely contains "eof"
    (3, "unmarshal request error: unexpected EOF"),      # the agent could not read our request
    (13, "EOF"), (2, "read meet eof"),                   # a real text under the wrong code
    (2, "unexpected EOF while reading pipe"),
])
async def test_other_errors_mentioning_eof_are_errors(status: int, message: str) -> None:
    agent = KataAgent(ScriptedChannel(status, message, b""))
    with pytest.raises(errors.RpcError) as raised:
        await agent.read_stdout("c", "e", 1024)
    assert raised.value.code == status


async def test_not_found_on_read_is_not_eof() -> None:
    agent = KataAgent(ScriptedChannel(5, "Process e not found", b""))
    with pytest.raises(errors.NotFound):
        await agent.read_stdout("c", "e", 1024)


async def test_oversized_read_answer_is_a_protocol_error() -> None:
    agent = KataAgent(ScriptedChannel(0, "", b"\x0a\x05hello"))
    with pytest.raises(errors.ProtocolError, match="ReadStdout"):
        await agent.read_stdout("c", "e", 4)


async def test_garbage_answer_is_a_protocol_error() -> None:
    agent = KataAgent(ScriptedChannel(0, "", b"\x08"))
    with pytest.raises(errors.ProtocolError, match="WaitProcess"):
        await agent.wait_process("c", "e")


# A field sent with another wire type than its declared one: betterproto2 would hand back a
# value of the wrong Python type (an int for bytes, a packed list for an int, an int for a
# message), which must be refused where the answer arrives.
@pytest.mark.parametrize(("method", "payload", "field"), [
    ("read_stdout", b"\x08\x05", "ReadStreamResponse.data"),        # bytes as a varint
    ("wait_process", b"\x0a\x02hi", "WaitProcessResponse.status"),  # int32 length-delimited
    ("write_stdin", b"\x0a\x01\x05", "WriteStreamResponse.len"),    # uint32 length-delimited
    ("get_oom_event", b"\x08\x01", "OomEvent.container_id"),        # string as a varint
    ("check", b"\x0a\x00", "HealthCheckResponse.status"),           # enum length-delimited
    ("stats_container", b"\x0a\x02\x08\x01", "cpu_stats"),          # nested message as varint
    ("list_routes", b"\x0a\x00\x08\x01", "routes[1]"),              # repeated: 2nd bad
    ("guest_details", b"\x08\x01", "GuestDetailsResponse.mem_block_size_bytes"),  # ok: int
])
async def test_wrong_wire_type_is_a_protocol_error(method: str, payload: bytes,
                                                   field: str) -> None:
    agent = KataAgent(ScriptedChannel(0, "", payload))
    call = getattr(agent, method)
    args: tuple[Any, ...] = {
        "read_stdout": ("c", "e", 1024), "wait_process": ("c", "e"),
        "write_stdin": ("c", "e", b"x"), "stats_container": ("c",),
    }.get(method, ())
    if method == "guest_details":
        await call(*args)  # the right wire type still parses
        return
    with pytest.raises(errors.ProtocolError, match="malformed") as caught:
        await call(*args)
    assert field in str(caught.value)


async def test_huge_agent_error_text_is_truncated() -> None:
    text = "guest says: " + "x" * (4 << 20)
    agent = KataAgent(ScriptedChannel(13, text, b""), sandbox_id="sb")
    with pytest.raises(errors.Internal) as raised:
        await agent.wait_process("c", "e")
    shown = str(raised.value)
    assert len(shown) < 2 * errors.MAX_MESSAGE_TEXT
    assert "guest says: xxx" in shown and f"[{len(text) - errors.MAX_MESSAGE_TEXT} more" in shown
    assert "WaitProcess (sandbox=sb container=c exec=e)" in shown  # context is kept whole


async def test_stats_converts_the_whole_answer_only_when_raw_is_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agentio.proto.kata import grpc as pb
    answer = pb.StatsContainerResponse(cgroup_stats=pb.CgroupStats(
        cpu_stats=pb.CpuStats(cpu_usage=pb.CpuUsage(total_usage=7, percpu_usage=[3, 4]))))
    conversions: list[object] = []
    to_dict = pb.StatsContainerResponse.to_dict

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        conversions.append(self)
        return to_dict(self, *args, **kwargs)

    monkeypatch.setattr(pb.StatsContainerResponse, "to_dict", counting)
    stats = await KataAgent(ScriptedChannel(0, "", bytes(answer))).stats_container("c")
    assert stats.cpu_usage_ns == 7 and not conversions  # megabytes of per-CPU figures wait
    assert stats.raw["cgroupStats"]["cpuStats"]["cpuUsage"]["percpuUsage"] == ["3", "4"]
    assert len(conversions) == 1


@pytest.mark.parametrize(("size", "off_loop"), [(100, False), (300_000, True)])
async def test_large_answers_are_decoded_off_the_loop(
        monkeypatch: pytest.MonkeyPatch, size: int, off_loop: bool) -> None:
    import threading

    from agentio.agents import kata
    from agentio.proto.kata import grpc as pb
    threads: list[int] = []
    check = kata.check_message

    def recording(message: Any) -> None:
        threads.append(threading.get_ident())
        check(message)

    monkeypatch.setattr(kata, "check_message", recording)
    payload = bytes(pb.Metrics(metrics="m" * size))
    assert (len(payload) > kata.OFF_LOOP_DECODE) is off_loop
    assert await KataAgent(ScriptedChannel(0, "", payload)).get_metrics() == "m" * size
    assert (threads != [threading.get_ident()]) is off_loop


async def test_decoding_a_large_answer_is_bounded_by_the_call_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from agentio.agents import kata
    from agentio.proto.kata import grpc as pb
    release = threading.Event()

    def slow(message: Any) -> None:  # an answer that takes minutes to decode
        release.wait(10)

    monkeypatch.setattr(kata, "check_message", slow)
    payload = bytes(pb.Metrics(metrics="m" * (kata.OFF_LOOP_DECODE + 1)))
    agent = KataAgent(ScriptedChannel(0, "", payload))
    try:
        async with asyncio.timeout(5):
            with pytest.raises(errors.AgentTimeout, match=r"GetMetrics.*deadline"):
                await agent.get_metrics(timeout=0.2)
    finally:
        release.set()
