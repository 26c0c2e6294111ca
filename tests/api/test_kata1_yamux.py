"""Kata 1.x over yamux against the local agent: streams in parallel, flow control, a paused peer.

The operation set itself runs for every generation in test_local_sandbox.py; these are the
things only a yamux session has.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

import agentio
from agentio.agents import Kata1Agent, ProcessSpec, SandboxSpec, default_container_spec
from agentio.localagent import LocalAgent
from agentio.protocols.grpc import GrpcClient
from agentio.protocols.grpc.server import GrpcServer
from agentio.transports import connect, parse_address
from agentio.transports.yamux.dialer import YamuxDialer

BOUND = 20.0  # no wait here may take longer (the host may be busy)
FAST = agentio.Limits(drain_timeout=1.0)


@pytest.fixture
async def yamux_agent() -> AsyncIterator[LocalAgent]:
    async with LocalAgent(agent="kata1", yamux=True, drain_timeout=1.0) as local:
        yield local


async def test_calls_run_concurrently_on_several_yamux_streams(
    yamux_agent: LocalAgent,
) -> None:
    address = parse_address(await yamux_agent.serve())
    dialer = YamuxDialer(lambda factory: connect(address, factory))
    agents = [Kata1Agent(GrpcClient(dialer.connect_stream), sandbox_id="sb-mux")
              for _ in range(4)]
    first, others = agents[0], agents[1:]
    spec = SandboxSpec(sandbox_id="sb-mux", hostname="sb-mux")
    try:
        await first.create_sandbox(spec)
        await first.start_sandbox(spec)
        await first.create_container("ctr", default_container_spec(
            ProcessSpec(args=["sleep", "1000"]), container_id="ctr", hostname="sb-mux"))
        await first.start_container("ctr")
        await first.exec_process("ctr", "sleeper", ProcessSpec(args=["sleep", "1000"]))
        # stream 1 holds a long poll while the other streams work, as in the recorded session
        waiting = asyncio.create_task(first.wait_process("ctr", "sleeper"))

        async def busy(agent: Kata1Agent, n: int) -> None:
            for i in range(5):
                exec_id = f"e{n}-{i}"
                await agent.exec_process("ctr", exec_id, ProcessSpec(args=["echo", exec_id]))
                out, err, status = await asyncio.gather(
                    _read_all(agent, "stdout", exec_id), _read_all(agent, "stderr", exec_id),
                    agent.wait_process("ctr", exec_id))
                assert (out, err, status) == (f"{exec_id}\n".encode(), b"", 0)
            await asyncio.gather(*(agent.check() for _ in range(20)))

        await asyncio.wait_for(asyncio.gather(*(busy(a, n) for n, a in enumerate(others))),
                               BOUND)
        assert not waiting.done()
        session = dialer.session
        assert session is not None and session.streams == 4  # one HTTP/2 connection each
        server = yamux_agent.servers[0]
        assert isinstance(server, GrpcServer) and len(server.yamux_sessions) == 1
        await others[0].signal_process("ctr", "sleeper", signal.SIGTERM)
        assert await asyncio.wait_for(waiting, BOUND) == 128 + signal.SIGTERM
    finally:
        for agent in agents:
            await agent.disconnect()
        await dialer.close()
    assert dialer.session is None


async def _read_all(agent: Kata1Agent, which: str, exec_id: str) -> bytes:
    read = agent.read_stdout if which == "stdout" else agent.read_stderr
    data = b""
    while chunk := await read("ctr", exec_id, 1024):
        data += chunk
    return data


@pytest.mark.parametrize("yamux", [True, False], ids=["yamux", "unix"])
async def test_ten_mib_through_cat_arrive_byte_exact(yamux: bool) -> None:
    payload = os.urandom(10 * 1024 * 1024)
    async with LocalAgent(agent="kata1", yamux=yamux, drain_timeout=1.0) as local:
        address = await local.serve()
        async with await agentio.Sandbox.create(address, agent_type="kata1", limits=FAST,
                                                config={"yamux": yamux}) as sandbox:
            container = await sandbox.create_container()
            await container.start()
            proc = await container.exec(["cat"])
            out, err = await asyncio.wait_for(proc.communicate(payload), 60)
            assert (len(out), err, proc.returncode) == (len(payload), b"", 0)
            assert out == payload


async def test_agent_that_stops_reading_holds_calls_back_and_they_finish_on_resume(
    yamux_agent: LocalAgent,
) -> None:
    # A paused VM: the agent reads nothing for a while. The client must neither buffer
    # without bound nor give up on the session; everything completes once it reads again.
    address = await yamux_agent.serve()
    server = yamux_agent.servers[0]
    assert isinstance(server, GrpcServer)
    payload = os.urandom(3 * 1024 * 1024)  # well over the 256 KiB window and socket buffers
    async with await agentio.Sandbox.create(address, agent_type="kata1",
                                            limits=FAST) as sandbox:
        container = await sandbox.create_container()
        await container.start()
        proc = await container.exec(["cat"])
        (session,) = server.yamux_sessions
        session.pause_reading()
        feeding = asyncio.create_task(proc.communicate(payload))
        check = asyncio.create_task(sandbox.check())
        done, _ = await asyncio.wait({feeding, check}, timeout=0.5)
        assert not done  # held back, not failed
        client = sandbox.agent.channel
        assert isinstance(client, GrpcClient) and client.pending >= 2
        session.resume_reading()
        await asyncio.wait_for(check, BOUND)
        out, err = await asyncio.wait_for(feeding, 60)
        assert out == payload and err == b"" and proc.returncode == 0
        await sandbox.check()
