"""The demo end to end: in-process against a local agent child, and as a real program."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agentio.demo
from agentio import AgentType
from agentio.demo import (
    PROFILES,
    Options,
    Summary,
    local_agents,
    main,
    parse_args,
    run_demo,
    show_progress,
)

# per sandbox: create sandbox, create + start container, 3 x (exec + communicate),
# exec + signal + wait, stats, remove, destroy
OPS_PER_SANDBOX = 15
HYPERSTART_OPS_PER_SANDBOX = OPS_PER_SANDBOX - 1  # no stats
TOKEN_LEN = len("demo-abcdef-0000-") + 16
BYTES_PER_SANDBOX = (TOKEN_LEN + 1) + 64 * 1024 + TOKEN_LEN  # echo, cat, stderr


def _children() -> set[int]:
    """Our live child processes (empty when /proc cannot say)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        with_children = task / "children"
        if with_children.exists():
            pids.update(int(p) for p in with_children.read_text().split())
    return pids


class StuckAgent:
    """A unix socket that accepts connections and never answers: a hung guest."""

    def __init__(self, path: Path, expected: int) -> None:
        self.path = path
        self.address = f"unix://{path}"
        self.expected = expected
        self.accepted = 0
        self.closed = 0
        self.all_accepted = asyncio.Event()
        self.all_closed = asyncio.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.accepted == self.expected:
            self.all_accepted.set()
        while await reader.read(65536):
            pass
        writer.close()
        self.closed += 1
        if self.closed == self.expected:
            self.all_closed.set()


@pytest.fixture
async def stuck(sock_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[StuckAgent]:
    agent = StuckAgent(sock_dir / "stuck.sock", getattr(request, "param", 1))
    server = await asyncio.start_unix_server(agent._handle, str(agent.path))
    async with server:
        yield agent


def _quiet(**fields: object) -> Options:
    return Options(quiet=True, **fields)  # type: ignore[arg-type]


async def test_sandboxes_against_a_local_agent_child_verify_every_byte() -> None:
    before = _children()
    summary = await run_demo(_quiet(sandboxes=5, concurrency=3))
    assert summary.failures == []
    assert summary.ok and summary.done == 5
    assert summary.operations == 5 * OPS_PER_SANDBOX
    assert summary.bytes_verified == 5 * BYTES_PER_SANDBOX
    assert summary.wall_time > 0 and summary.ops_per_s > 0
    assert _children() <= before  # the local agent child is gone
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_local_agents_child_and_directory_are_gone_afterwards() -> None:
    before = _children()
    async with local_agents(2) as addresses:
        paths = [Path(a.removeprefix("unix://")) for a in addresses]
        assert len(set(paths)) == 2 and all(p.is_socket() for p in paths)
        assert len(_children() - before) == 1
    assert not paths[0].parent.exists()
    assert _children() <= before


@pytest.mark.parametrize("stuck", [2], indirect=True)
async def test_a_stuck_agent_becomes_a_failure_per_sandbox_not_a_hang(
    stuck: StuckAgent,
) -> None:
    started = time.monotonic()
    summary = await run_demo(_quiet(addresses=(stuck.address, stuck.address + "x"),
                                    sandboxes=2, timeout=0.3, dial_timeout=0.2))
    assert time.monotonic() - started < 5
    assert not summary.ok and summary.done == 2
    by_address = {f.address: f for f in summary.failures}
    assert "timed out after 0.3 s" in by_address[stuck.address].error
    assert "DialError" in by_address[stuck.address + "x"].error
    assert all(f.sandbox.startswith("demo-") for f in summary.failures)
    assert stuck.closed == 1  # the connection to the hung agent was closed


@pytest.mark.parametrize("stuck", [3], indirect=True)
async def test_cancelling_the_run_closes_every_connection_and_leaks_no_task(
    stuck: StuckAgent,
) -> None:
    # one address serves one sandbox at a time: three addresses naming the same socket
    addresses = tuple(f"unix://{stuck.path.parent}/./{'./' * i}stuck.sock" for i in range(3))
    run = asyncio.create_task(run_demo(_quiet(addresses=addresses, sandboxes=6)))
    await stuck.all_accepted.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.wait_for(stuck.all_closed.wait(), 5)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


def test_bad_address_fails_fast_naming_the_address(
    sock_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    address = f"unix://{sock_dir}/no-such-agent.sock"
    started = time.monotonic()
    status = main(["--address", address, "--sandboxes", "2", "--dial-timeout", "0.2", "-q"])
    assert time.monotonic() - started < 5
    assert status == 1
    out = capsys.readouterr().out
    assert re.search(r"^failures\s+2$", out, re.M)
    failed = [line for line in out.splitlines() if line.startswith("FAILED demo-")]
    assert len(failed) == 2
    assert all(address in line and "cannot reach" in line for line in failed)


def test_command_line_checks() -> None:
    assert parse_args(["--agent", "kata", "--address", "unix:///a", "--address", "unix:///b"]
                      ).addresses == ("unix:///a", "unix:///b")
    assert parse_args([]).agent is AgentType.KATA
    assert parse_args([]).agent_config() is None
    assert parse_args(["--dial-timeout", "1"]).agent_config() == {"dial_timeout": 1.0}
    for bad in (["--sandboxes", "0"], ["--agent", "vmware"], ["--timeout", "-1"]):
        with pytest.raises(SystemExit) as exited:
            parse_args(bad)
        assert exited.value.code == 2


class _Captured(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.wrote = asyncio.Event()

    def write(self, text: str) -> int:
        self.wrote.set()
        return super().write(text)


async def test_progress_writes_plain_lines_when_not_a_terminal() -> None:
    summary = Summary(sandboxes=4, agent="kata", done=3)
    stream = _Captured()
    task = asyncio.create_task(show_progress(summary, time.monotonic(), stream, interval=0.01))
    await stream.wrote.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert re.match(r"sandboxes 3/4  failures 0  elapsed \d+\.\ds\n", stream.getvalue())
    assert "\r" not in stream.getvalue()


def _demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentio.demo", *args]


def test_the_program_prints_a_json_summary_and_exits_zero() -> None:
    done = subprocess.run(_demo("--sandboxes", "3", "--json"), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["failures"] == 0 and summary["errors"] == []
    assert summary["succeeded"] == summary["sandboxes"] == 3
    assert summary["operations"] == 3 * OPS_PER_SANDBOX
    assert summary["bytes_verified"] == 3 * BYTES_PER_SANDBOX
    assert summary["ops_per_s"] > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_an_interrupted_program_stops_its_agent_child_and_cleans_up(sig: int) -> None:
    # --rounds 0 runs until interrupted, so the signal always lands mid-run.
    demo = await asyncio.create_subprocess_exec(
        *_demo("--sandboxes", "2", "--rounds", "0", "-v", "-q"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert demo.stderr is not None
    try:
        async with asyncio.timeout(60):
            while not (started := re.search(rb"local agent pid (\d+) serving 2 sockets in (\S+)",
                                             await demo.stderr.readline())):
                pass
            # Wait for a finished sandbox run, so the workload is really under way.
            while b"done:" not in await demo.stderr.readline():
                pass
            demo.send_signal(sig)
            rest = await demo.stderr.read()
            status = await demo.wait()
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    assert status == 130
    child, directory = int(started[1]), started[2].decode()
    # The child stopped on our SIGTERM, closing its agents (which kills their processes),
    # rather than being killed mid-way.
    assert re.search(rb"local agent \(pid %d\) exited with 0\b" % child, rest), rest[-2000:]
    assert b"failed too" not in rest and b"Traceback" not in rest
    assert not await asyncio.to_thread(os.path.exists, directory)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_rounds_run_fresh_sandboxes_on_the_same_agents() -> None:
    done = subprocess.run(_demo("--sandboxes", "2", "--rounds", "3", "--json", "-q"),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sandboxes"] == summary["succeeded"] == 6
    assert summary["operations"] == 6 * OPS_PER_SANDBOX


# -- other agent types -----------------------------------------------------------------------


async def test_hyperstart_sandboxes_against_a_local_child_verify_every_byte() -> None:
    before = _children()
    summary = await run_demo(_quiet(agent=AgentType.HYPERSTART, sandboxes=4, concurrency=3))
    assert summary.failures == []
    assert summary.ok and summary.done == 4 and summary.verified
    assert summary.operations == 4 * HYPERSTART_OPS_PER_SANDBOX
    assert summary.bytes_verified == 4 * BYTES_PER_SANDBOX
    assert _children() <= before


async def test_hyperstart_by_address_takes_ctl_and_tty_urls() -> None:
    async with local_agents(2, child_args=PROFILES[AgentType.HYPERSTART].child_args or ()
                            ) as lines:
        assert all(len(line.split()) == 2 for line in lines)  # "CTL TTY"
        # one sandbox per guest: DESTROYPOD powers a hyperstart guest off
        summary = await run_demo(_quiet(agent=AgentType.HYPERSTART, addresses=tuple(lines),
                                        sandboxes=2))
    assert summary.failures == [] and summary.done == 2
    assert summary.bytes_verified == 2 * BYTES_PER_SANDBOX


def test_a_line_becomes_an_address_and_a_config() -> None:
    hyperstart, kata = PROFILES[AgentType.HYPERSTART], PROFILES[AgentType.KATA]
    assert hyperstart.target("unix:///d/0.ctl unix:///d/0.tty") == (
        "unix:///d/0.ctl", {"tty_address": "unix:///d/0.tty"})
    assert hyperstart.target("vsock://3:2718") == ("vsock://3:2718", {})  # tty derived
    assert kata.target("unix:///d/0.sock") == ("unix:///d/0.sock", {})


async def test_noop_needs_no_child_counts_operations_and_verifies_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("the noop agent needs no local agent child")

    monkeypatch.setattr(agentio.demo, "local_agents", no_child)
    summary = await run_demo(_quiet(agent=AgentType.NOOP, sandboxes=6, concurrency=4))
    assert summary.ok and summary.failures == [] and summary.done == 6
    assert summary.operations == 6 * OPS_PER_SANDBOX
    assert (summary.verified, summary.bytes_verified) == (False, 0)
    assert re.search(r"^bytes verified  none: the noop agent runs nothing", summary.as_text(),
                     re.M)
    assert summary.as_dict()["verified"] is False


def test_noop_program_prints_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--agent", "noop", "--sandboxes", "3", "-q", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["agent"], summary["succeeded"], summary["verified"]) == ("noop", 3, False)
    assert summary["operations"] == 3 * OPS_PER_SANDBOX


def test_every_served_type_is_accepted_without_an_address() -> None:
    for kind in PROFILES:
        assert parse_args(["--agent", kind.value]).agent is kind
