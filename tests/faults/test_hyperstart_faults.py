"""Case 7: a hyperstart guest reports processes we never started, or output on unknown seqs.

The guest is the local hyperstart (real processes); a raw :class:`~agentio.testing.FaultProxy`
sits on each channel, and the test slips extra frames into the guest's side of the streams
while they are idle (so at a frame boundary): exit events for processes that do not exist,
or already finished, and tty frames (data and end-of-stream) on sequence numbers nobody
allocated. Each is dropped with a log line; the processes that do exist run to the end with
every byte and their real exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import agentio
from agentio import errors
from agentio.localagent.hyperstart import LocalHyperstart
from agentio.protocols.hyperstart import codec
from agentio.protocols.hyperstart.codec import Code
from agentio.testing import Direction, FaultProxy

ProxyFactory = Callable[..., Awaitable[FaultProxy]]
CLIENT_LOG = "agentio.protocols.hyperstart.client"
SEQS = (0, 1 << 40, (1 << 64) - 1, 12345)
PROMPT = 2.0  # "at once": far below any deadline here, with room for a loaded machine


@pytest.fixture
async def local(sock_dir: Path) -> AsyncIterator[LocalHyperstart]:
    async with LocalHyperstart(sock_dir / "hs", drain_timeout=2.0) as server:
        yield server


def exit_event(container: str, process: str, status: int = 0) -> bytes:
    return codec.encode_ctl(Code.PROCESSASYNCEVENT, json.dumps(
        {"container": container, "process": process, "event": "finished",
         "status": status}).encode())


async def test_events_and_output_for_unknown_processes_are_dropped(
    local: LocalHyperstart, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=CLIENT_LOG)
    ctl, tty = await local.serve()
    ctl_proxy = await make_proxy(ctl, framing="raw")
    tty_proxy = await make_proxy(tty, framing="raw")
    async with await agentio.Sandbox.create(
        ctl_proxy.address, agent_type="hyperstart", limits=agentio.Limits(drain_timeout=1.0),
        config={"tty_address": tty_proxy.address, "call_timeout": 10},
    ) as sandbox:
        container = await sandbox.create_container("c1", ["sleep", "1000"])
        await container.start()
        done = await container.exec(["true"])
        assert await done.wait() == 0
        first = await container.exec(["cat"])
        second = await container.exec(["sh", "-c", "cat; echo bye >&2; exit 7"])
        # both wait on stdin: nothing is in flight on either channel
        for stray in (
            exit_event("c1", "never-started", 9),
            exit_event("no-such-container", first.exec_id, 9),
            exit_event("c1", done.exec_id, 9),  # already finished and consumed
            exit_event("", "", 9),
        ):
            ctl_proxy.send(Direction.TO_CLIENT, stray)
        for seq in SEQS:
            tty_proxy.send(Direction.TO_CLIENT, codec.encode_tty(seq, b"not yours"))
            tty_proxy.send(Direction.TO_CLIENT, codec.encode_tty(seq))  # its "end"
        data = bytes(range(256)) * 512
        assert await first.communicate(data) == (data, b"")
        assert first.returncode == 0
        assert await second.communicate(data[:1000]) == (data[:1000], b"bye\n")
        assert second.returncode == 7
        # the channels are still good for more
        again = await container.exec(["echo", "still here"])
        assert await again.communicate() == (b"still here\n", b"")
    messages = [r.getMessage() for r in caplog.records if r.name == CLIENT_LOG]
    assert sum("exit of unknown process" in m for m in messages) == 4, messages
    for seq in SEQS:
        for size in (9, 0):
            assert f"tty frame for unknown seq {seq} ({size} bytes) dropped" in messages


@pytest.mark.parametrize("channel", ["ctl", "tty"])
async def test_guest_death_fails_five_waits_and_later_calls_fast(
    local: LocalHyperstart, make_proxy: ProxyFactory, channel: str
) -> None:
    """Case 2 for hyperstart: either channel dying (reset) under five pending waits fails them
    all at once with a connection error; later calls fail fast, without redialling."""
    ctl, tty = await local.serve()
    ctl_proxy = await make_proxy(ctl, framing="raw")
    tty_proxy = await make_proxy(tty, framing="raw")
    sandbox = await agentio.Sandbox.create(
        ctl_proxy.address, agent_type="hyperstart", limits=agentio.Limits(drain_timeout=1.0),
        config={"tty_address": tty_proxy.address, "call_timeout": 10},
    )
    container = await sandbox.create_container("c1", ["sleep", "1000"])
    await container.start()
    procs = [await container.exec(["sleep", "1000"]) for _ in range(5)]
    waits = [asyncio.ensure_future(p.wait()) for p in procs]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await (ctl_proxy if channel == "ctl" else tty_proxy).kill(reset=True)
    results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 10)
    assert loop.time() - started < PROMPT
    assert all(isinstance(r, errors.AgentConnectionError) for r in results), results
    started = loop.time()
    with pytest.raises(errors.AgentConnectionError):
        await container.exec(["true"])
    assert loop.time() - started < PROMPT
    assert (ctl_proxy.accepted, tty_proxy.accepted) == (1, 1)
    with contextlib.suppress(errors.AgentConnectionError):
        await sandbox.destroy()
