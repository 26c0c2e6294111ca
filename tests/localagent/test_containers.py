"""LocalSandbox / LocalContainer bookkeeping over real host processes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentio.localagent.containers import (
    ContainerExists,
    ContainerState,
    InvalidId,
    InvalidState,
    LocalSandbox,
    ProcessExists,
    ProcessSpec,
    UnknownContainer,
    UnknownProcess,
)
from agentio.localagent.processes import InvalidSpec, ProcessExited, SpawnFailed

NEGATIVE_WAIT = 0.2  # bound for "this must not happen" checks only


async def read_all(read: Callable[[int], Awaitable[bytes]]) -> bytes:
    chunks = []
    while chunk := await read(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def our_children() -> set[int]:
    kids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            kids.update(int(p) for p in f.read().split())
    return kids


def proc_state(pid: int) -> str | None:
    """State letter from /proc/<pid>/stat, None once the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def spec(args: list[str], **process: Any) -> dict[str, Any]:
    process = {"args": args, "env": ["PATH=/usr/bin:/bin"], **process}
    return {"ociVersion": "1.0.2", "process": process}


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    sb = LocalSandbox("sb-1", hostname="host-1", workdir_root=str(tmp_path))
    yield sb
    await sb.destroy()


# --- registry and ids ---------------------------------------------------------------------


async def test_lookup_errors_and_ids(sandbox: LocalSandbox) -> None:
    ctr = sandbox.create_container("c1", spec(["cat"]))
    assert sandbox.containers["c1"] is ctr
    with pytest.raises(ContainerExists):
        sandbox.create_container("c1", spec(["cat"]))
    with pytest.raises(UnknownContainer):
        sandbox.container("nope")
    for bad in ["", "a\0b", "x" * 257]:
        with pytest.raises(InvalidId):
            sandbox.create_container(bad, spec(["cat"]))
        with pytest.raises(InvalidId):
            ctr.exec_process(bad, {"args": ["true"]})
    with pytest.raises(UnknownProcess):
        ctr.process("")  # not started: no init yet


async def test_start_registers_init_under_empty_and_container_id(sandbox: LocalSandbox) -> None:
    ctr = sandbox.create_container("c1", spec(["cat"]))
    assert ctr.state is ContainerState.CREATED
    init = ctr.start()
    assert ctr.state is ContainerState.RUNNING
    assert ctr.process("") is init is ctr.process("c1") is ctr.init
    with pytest.raises(InvalidState):
        ctr.start()
    exec_proc = ctr.exec_process("e1", {"args": ["cat"]})
    assert ctr.process("e1") is exec_proc
    assert sorted(ctr.exec_ids) == ["c1", "e1"]
    with pytest.raises(ProcessExists):
        ctr.exec_process("e1", {"args": ["true"]})
    with pytest.raises(ProcessExists):
        ctr.exec_process("c1", {"args": ["true"]})
    init.close_stdin()
    assert await init.wait() == 0
    assert ctr.state is ContainerState.STOPPED
    with pytest.raises(InvalidState):
        ctr.exec_process("e2", {"args": ["true"]})


async def test_spawn_errors_are_typed(sandbox: LocalSandbox) -> None:
    with pytest.raises(InvalidSpec):
        sandbox.create_container("bad", {"process": {"args": "not-a-list"}})
    ctr = sandbox.create_container("c1", {"ociVersion": "1.0.2"})
    with pytest.raises(InvalidSpec):
        ctr.start()  # no process in the spec
    ctr2 = sandbox.create_container("c2", spec(["/nonexistent/binary"]))
    with pytest.raises(SpawnFailed, match="No such file or directory"):
        ctr2.start()


def test_process_spec_accepts_any_key_spelling() -> None:
    camel = ProcessSpec.from_oci(
        {"args": ["sh"], "terminal": True, "consoleSize": {"height": 30, "width": 90}, "user": {}}
    )
    snake = ProcessSpec.from_oci(
        {"Args": ["sh"], "Terminal": True, "console_size": {"Height": 30, "Width": 90}}
    )
    assert camel == snake == ProcessSpec(args=("sh",), terminal=True, console_size=(30, 90))
    assert ProcessSpec.from_oci({"args": ["sh"], "consoleSize": {"height": 0}}).console_size is None
    with pytest.raises(InvalidSpec):
        ProcessSpec.from_oci({"args": ["sh"], "env": "A=B"})


# --- working directory --------------------------------------------------------------------


async def test_cwd_from_spec_when_it_exists(sandbox: LocalSandbox, tmp_path: Path) -> None:
    ctr = sandbox.create_container("c1", spec(["pwd"], cwd=str(tmp_path)))
    assert ctr.workdir == str(tmp_path)
    assert await read_all(ctr.start().read_stdout) == f"{tmp_path}\n".encode()


async def test_private_workdir_when_cwd_is_missing(sandbox: LocalSandbox) -> None:
    # The init process stays up (exec cat) so the container is still running for the exec.
    ctr = sandbox.create_container(
        "c1", spec(["sh", "-c", "pwd; exec cat"], cwd="/no/such/dir/in/host"))
    workdir = ctr.workdir
    assert Path(workdir).is_dir()  # noqa: ASYNC240 - a local stat in a test
    expected = f"{workdir}\n".encode()
    init, seen = ctr.start(), b""
    while len(seen) < len(expected) and (chunk := await init.read_stdout(65536)):
        seen += chunk
    assert seen == expected
    # An exec'd process with a missing cwd lands there too.
    other = ctr.exec_process("e1", {"args": ["pwd"], "cwd": "/also/missing"})
    assert await read_all(other.read_stdout) == f"{workdir}\n".encode()
    await sandbox.remove_container("c1")
    assert not Path(workdir).exists()  # noqa: ASYNC240


# --- wait and forget ----------------------------------------------------------------------


async def test_wait_and_forget_waits_for_unread_output(sandbox: LocalSandbox) -> None:
    ctr = sandbox.create_container("c1", spec(["cat"]))
    ctr.start()
    proc = ctr.exec_process("e1", {"args": ["sh", "-c", "printf data; printf more >&2; exit 5"]})
    waiting = asyncio.create_task(ctr.wait_and_forget("e1", drain_timeout=30))
    assert await proc.wait() == 5
    await asyncio.sleep(0)
    assert not waiting.done()  # exited, but its output is still unread
    assert ctr.process("e1") is proc  # still reachable by readers
    assert await read_all(ctr.process("e1").read_stdout) == b"data"
    assert await read_all(ctr.process("e1").read_stderr) == b"more"
    assert await waiting == 5
    with pytest.raises(UnknownProcess):
        ctr.process("e1")


async def test_wait_and_forget_bounded_by_background_child(sandbox: LocalSandbox) -> None:
    ctr = sandbox.create_container("c1", spec(["cat"]))
    ctr.start()
    proc = ctr.exec_process("e1", {"args": ["sh", "-c", "sleep 1000 & echo $!"]})
    sleeper = int(await proc.read_stdout(100))
    in_flight = asyncio.create_task(proc.read_stdout(100))  # held open by the sleeper
    assert await ctr.wait_and_forget("e1", drain_timeout=NEGATIVE_WAIT) == 0
    with pytest.raises(UnknownProcess):
        ctr.process("e1")
    assert not in_flight.done()
    assert sleeper in ctr.pids()  # the forgotten process's child still belongs to the container
    await sandbox.remove_container("c1")
    assert await in_flight == b""  # the read in flight completes normally: end of stream
    assert not alive(sleeper)


async def test_exec_id_is_reusable_after_forget(sandbox: LocalSandbox) -> None:
    ctr = sandbox.create_container("c1", spec(["cat"]))
    ctr.start()
    first = ctr.exec_process("e1", {"args": ["true"]})
    await read_all(first.read_stdout)
    await read_all(first.read_stderr)
    assert await ctr.wait_and_forget("e1", drain_timeout=5) == 0
    second = ctr.exec_process("e1", {"args": ["sh", "-c", "exit 3"]})
    assert second is not first
    assert await second.wait() == 3
    ctr.forget("e1")
    with pytest.raises(UnknownProcess):
        ctr.forget("e1")


# --- signals, pause, stats ----------------------------------------------------------------


async def test_signal_empty_exec_id_reaches_every_process(sandbox: LocalSandbox) -> None:
    ctr = sandbox.create_container("c1", spec(["cat"]))
    init = ctr.start()
    other = ctr.exec_process("e1", {"args": ["cat"]})
    ctr.signal("", signal.SIGTERM)
    assert await init.wait() == 128 + signal.SIGTERM
    assert await other.wait() == 128 + signal.SIGTERM
    with pytest.raises(ProcessExited):
        ctr.signal("e1", signal.SIGTERM)
    with pytest.raises(UnknownProcess):
        ctr.signal("nope", signal.SIGTERM)
    ctr.signal("", signal.SIGTERM)  # nothing left alive: a no-op


async def test_signal_one_exec(sandbox: LocalSandbox) -> None:
    ctr = sandbox.create_container("c1", spec(["cat"]))
    init = ctr.start()
    other = ctr.exec_process("e1", {"args": ["cat"]})
    ctr.signal("e1", signal.SIGKILL)
    assert await other.wait() == 137
    assert init.returncode is None
    assert ctr.state is ContainerState.RUNNING


async def test_pause_stops_progress_and_resume_restores_it(sandbox: LocalSandbox) -> None:
    ctr = sandbox.create_container("c1", spec(["cat"]))
    init = ctr.start()
    await ctr.pause()
    assert ctr.state is ContainerState.PAUSED
    assert proc_state(init.pid) == "T"
    with pytest.raises(InvalidState):
        await ctr.pause()
    await init.write_stdin(b"x\n")
    with pytest.raises(TimeoutError):  # a stopped cat cannot echo
        await asyncio.wait_for(init.read_stdout(10), NEGATIVE_WAIT)
    await ctr.resume()
    assert ctr.state is ContainerState.RUNNING
    assert await init.read_stdout(10) == b"x\n"
    assert proc_state(init.pid) != "T"
    with pytest.raises(InvalidState):
        await ctr.resume()


async def test_pids_and_stats_are_real(sandbox: LocalSandbox) -> None:
    # `exec cat`: no fork after the echo, so the process set is stable while we look.
    burn = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 1000 & echo $!; exec cat"
    ctr = sandbox.create_container("c1", spec(["sh", "-c", burn]))
    init = ctr.start()
    sleeper = int(await init.read_stdout(100))
    assert set(ctr.pids()) >= {init.pid, sleeper}
    stats = ctr.stats()
    assert stats.pids == len(ctr.pids()) == 2  # cat (the shell it became) and sleep
    assert stats.cpu_ns == stats.user_ns + stats.system_ns
    assert stats.cpu_ns >= 10_000_000  # the shell loop burnt at least one clock tick
    assert 100 * 1024 < stats.rss_bytes < 1 << 32


async def test_remove_kills_everything_and_leaks_nothing(tmp_path: Path) -> None:
    before_fds, before_kids = open_fds(), our_children()
    sandbox = LocalSandbox("sb-2", workdir_root=str(tmp_path))
    ctr = sandbox.create_container("c1", spec(["sh", "-c", "sleep 1000 & echo $!; cat"]))
    init = ctr.start()
    script = "sleep 1000 & echo $!; cat"
    tty = ctr.exec_process("e1", {"args": ["sh", "-c", script], "terminal": True})
    bg = [int(await init.read_stdout(100)), int((await tty.read_stdout(100)).strip())]
    await ctr.pause()  # removal must work on a paused container too
    pids = ctr.pids()
    assert set(bg) <= set(pids)
    await sandbox.remove_container("c1")
    with pytest.raises(UnknownContainer):
        sandbox.container("c1")
    assert not any(alive(pid) for pid in pids)
    assert init.returncode == tty.returncode == 137
    assert open_fds() == before_fds
    assert our_children() == before_kids
    await sandbox.destroy()


async def test_destroy_removes_every_container(tmp_path: Path) -> None:
    sandbox = LocalSandbox("sb-3", workdir_root=str(tmp_path))
    procs = [sandbox.create_container(f"c{i}", spec(["cat"])).start() for i in range(3)]
    await sandbox.destroy()
    assert dict(sandbox.containers) == {}
    assert [p.returncode for p in procs] == [137, 137, 137]


def test_guest_info_is_plausible() -> None:
    info = LocalSandbox("sb-4").guest_info()
    assert 1 <= info.online_cpus <= (os.cpu_count() or 1)
    assert 0 < info.mem_available_bytes <= info.mem_total_bytes
    assert info.mem_block_size_bytes >= 0
