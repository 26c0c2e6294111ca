"""Kata1Agent builds the requests the 1.x Go client sent and reads the 1.x agent's answers.

Every call of the ``../shared/vectors/kata1`` sessions is made through the public agent
operation with the vector's values: the request protobuf must be byte-identical to what the Go
client sent, and the agent's recorded answer (message, or status and text) must come back as the
operation's result or typed error. The same calls are then replayed end to end, through a real
GrpcClient, against a grpclib server that answers with the recorded bytes.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from agentio import errors
from agentio.agents import Kata1Agent, KataAgent, ProcessSpec, SandboxSpec, open_agent
from agentio.agents.config import Kata1Config, decode_config
from agentio.proto.kata1 import grpc as pb
from agentio.protocols.grpc import GrpcClient, RawCodec
from agentio.transports import parse_address

_CODES = {status.name.replace("_", "").lower(): status.value for status in Status}
SANDBOX = "sandbox-0001"


def _code(call: dict[str, Any]) -> int | None:
    """The recorded grpc status as a number (None: the client gave up first)."""
    name = call["grpc_code"]
    return None if name is None else _CODES[name.lower()]


def _sessions(vectors_dir: Path) -> dict[str, list[dict[str, Any]]]:
    data = json.loads((vectors_dir / "kata1" / "vectors.json").read_text())
    return {s["name"]: s["calls"] for s in data["sessions"]}


def _all_calls(vectors_dir: Path) -> list[tuple[str, int, dict[str, Any]]]:
    return [(name, i, call) for name, calls in _sessions(vectors_dir).items()
            for i, call in enumerate(calls)]


class ScriptedChannel:
    """Answers every call with one recorded answer; remembers what was sent."""

    def __init__(self, call: dict[str, Any]) -> None:
        self.answer = call
        self.sent: list[tuple[str, str, bytes, float | None, bool]] = []

    async def call(self, service: str, method: str, payload: bytes, *, timeout: float | None,
                   send_timeout: bool = True) -> bytes:
        self.sent.append((service, method, payload, timeout, send_timeout))
        code = _code(self.answer)
        if code is None:
            raise errors.DeadlineExceeded("no answer", operation=method)
        if code:
            raise errors.rpc_error(code, self.answer["grpc_message"], operation=method)
        return bytes.fromhex(self.answer["response_hex"])

    async def close(self) -> None:
        pass


async def _run(agent: Kata1Agent, call: dict[str, Any]) -> Any:
    """The agent operation a vector call stands for, with the vector's values."""
    method = call["path"].rsplit("/", 1)[1]
    body = bytes.fromhex(call["request_hex"])
    timeout = 0.05 if call["grpc_timeout"] else None
    if method == "Check":
        return await agent.check()
    if method == "Version":
        return await agent.version()
    if method == "CreateSandbox":
        sandbox = pb.CreateSandboxRequest.parse(body)
        return await agent.start_sandbox(SandboxSpec(sandbox_id=sandbox.sandbox_id,
                                                     hostname=sandbox.hostname))
    if method == "DestroySandbox":
        return await agent.stop_sandbox(SANDBOX)
    if method == "CreateContainer":
        create = pb.CreateContainerRequest.parse(body)
        assert create.oci is not None
        return await agent.create_container(create.container_id, create.oci.to_dict())
    if method == "ExecProcess":
        exec_request = pb.ExecProcessRequest.parse(body)
        assert exec_request.process is not None
        process = ProcessSpec(args=exec_request.process.args, env=exec_request.process.env,
                              cwd=exec_request.process.cwd)
        return await agent.exec_process(exec_request.container_id, exec_request.exec_id,
                                        process)
    if method in ("ReadStdout", "ReadStderr"):
        read = pb.ReadStreamRequest.parse(body)
        reader = agent.read_stdout if method == "ReadStdout" else agent.read_stderr
        return await reader(read.container_id, read.exec_id, read.len, timeout=timeout)
    if method == "WriteStdin":
        write = pb.WriteStreamRequest.parse(body)
        return await agent.write_stdin(write.container_id, write.exec_id, write.data)
    if method == "CloseStdin":
        close = pb.CloseStdinRequest.parse(body)
        return await agent.close_stdin(close.container_id, close.exec_id)
    if method == "WaitProcess":
        wait = pb.WaitProcessRequest.parse(body)
        return await agent.wait_process(wait.container_id, wait.exec_id)
    if method == "SignalProcess":
        signal = pb.SignalProcessRequest.parse(body)
        return await agent.signal_process(signal.container_id, signal.exec_id, signal.signal)
    if method == "ListProcesses":
        listing = pb.ListProcessesRequest.parse(body)
        return await agent.list_processes(listing.container_id, format=listing.format)
    container_id = pb.StartContainerRequest.parse(body).container_id  # field 1 in all below
    operation = {"StartContainer": agent.start_container, "StatsContainer": agent.stats_container,
                 "PauseContainer": agent.pause_container, "RemoveContainer": agent.stop_container,
                 "ResumeContainer": agent.resume_container}[method]
    return await operation(container_id)


_ERRORS: dict[int, type[errors.RpcError]] = {
    5: errors.NotFound, 9: errors.FailedPrecondition, 13: errors.Internal}


def _expected(call: dict[str, Any]) -> Any:
    """What the operation should return for a successful vector call."""
    method = call["path"].rsplit("/", 1)[1]
    raw = bytes.fromhex(call["response_hex"] or "")
    if method in ("ReadStdout", "ReadStderr"):
        return pb.ReadStreamResponse.parse(raw).data
    if method == "WaitProcess":
        return pb.WaitProcessResponse.parse(raw).status
    if method == "WriteStdin":
        return pb.WriteStreamResponse.parse(raw).len
    if method == "ListProcesses":
        return pb.ListProcessesResponse.parse(raw).process_list
    return ...


async def _check_outcome(agent: Kata1Agent, call: dict[str, Any]) -> None:
    code = _code(call)
    if code is None:
        with pytest.raises(errors.DeadlineExceeded):
            await _run(agent, call)
    elif code == 2 and call["grpc_message"] == "EOF":  # 1.x end of output
        assert await _run(agent, call) == b""
    elif code:
        with pytest.raises(_ERRORS[code]) as raised:
            await _run(agent, call)
        assert call["grpc_message"] in str(raised.value)
        assert f"sandbox={SANDBOX}" in str(raised.value)
        assert call["path"].rsplit("/", 1)[1] in str(raised.value)
    else:
        result = await _run(agent, call)
        expected = _expected(call)
        if expected is not ...:
            assert result == expected


async def test_every_request_is_byte_identical_and_every_answer_understood(
    vectors_dir: Path,
) -> None:
    checked = set()
    for session, index, call in _all_calls(vectors_dir):
        channel = ScriptedChannel(call)
        agent = Kata1Agent(channel, sandbox_id=SANDBOX)
        await _check_outcome(agent, call)
        [(service, method, payload, _, _)] = channel.sent
        where = f"{session}[{index}] {call['path']}"
        assert f"/{service}/{method}" == call["path"], where
        assert payload.hex() == call["request_hex"], where
        checked.add(call["path"])
    assert len(checked) == 18


async def test_long_polls_carry_no_wire_deadline(vectors_dir: Path) -> None:
    flags: dict[str, set[bool]] = {}
    for _, _, call in _all_calls(vectors_dir):
        channel = ScriptedChannel(call)
        await _check_outcome(Kata1Agent(channel, sandbox_id=SANDBOX), call)
        [(_, method, _, _, send_timeout)] = channel.sent
        flags.setdefault(method, set()).add(send_timeout)
    for method in ("ReadStdout", "ReadStderr", "WaitProcess", "WriteStdin"):
        assert flags.pop(method) == {False}, method
    assert all(sent == {True} for sent in flags.values())


async def test_version_and_stats_answers(vectors_dir: Path) -> None:
    calls = {c["path"]: c for c in _sessions(vectors_dir)["health"]}
    agent = Kata1Agent(ScriptedChannel(calls["/grpc.Health/Version"]))
    version = await agent.version()
    assert version.api_version == "0.0.1"
    assert version.agent_version.startswith("1.13.0-alpha0")
    [stats_call] = [c for c in _sessions(vectors_dir)["lifecycle"]
                    if c["path"].endswith("/StatsContainer")]
    stats = await Kata1Agent(ScriptedChannel(stats_call)).stats_container("c")
    assert stats.cpu_usage_ns == 39166441
    assert stats.memory_usage_bytes == 2629632


async def test_metrics_are_not_a_1x_call_and_list_processes_not_a_2x_one() -> None:
    with pytest.raises(errors.UnsupportedOperation, match="get_metrics"):
        await Kata1Agent(ScriptedChannel({})).get_metrics()
    with pytest.raises(errors.UnsupportedOperation, match="list_processes"):
        await KataAgent(ScriptedChannel({})).list_processes("c")


async def test_a_garbled_health_answer_is_an_agent_error(vectors_dir: Path) -> None:
    # found replaying captures on the wrong stream: Version's answer parsed as Check's
    calls = {c["path"]: c for c in _sessions(vectors_dir)["health"]}
    agent = Kata1Agent(ScriptedChannel(calls["/grpc.Health/Version"]), sandbox_id=SANDBOX)
    # the wire-type check refuses it before check() looks at the status
    with pytest.raises(errors.ProtocolError, match=r"HealthCheckResponse\.status"):
        await agent.check()


def test_open_agent_builds_a_grpc_kata1_agent() -> None:
    agent = open_agent("unix:///run/kata/agent.sock", "kata1", sandbox_id="sb",
                       config={"call_timeout": 7})
    assert isinstance(agent, Kata1Agent)
    assert isinstance(agent.channel, GrpcClient)
    assert agent.call_timeout == 7
    assert repr(agent) == "<Kata1Agent sandbox=sb>"
    with pytest.raises(errors.ConfigError, match="kata1 config"):
        open_agent("unix:///run/kata/agent.sock", "kata1", config={"nope": 1})


@pytest.mark.parametrize(("address", "yamux", "expected"), [
    ("unix:///run/vc/console.sock", None, True),  # a serial port's socket: yamux
    ("vsock://3:1024", None, False),  # the 1.x agent serves gRPC straight on vsock
    ("hvsock:///run/vc/vm.sock:1024", None, False),
    ("unix:///run/vc/console.sock", False, False),
    ("vsock://3:1024", True, True),
])
def test_kata1_yamux_follows_the_address_unless_set(
    address: str, yamux: bool | None, expected: bool
) -> None:
    settings = decode_config(Kata1Config, {"yamux": yamux}, what="kata1")
    assert settings.uses_yamux(parse_address(address)) is expected
    agent = open_agent(address, "kata1", config={"yamux": yamux})
    assert isinstance(agent, Kata1Agent) and isinstance(agent.channel, GrpcClient)
    with pytest.raises(errors.ConfigError, match="yamux must be bool"):
        open_agent(address, "kata1", config={"yamux": "yes"})
    with pytest.raises(errors.ConfigError, match="unknown field 'yamux'"):
        open_agent(address, "kata", config={"yamux": True})


# --- end to end: the recorded answers served by a grpclib server, through a real GrpcClient ---

class Replay:
    """A grpclib service answering each path's calls with the recorded answers, in order."""

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.script: dict[str, deque[dict[str, Any]]] = {}
        for call in calls:
            self.script.setdefault(call["path"], deque()).append(call)
        self.mismatches: list[str] = []

    def __mapping__(self) -> dict[str, Handler]:
        return {path: Handler(functools.partial(self._answer, path), Cardinality.UNARY_UNARY,
                              bytes, bytes)
                for path in self.script}

    async def _answer(self, path: str, stream: Stream[bytes, bytes]) -> None:
        call = self.script[path].popleft()
        request = await stream.recv_message()
        if request is None or request.hex() != call["request_hex"]:
            self.mismatches.append(path)
        code = _code(call)
        if code is None:
            await asyncio.Event().wait()  # the agent never answered; the client gives up
        if code:
            raise GRPCError(Status(code), call["grpc_message"])
        await stream.send_message(bytes.fromhex(call["response_hex"]))


@pytest.fixture
async def replay(vectors_dir: Path, sock_dir: Path) -> AsyncIterator[tuple[Replay, Path]]:
    sessions = _sessions(vectors_dir)
    service = Replay(sessions["lifecycle"] + sessions["errors"])
    server = Server([service], codec=RawCodec())
    path = sock_dir / "kata1.sock"
    await server.start(path=str(path))
    yield service, path
    server.close()
    await server.wait_closed()


async def test_sessions_replay_through_a_real_grpc_channel(
    vectors_dir: Path, replay: tuple[Replay, Path]
) -> None:
    service, path = replay
    agent = open_agent(f"unix://{path}", "kata1", sandbox_id=SANDBOX, config={"yamux": False})
    assert isinstance(agent, Kata1Agent)
    sessions = _sessions(vectors_dir)
    async with agent:
        for call in sessions["lifecycle"] + sessions["errors"]:
            await _check_outcome(agent, call)
    assert service.mismatches == []
    assert all(not queue for queue in service.script.values())
