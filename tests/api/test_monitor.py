"""The health monitor: a killed agent, a hung agent, recovery, many monitors on one loop."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agentio
from agentio.errors import AgentConnectionError, ConfigError, SandboxFailed
from agentio.monitor import HealthChange, HealthMonitor, HealthState

INTERVAL = 0.3


@pytest.fixture
async def agent_child(sock_dir: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A local agent in a child process we can kill."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentio.localagent", "--dir", str(sock_dir / "la"),
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            address = (await child.stdout.readline()).decode().strip()
        yield child, address
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


async def test_health_check_interval_in_the_config_monitors_the_sandbox(
        agent_child: tuple[asyncio.subprocess.Process, str]) -> None:
    child, address = agent_child
    sandbox = await agentio.Sandbox.create(address,
                                           config={"health_check_interval": INTERVAL})
    try:
        monitor = sandbox.monitor
        assert monitor is not None and monitor.interval == INTERVAL
        changes = monitor.changes()
        child.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            change = await anext(changes)
        assert change.state is HealthState.DEAD
        with pytest.raises(SandboxFailed):
            await sandbox.check()
    finally:
        await sandbox.destroy()
    assert monitor._task is None  # destroy stopped it


async def test_no_monitor_unless_configured(
        agent_child: tuple[asyncio.subprocess.Process, str]) -> None:
    _, address = agent_child
    async with await agentio.Sandbox.create(address) as sandbox:
        assert sandbox.monitor is None
    with pytest.raises(ConfigError, match="health_check_interval"):
        await agentio.Sandbox.create(address, config={"health_check_interval": 0})


async def test_a_killed_agent_is_seen_dead_within_two_intervals(
        agent_child: tuple[asyncio.subprocess.Process, str]) -> None:
    child, address = agent_child
    loop = asyncio.get_running_loop()
    sandbox = await agentio.Sandbox.create(address)
    try:
        container = await sandbox.create_container(args=["cat"])  # ends with the agent's pipe
        proc = await container.start()
        seen: list[HealthChange] = []
        async with HealthMonitor(sandbox, interval=INTERVAL, deadline=INTERVAL / 2,
                                 on_change=seen.append) as monitor:
            changes = monitor.changes()
            child.send_signal(signal.SIGKILL)
            killed_at = loop.time()
            async with asyncio.timeout(10):
                change = await anext(changes)
            elapsed = loop.time() - killed_at
            assert change.state is HealthState.DEAD and change.previous is HealthState.HEALTHY
            assert isinstance(change.cause, AgentConnectionError)
            assert elapsed < 2 * INTERVAL, f"took {elapsed:.3f}s"
            assert seen == [change] and monitor.state is HealthState.DEAD
            with pytest.raises(StopAsyncIteration):  # DEAD is final
                await anext(changes)
            assert [late async for late in monitor.changes()] == []
        # the pending wait ended when the connection did; new calls fail fast with the cause
        with pytest.raises(AgentConnectionError):
            await proc.wait()
        started = loop.time()
        with pytest.raises(SandboxFailed) as failed:
            await sandbox.check()
        assert loop.time() - started < 0.1
        assert failed.value.operation == "check" and failed.value.__cause__ is change.cause
        with pytest.raises(SandboxFailed):
            await container.stats()
        await container.remove()  # nothing to ask the dead guest: released here only
    finally:
        await sandbox.destroy()
    assert not sandbox.containers


class StuckAgent:
    """Accepts connections and never answers: a hung guest."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while await reader.read(65536):
            pass
        writer.close()


async def test_a_hung_agent_is_unresponsive_then_dead_and_pending_calls_fail_fast(
        sock_dir: Path) -> None:
    stuck = StuckAgent()
    path = sock_dir / "stuck.sock"
    server = await asyncio.start_unix_server(stuck.handle, path=str(path))
    agent = agentio.open_agent(f"unix://{path}", sandbox_id="sb-hung")
    try:
        pending = asyncio.ensure_future(agent.version())  # 60 s call deadline by default
        monitor = HealthMonitor(agent, interval=0.2, deadline=0.05, dead_after=2, jitter=0)
        changes = monitor.changes()
        async with monitor:
            async with asyncio.timeout(10):
                unresponsive = await anext(changes)
                dead = await anext(changes)
        assert (unresponsive.previous, unresponsive.state) == (HealthState.HEALTHY,
                                                               HealthState.UNRESPONSIVE)
        assert (dead.previous, dead.state, dead.failures) == (HealthState.UNRESPONSIVE,
                                                              HealthState.DEAD, 2)
        async with asyncio.timeout(1):
            with pytest.raises(SandboxFailed) as failed:
                await pending
        assert failed.value.operation == "version"
        assert failed.value.context["sandbox"] == "sb-hung"
        assert "unresponsive for 2 checks" in str(failed.value)
        assert agent.failure is not None
    finally:
        await agent.disconnect()
        server.close()
        for writer in stuck.writers:
            writer.close()
        await server.wait_closed()


class FlakyAgent(agentio.NoopAgent):
    """Answers checks as scripted: True answers, False hangs until the deadline."""

    def __init__(self, answers: list[bool]) -> None:
        super().__init__()
        self.answers = answers
        self.in_flight = 0
        self.most_in_flight = 0
        self.first_check: float | None = None
        self.done = asyncio.Event()

    async def check(self, *, timeout: float | None = None) -> None:
        if self.first_check is None:
            self.first_check = asyncio.get_running_loop().time()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if not self.answers:
                self.done.set()
                await asyncio.Event().wait()
            if not self.answers.pop(0):
                await asyncio.Event().wait()
        finally:
            self.in_flight -= 1


async def test_recovery_is_reported_and_the_callback_may_be_async() -> None:
    agent = FlakyAgent([True, False, True, True])
    seen: list[tuple[HealthState, HealthState]] = []

    async def on_change(change: HealthChange) -> None:
        seen.append((change.previous, change.state))

    async with HealthMonitor(agent, interval=0.05, deadline=0.02, dead_after=3, jitter=0.2,
                             on_change=on_change, mark_failed=False) as monitor:
        async with asyncio.timeout(10):
            await agent.done.wait()
    assert seen == [(HealthState.HEALTHY, HealthState.UNRESPONSIVE),
                    (HealthState.UNRESPONSIVE, HealthState.HEALTHY)]
    assert monitor.failures == 0 and agent.failure is None
    assert agent.most_in_flight == 1


async def test_many_monitors_share_a_loop_without_overlapping_checks() -> None:
    agents = [FlakyAgent([True] * 3) for _ in range(100)]
    monitors = [HealthMonitor(agent, interval=0.05, deadline=0.01, dead_after=100)
                for agent in agents]
    for monitor in monitors:
        monitor.start()
    try:
        async with asyncio.timeout(10):
            for agent in agents:
                await agent.done.wait()
    finally:
        for monitor in monitors:
            await monitor.stop()
    assert all(agent.most_in_flight == 1 for agent in agents)
    assert all(monitor.checks >= 4 for monitor in monitors)
    # the first checks are spread over an interval, not fired together
    firsts = [agent.first_check for agent in agents if agent.first_check is not None]
    assert max(firsts) - min(firsts) > 0.05 / 4


@pytest.mark.parametrize("kwargs", [
    {"interval": 1, "deadline": 1}, {"interval": 0}, {"interval": 1, "jitter": 1},
    {"interval": 1, "dead_after": 0},
])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        HealthMonitor(agentio.NoopAgent(), **kwargs)  # type: ignore[arg-type]
