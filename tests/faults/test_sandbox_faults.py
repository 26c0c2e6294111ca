"""Fault cases through the public API against the local agent: 2 (the agent dies under five
long polls), 8 (100 MB of output to a slow reader) and 10 (one hung agent among 99 busy
sandboxes)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import agentio
from agentio import demo
from agentio.errors import AgentConnectionError, ConnectionClosed, DeadlineExceeded
from agentio.localagent import LocalAgent
from agentio.localagent.hyperstart import LocalHyperstart
from agentio.testing import FaultProxy, LeakCheck, ScriptedTtrpcPeer, hang

BOUND = 10.0
PROMPT = 2.0  # "at once": far below BOUND and the call deadline, with room for load
ProxyFactory = Callable[..., Awaitable[FaultProxy]]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


# --- 2. the agent dies while five long polls are pending -----------------------------------


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
async def test_agent_death_fails_five_waits_and_the_sandbox_stays_failed(
    local_agent: LocalAgent, make_proxy: ProxyFactory, reset: bool
) -> None:
    upstream = await local_agent.serve()
    proxy = await make_proxy(upstream)
    leaks = LeakCheck.start()
    sandbox = await agentio.Sandbox.create(proxy.address, config={"call_timeout": BOUND})
    container = await sandbox.create_container(args=["sleep", "1000"])
    await container.start()
    procs = [await container.exec(["sleep", "1000"]) for _ in range(5)]
    waits = [asyncio.ensure_future(p.wait()) for p in procs]
    for _ in range(10):
        await asyncio.sleep(0)
    assert not any(w.done() for w in waits)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await proxy.kill(reset=reset)  # the VM is gone; so is its socket
    results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), BOUND)
    assert loop.time() - started < PROMPT
    assert all(isinstance(r, AgentConnectionError) for r in results), results
    started = loop.time()
    with pytest.raises(ConnectionClosed):  # fails fast: no redial, no deadline to wait out
        await sandbox.create_container(args=["true"])
    assert loop.time() - started < PROMPT
    assert proxy.accepted == 1
    started = loop.time()
    with pytest.raises(AgentConnectionError):  # says the guest could not be told ...
        await sandbox.destroy()
    assert loop.time() - started < PROMPT  # ... at once, and cleans up our side all the same
    assert not await leaks.leaked_tasks()
    # the in-process agent still holds its processes' pipes: only our sockets must be gone
    assert not {fd: what for fd, what in leaks.leaked_fds().items() if "socket" in what}


# --- 8. 100 MB on stdout, read slowly -------------------------------------------------------

BLOCK = 4096
TOTAL = 25_000 * BLOCK  # 102.4 MB
# a child writing TOTAL bytes of 4 KiB blocks, each filled with its own 8-byte index
WRITER = (
    "import struct, sys\n"
    f"n = {TOTAL // BLOCK}\n"
    "out = sys.stdout.buffer\n"
    "for i in range(n):\n"
    f"    out.write(struct.pack('>Q', i) * {BLOCK // 8})\n"
)


async def filled(stream: agentio.OutputStream, size: int) -> None:
    """A reader that has looked away until ``size`` bytes wait unread."""
    for _ in range(100_000):
        if stream.buffered >= size:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{stream!r} never filled to {size}")


@pytest.mark.parametrize("agent_type", ["kata", "hyperstart"])
async def test_100mb_to_a_slow_reader_stays_within_the_buffer_bound_in_order(
    local_agent: LocalAgent, sock_dir: Path, agent_type: str
) -> None:
    """The reader stops now and then until the stream's buffer is full: from then on the
    library stops asking the agent for more (Kata: no ReadStdout; hyperstart: the tty channel
    stops being read), so what the client holds never exceeds ``Limits.stdout_buffer`` plus
    one read, and the process's RSS does not grow with the 100 MB. Every block arrives, in
    order."""
    limits = agentio.Limits(stdout_buffer=256 * 1024)
    bound = limits.stdout_buffer + limits.read_chunk
    async with contextlib.AsyncExitStack() as stack:
        if agent_type == "kata":
            address, config = await local_agent.serve(), None
        else:
            hyperstart = await stack.enter_async_context(
                LocalHyperstart(sock_dir / "hs", drain_timeout=2.0))
            address, tty = await hyperstart.serve()
            config = {"tty_address": tty}
        sandbox = await stack.enter_async_context(await agentio.Sandbox.create(
            address, agent_type=agent_type, config=config, limits=limits))
        container = await sandbox.create_container(args=["sleep", "1000"])
        await container.start()
        proc = await container.exec([sys.executable, "-c", WRITER])
        rss_before = rss_bytes()
        peak_buffered = 0
        rss_peak = rss_before
        received = 0
        pending = b""
        stalls = 0
        while True:
            if received // (10 * 1000 * 1000) > stalls:  # every 10 MB, a slow moment
                stalls += 1
                await filled(proc.stdout, limits.stdout_buffer)
            peak_buffered = max(peak_buffered, proc.stdout.buffered)
            chunk = await proc.stdout.read(64 * 1024)
            if not chunk:
                break
            received += len(chunk)
            pending += chunk
            whole = len(pending) - len(pending) % BLOCK
            for offset in range(0, whole, BLOCK):
                index = (received - len(pending) + offset) // BLOCK
                assert pending[offset:offset + BLOCK] == struct.pack(">Q", index) * (BLOCK // 8)
            pending = pending[whole:]
            if received % (1 << 20) < len(chunk):
                rss_peak = max(rss_peak, rss_bytes())
        assert await proc.wait() == 0
    assert received == TOTAL and not pending
    assert stalls >= 9
    assert limits.stdout_buffer <= peak_buffered <= bound
    assert rss_peak - rss_before < 32 << 20


# --- 10. one hung agent among 99 sandboxes running the demo workload -----------------------

HEALTHY = 99
HUNG_DEADLINE = 0.5


async def _run_healthy(addresses: list[str]) -> tuple[float, list[demo.Failure]]:
    options = demo.Options(sandboxes=len(addresses), timeout=60.0)
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(demo.run_one(options, a, f"healthy-{i}")
                                      for i, a in enumerate(addresses)))
    failures = [f for _, f in outcomes if f is not None]
    return time.perf_counter() - started, failures


async def test_a_hung_agent_costs_only_its_own_calls(sock_dir: Path) -> None:
    """Sandboxes on a hung agent keep trying calls with a short deadline while 99 sandboxes
    run the demo workload on healthy agents (served by a child process, as VMs would be): every
    hung call fails at its deadline (not before, not much after), the 99 all succeed, and they
    take no longer than the same 99 without the hung agent (within a 2x margin for a shared
    2-core machine whose load changes between the two runs; a hang that blocked the others
    would cost them its whole duration, not a fraction)."""
    async with demo.local_agents(HEALTHY) as addresses, \
            ScriptedTtrpcPeer(sock_dir, default=hang) as peer:
        baseline, failures = await _run_healthy(addresses)
        assert failures == []

        hung_times: list[float] = []
        stop = asyncio.Event()

        async def keep_hanging(n: int) -> None:
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                started = loop.time()
                with pytest.raises(DeadlineExceeded):
                    await agentio.Sandbox.create(peer.address, sandbox_id=f"hung-{n}",
                                                 timeout=HUNG_DEADLINE)
                hung_times.append(loop.time() - started)

        hung = [asyncio.ensure_future(keep_hanging(n)) for n in range(3)]
        with_hang, failures = await _run_healthy(addresses)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*hung), BOUND)
    assert failures == []
    assert len(hung_times) >= 3
    assert all(HUNG_DEADLINE <= t < HUNG_DEADLINE + 1.0 for t in hung_times), hung_times
    assert with_hang < baseline * 2.0 + 2.0, (baseline, with_hang)
