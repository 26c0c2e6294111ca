"""The public API end to end against the local hyperstart over real unix sockets.

Addressing: ``Sandbox.create(address)`` takes the **ctl** channel; ``config["tty_address"]``
names the tty channel (derived automatically for vsock / hybrid-vsock ctl addresses).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agentio
from agentio import errors
from agentio.localagent.hyperstart import LocalHyperstart

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
