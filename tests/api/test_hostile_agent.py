"""What a hostile or buggy agent can do to a process, sandbox or teardown, and must not.

Each test drives the public API against a fake agent (a :class:`NoopAgent` with one misbehaving
operation) and checks that the caller gets a typed error or the bounded wait it was promised.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentio.agents.noop import NoopAgent
from agentio.agents.specs import SandboxSpec
from agentio.errors import AgentError, AgentTimeout, OutputIncomplete, ProtocolError
from agentio.limits import Limits
from agentio.process import Process
from agentio.sandbox import Sandbox
from agentio.teardown import shielded_teardown


def _process(agent: NoopAgent, limits: Limits | None = None) -> Process:
    proc = Process(agent, "c", "e", terminal=False, limits=limits or Limits(drain_timeout=0.5))
    proc._start()
    return proc


class _Broken(NoopAgent):
    """Every stream operation returns a value of the wrong type (as a decoder slip would)."""

    async def read_stdout(self, *args: Any, **kwargs: Any) -> Any:
        return 5  # an int where bytes belong

    async def write_stdin(self, *args: Any, **kwargs: Any) -> Any:
        return [5]  # a list where the count belongs

    async def wait_process(self, *args: Any, **kwargs: Any) -> Any:
        return [104, 105]


async def test_unexpected_failures_of_background_tasks_reach_the_caller() -> None:
    proc = _process(_Broken())
    try:
        async with asyncio.timeout(5):
            with pytest.raises(ProtocolError, match="read_stdout"):
                await proc.stdout.read()
            proc.stdin.write(b"hello")
            proc.stdin.close()
            with pytest.raises(ProtocolError, match="write_stdin"):
                await proc.stdin.wait_closed()
            with pytest.raises(ProtocolError, match="wait"):
                await proc.wait()
    finally:
        await proc.close(kill=False)


class _Trickle(NoopAgent):
    """Fills the caller's stdout buffer at once, exits, then sends one byte at a time forever."""

    def __init__(self, burst: int) -> None:
        super().__init__()
        self.burst = burst
        self.sent = 0
        self.filled = asyncio.Event()

    async def read_stdout(self, container_id: str, exec_id: str, size: int,
                          **kwargs: Any) -> bytes:
        if self.sent < self.burst:
            self.sent += size
            if self.sent >= self.burst:
                self.filled.set()
            return b"B" * size
        await asyncio.sleep(0.01)  # the agent's own pace
        return b"t"

    async def wait_process(self, *args: Any, **kwargs: Any) -> int:
        await self.filled.wait()
        return 0


async def test_drain_timeout_still_applies_after_the_buffer_was_full_once() -> None:
    agent = _Trickle(burst=64)
    proc = _process(agent, Limits(stdout_buffer=64, read_chunk=16, drain_timeout=0.3))
    try:
        async with asyncio.timeout(5):
            assert await proc.wait() == 0  # reported while the full buffer waits for us
            with pytest.raises(OutputIncomplete):
                await proc.communicate()
    finally:
        await proc.close(kill=False)


class _NeverExits(NoopAgent):
    """Never answers WaitProcess (a hung or hostile agent)."""

    async def wait_process(self, *args: Any, **kwargs: Any) -> int:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_destroy_closes_processes_concurrently() -> None:
    limits = Limits(drain_timeout=0.2, teardown_timeout=30)
    sandbox = Sandbox(_NeverExits(), SandboxSpec(sandbox_id="sb"), limits=limits)
    await sandbox.start()
    container = await sandbox.create_container()
    await container.start()
    procs = [await container.exec(["x"]) for _ in range(19)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):
        await sandbox.destroy()
    # one after another, 20 processes would take 20 drain timeouts (4 s)
    assert loop.time() - started < 10 * limits.drain_timeout
    for proc in procs:
        with pytest.raises(AgentError, match="closed before"):
            await proc.wait()


async def test_nested_teardown_ends_by_the_enclosing_deadline() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(5):
        with pytest.raises(AgentTimeout, match="outer"):
            async with shielded_teardown(0.2, "outer"):
                with pytest.raises(AgentTimeout, match="inner"):
                    async with shielded_teardown(30, "inner"):
                        await asyncio.Event().wait()
                await asyncio.Event().wait()
    assert loop.time() - started < 3


async def test_teardown_deadline_reaches_closes_started_inside() -> None:
    """Processes closed inside a teardown (in tasks of their own) end by its deadline."""
    limits = Limits(drain_timeout=30, teardown_timeout=30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    sandbox = Sandbox(_NeverExits(), SandboxSpec(sandbox_id="sb"), limits=limits)
    await sandbox.start()
    container = await sandbox.create_container()
    await container.start()
    for _ in range(3):
        await container.exec(["x"])
    async with asyncio.timeout(10):
        with pytest.raises(AgentTimeout):
            async with shielded_teardown(0.3, "outer"):
                await container.remove()
    assert loop.time() - started < 3
