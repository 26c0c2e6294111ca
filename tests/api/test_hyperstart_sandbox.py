"""The public API end to end against the local hyperstart over real unix sockets.

Addressing: ``Sandbox.create(address)`` takes the **ctl** channel; ``config["tty_address"]``
names the tty channel (derived automatically for vsock / hybrid-vsock ctl addresses).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import agentio
from agentio import errors
from agentio.localagent.hyperstart import LocalHyperstart
from agentio.protocols.hyperstart.codec import Code
from agentio.transports import Address

FAST = agentio.Limits(drain_timeout=1.0)


@pytest.fixture
async def local(sock_dir: Path) -> AsyncIterator[LocalHyperstart]:
    async with LocalHyperstart(sock_dir / "hs", drain_timeout=2.0) as server:
        yield server


async def _sandbox(local: LocalHyperstart, **config: object) -> agentio.Sandbox:
    ctl, tty = await local.serve()
    return await agentio.Sandbox.create(ctl, agent_type="hyperstart", limits=FAST,
                                        config={"tty_address": tty, "call_timeout": 10,
                                                **config})


async def test_exec_stdout_stderr_stdin_and_exit_codes(local: LocalHyperstart) -> None:
    async with await _sandbox(local, share_dir="hyperShared") as sandbox:
        await sandbox.check()
        version = await sandbox.version()
        assert (version.agent_version, version.api_version) == ("hyperstart", "4244")
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        proc = await container.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert await proc.communicate() == (b"out\n", b"err\n")
        assert proc.returncode == 3
        proc = await container.exec(["cat"])
        assert await proc.communicate(b"hello stdin\n") == (b"hello stdin\n", b"")
        assert proc.returncode == 0
        proc = await container.exec(["/no/such/bin"])
        out, err = await proc.communicate()
        assert (out, err, proc.returncode) == (b"", b"exec failed: No such file or directory\n",
                                               127)
        await container.remove()
        assert "c1" not in sandbox.containers


async def test_signals_report_status_0_like_hyperstart(local: LocalHyperstart) -> None:
    async with await _sandbox(local) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        init = await container.start()
        proc = await container.exec(["sleep", "1000"])
        await proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0  # hyperstart does not say 128+N
        await container.signal(signal.SIGKILL)  # KILLCONTAINER
        assert await init.wait() == 0
        with pytest.raises(errors.RpcError) as info:
            await sandbox.agent.signal_process("c1", "nope", signal.SIGTERM)
        assert info.value.context == {"sandbox": sandbox.id, "container": "c1", "exec": "nope"}
        assert info.value.operation == "SIGNALPROCESS"


async def test_tty_with_resize(local: LocalHyperstart) -> None:
    async with await _sandbox(local) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        proc = await container.exec(["sh", "-c", "read x; stty size; echo tty-ok"], tty=True)
        assert proc.stderr is None
        await proc.resize(40, 100)
        proc.stdin.write(b"go\n")
        out = await proc.stdout.read()
        assert b"40 100" in out and b"tty-ok" in out
        assert await proc.wait() == 0


async def test_100_kb_output_byte_exact_and_2000_bytes_of_stdin_whole(
    local: LocalHyperstart,
) -> None:
    async with await _sandbox(local) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        proc = await container.exec(["head", "-c", "100000", "/dev/urandom"])
        out, _ = await proc.communicate()
        assert len(out) == 100_000
        data = os.urandom(2000)  # the real agent keeps only 512 bytes of one frame
        proc = await container.exec(["cat"])
        assert await proc.communicate(data) == (data, b"")
        proc = await container.exec(["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"])
        out, _ = await proc.communicate()
        assert out == b"x" * 300_000


async def test_concurrent_processes_in_several_sandboxes(local: LocalHyperstart) -> None:
    async def one(n: int) -> None:
        async with await _sandbox(local) as sandbox:
            container = await sandbox.create_container(f"c{n}", ["sleep", "1000"])
            await container.start()

            async def run(i: int) -> None:
                data = os.urandom(700 + i)
                proc = await container.exec(["cat"])
                assert await proc.communicate(data) == (data, b"")
                assert proc.returncode == 0

            await asyncio.gather(*(run(i) for i in range(8)))

    await asyncio.gather(*(one(n) for n in range(4)))


async def test_files_cpu_and_unsupported_operations(local: LocalHyperstart) -> None:
    async with await _sandbox(local) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        agent = sandbox.agent
        assert isinstance(agent, agentio.agents.hyperstart.HyperstartAgent)
        await agent.write_file("c1", "/tmp/f.txt", b"file-body\n")
        assert await agent.read_file("c1", "/tmp/f.txt") == b"file-body\n"
        with pytest.raises(errors.RpcError):
            await agent.read_file("c1", "/nope")
        await sandbox.online_cpu_mem(2)
        for call in (container.pause(), container.resume(), container.stats(),
                     container.update({}), sandbox.copy_file("/x", b"")):
            with pytest.raises(errors.UnsupportedOperation, match="hyperstart"):
                await call


async def test_reconnect_without_ready_and_bounded_ready_wait(local: LocalHyperstart) -> None:
    ctl, tty = await local.serve()
    first = await agentio.Sandbox.create(ctl, agent_type="hyperstart", limits=FAST,
                                         config={"tty_address": tty})
    await first.agent.disconnect()  # the guest stays up
    with pytest.raises(errors.AgentTimeout, match="READY"):
        await agentio.Sandbox.create(ctl, agent_type="hyperstart", limits=FAST,
                                     config={"tty_address": tty, "ready_timeout": 0.2})
    again = agentio.agents.open_agent(ctl, "hyperstart",
                                      config={"tty_address": tty, "wait_ready": False})
    try:
        await again.check()
    finally:
        await again.disconnect()


def test_config_is_checked() -> None:
    with pytest.raises(errors.ConfigError, match="tty_address"):
        agentio.agents.open_agent("unix:///tmp/x.ctl", "hyperstart")
    with pytest.raises(errors.ConfigError, match="unknown field"):
        agentio.agents.open_agent("vsock://3:2718", "hyperstart", config={"tty": "x"})
    agent = agentio.agents.open_agent("vsock://3:2718", "hyperstart")
    assert agent.agent_type is agentio.AgentType.HYPERSTART


async def test_interactive_stdin_and_exit_codes(local: LocalHyperstart) -> None:
    async with await _sandbox(local) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        proc = await container.exec(["sh", "-c", 'while read l; do echo "got $l"; done; exit 42'])
        assert proc.stdin is not None and proc.stdout is not None
        for line in (b"one", b"two", b"x" * 1500):  # the last spans three stdin frames
            proc.stdin.write(line + b"\n")
            await proc.stdin.drain()
            assert await proc.stdout.readline() == b"got " + line + b"\n"
        proc.stdin.close()
        assert await proc.wait() == 42
        codes = [0, 1, 2, 126, 255]
        procs = [await container.exec(["sh", "-c", f"exit {code}"]) for code in codes]
        assert [await p.wait() for p in procs] == codes


async def test_execcmd_carries_an_id_and_only_keys_hyperstart_knows(
    local: LocalHyperstart,
) -> None:
    known = {"id", "user", "group", "additionalGroups", "args", "envs", "stdio", "stderr",
             "workdir", "terminal"}
    async with await _sandbox(local) as sandbox:
        agent = sandbox.agent
        assert isinstance(agent, agentio.agents.HyperstartAgent)
        sent: list[tuple[int, bytes]] = []
        call = agent.client.call

        async def recording(command: Any, *, timeout: float | None) -> bytes:
            sent.append((command.code, command.payload))
            return await call(command, timeout=timeout)

        agent.client.call = recording  # type: ignore[method-assign]
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        oci = {  # an OCI process with much hyperstart has no key for
            "terminal": False, "args": ["sh", "-c", 'echo "$GREETING" "$(pwd)"'],
            "env": ["PATH=/usr/bin:/bin", "GREETING=hi=there"], "cwd": "/tmp",
            "noNewPrivileges": True, "apparmorProfile": "x", "oomScoreAdj": 5,
            "capabilities": {"bounding": ["CAP_KILL"]}, "rlimits": [{"type": "RLIMIT_NOFILE",
                                                                      "hard": 64, "soft": 64}],
            "user": {"uid": 0, "gid": 0, "umask": 18, "username": "root"},
            "consoleSize": {"height": 1, "width": 1},
        }
        proc = await container.exec_spec(oci, exec_id="rich")
        assert await proc.communicate() == (b"hi=there /tmp\n", b"")
        execs = [json.loads(p) for code, p in sent if code == Code.EXECCMD]
        starts = [json.loads(p) for code, p in sent if code == Code.NEWCONTAINER]
        assert len(execs) == 1 and len(starts) == 1
        for process in (execs[0]["process"], starts[0]["process"]):
            assert set(process) <= known and process["id"]
        assert set(execs[0]) == {"container", "process"}
        assert execs[0]["process"]["id"] == "rich"
        assert execs[0]["process"]["envs"][1] == {"env": "GREETING", "value": "hi=there"}


async def test_both_channels_over_vsock_ports_2718_and_2719(
    local: LocalHyperstart, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Never an AF_VSOCK connect: the socket factory answers vsock CID 3 with a unix socket
    # already connected to the local guest's channel on that port.
    ctl, tty = await local.serve()
    ports = {2718: ctl, 2719: tty}
    asked: list[Address] = []

    def factory(address: Address) -> socket.socket:
        asked.append(address)
        assert address.scheme == "vsock" and address.cid == 3
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(ports[address.port or 0].removeprefix("unix://"))
        sock.setblocking(False)
        return sock

    dial_module = importlib.import_module("agentio.transports.dial")
    monkeypatch.setattr(dial_module, "default_socket_factory", factory)
    async with await agentio.Sandbox.create("vsock://3:2718", agent_type="hyperstart",
                                            limits=FAST) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        proc = await container.exec(["sh", "-c", "cat; echo err >&2"])
        assert await proc.communicate(b"over vsock") == (b"over vsock", b"err\n")
    assert asked == [Address.vsock(3, 2718), Address.vsock(3, 2719)]


async def test_wait_before_reading_still_gets_all_the_output(local: LocalHyperstart) -> None:
    # hyperstart ends stdout, then reports the exit: wait() returns with the output all there
    # (a guest that never ends stdout after an exit is cut after the drain bound: see
    # tests/protocols/test_hyperstart_client.py)
    async with await _sandbox(local) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        proc = await container.exec(["sh", "-c", "head -c 50000 /dev/zero; echo e >&2; exit 5"])
        assert await proc.wait() == 5
        assert proc.stdout is not None and proc.stderr is not None
        assert await proc.stdout.read() == bytes(50_000)
        assert await proc.stderr.read() == b"e\n"


async def test_long_polls_bounded_by_the_caller_raise_a_typed_timeout(
    local: LocalHyperstart,
) -> None:
    async with await _sandbox(local) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        agent = sandbox.agent
        await agent.exec_process("c1", "quiet", agentio.ProcessSpec(args=["sleep", "1000"]))
        for poll in (agent.read_stdout("c1", "quiet", 10, timeout=0.05),
                     agent.read_stderr("c1", "quiet", 10, timeout=0.05),
                     agent.wait_process("c1", "quiet", timeout=0.05)):
            with pytest.raises(errors.AgentTimeout) as info:
                await poll
            assert info.value.context == {"sandbox": sandbox.id, "container": "c1",
                                          "exec": "quiet"}
        with pytest.raises(errors.NotFound) as missing:
            await agent.wait_process("c1", "nope", timeout=0.05)
        assert missing.value.operation == "wait_process"
        await agent.signal_process("c1", "quiet", signal.SIGKILL)
        assert await agent.wait_process("c1", "quiet", timeout=5) == 0
