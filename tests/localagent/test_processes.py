"""HostProcess against real host processes: stdio byte-exactness, signals, ptys, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agentio import errors
from agentio.localagent.processes import (
    MAX_READ,
    HostProcess,
    InvalidSpec,
    NotATerminal,
    ProcessExited,
    SpawnFailed,
    StdinClosed,
    exit_status,
)

MB = 1 << 20
PAYLOAD = bytes(range(256)) * (MB // 256)  # every byte value, 1 MiB
NEGATIVE_WAIT = 0.2  # bound for "this must not happen" checks only


async def read_all(read: Callable[[int], Awaitable[bytes]], n: int = 65536) -> bytes:
    chunks = []
    while chunk := await read(n):
        chunks.append(chunk)
    return b"".join(chunks)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def stat_fields(pid: int) -> list[bytes]:
    """/proc/<pid>/stat fields after the command name (state first)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def our_children() -> set[int]:
    kids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            kids.update(int(p) for p in f.read().split())
    return kids


@pytest.fixture
async def procs() -> AsyncIterator[list[HostProcess]]:
    """Collects processes and kills whatever a failing test left behind."""
    spawned: list[HostProcess] = []
    yield spawned
    for proc in spawned:
        await proc.kill_and_reap()


def spawn(procs: list[HostProcess], args: list[str], **kw: object) -> HostProcess:
    proc = HostProcess.spawn(args, **kw)  # type: ignore[arg-type]
    procs.append(proc)
    return proc


# --- output -------------------------------------------------------------------------------


async def test_binary_megabyte_is_byte_exact(procs: list[HostProcess], tmp_path: Path) -> None:
    src = tmp_path / "payload"
    src.write_bytes(PAYLOAD)
    proc = spawn(procs, ["cat", str(src)])
    assert await read_all(proc.read_stdout) == PAYLOAD
    assert await proc.wait() == 0


async def test_stdout_and_stderr_are_separate(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["sh", "-c", "printf 'out\\000put'; printf 'err' >&2; exit 7"])
    out, err = await asyncio.gather(read_all(proc.read_stdout), read_all(proc.read_stderr))
    assert (out, err) == (b"out\x00put", b"err")
    assert await proc.wait() == 7
    assert proc.returncode == 7


async def test_read_returns_one_read_not_n_bytes(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["cat"])
    await proc.write_stdin(b"abc")
    # cat echoes 3 bytes; asking for far more must not wait for them.
    assert await proc.read_stdout(MB) == b"abc"


async def test_reading_after_eof_keeps_returning_empty(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["true"])
    assert await read_all(proc.read_stdout) == b""
    assert await proc.read_stdout(10) == b""
    assert await proc.read_stderr(10) == b""
    assert await proc.read_stderr(10) == b""
    assert proc.output_drained


async def test_concurrent_readers_do_not_reorder(procs: list[HostProcess], tmp_path: Path) -> None:
    src = tmp_path / "payload"
    src.write_bytes(PAYLOAD)
    proc = spawn(procs, ["cat", str(src)])
    got: list[bytes] = []

    async def reader() -> None:
        while chunk := await proc.read_stdout(1000):
            got.append(chunk)  # same task step as the read's return: the order is the read order

    await asyncio.gather(*(reader() for _ in range(8)))
    assert b"".join(got) == PAYLOAD


async def test_nothing_is_read_until_asked(procs: list[HostProcess]) -> None:
    # The child fills stdout before writing stderr: if we buffered stdout ourselves, stderr would
    # arrive without anyone reading stdout.
    proc = spawn(procs, ["sh", "-c", "head -c 1048576 /dev/zero; echo done >&2"])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(proc.read_stderr(100), NEGATIVE_WAIT)
    assert await read_all(proc.read_stdout) == bytes(MB)
    assert await proc.read_stderr(100) == b"done\n"


async def test_read_length_is_validated_and_capped(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["head", "-c", str(4 * MB), "/dev/zero"])
    with pytest.raises(errors.ConfigError):
        await proc.read_stdout(0)
    assert len(await proc.read_stdout(1 << 40)) <= MAX_READ
    assert len(await read_all(proc.read_stdout)) > 0


async def test_cancelled_read_loses_no_data(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["cat"])
    pending = asyncio.create_task(proc.read_stdout(100))
    await asyncio.sleep(0)  # let it park on the fd
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await proc.write_stdin(b"kept")
    assert await proc.read_stdout(100) == b"kept"


# --- stdin --------------------------------------------------------------------------------


async def test_stdin_round_trip_megabyte_concurrent(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["cat"])

    async def writer() -> None:
        for i in range(0, len(PAYLOAD), 100_000):
            assert await proc.write_stdin(PAYLOAD[i : i + 100_000]) == len(PAYLOAD[i : i + 100_000])
        proc.close_stdin()

    _, echoed = await asyncio.gather(writer(), read_all(proc.read_stdout))
    assert echoed == PAYLOAD
    assert await proc.wait() == 0


async def test_zero_length_write_closes_stdin(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["cat"])
    assert await proc.write_stdin(b"abc") == 3
    assert await proc.write_stdin(b"") == 0
    assert proc.stdin_closed
    assert await read_all(proc.read_stdout) == b"abc"
    assert await proc.wait() == 0
    with pytest.raises(StdinClosed):
        await proc.write_stdin(b"more")


async def test_write_after_child_closed_stdin(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["sh", "-c", "exec 0<&-; echo closed"])
    assert await proc.read_stdout(100) == b"closed\n"
    await proc.wait()
    with pytest.raises(StdinClosed):
        await proc.write_stdin(b"x" * MB)


# --- exit and signals ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 42, 255])
async def test_exit_codes(procs: list[HostProcess], code: int) -> None:
    proc = spawn(procs, ["sh", "-c", f"exit {code}"])
    assert await proc.wait() == code


def test_exit_status_mapping() -> None:
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGKILL) == 137


async def test_signal_reaches_the_whole_group(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["sh", "-c", "sleep 1000 & echo $!; wait"])
    line = await proc.read_stdout(100)
    assert int(line)  # the background child's pid
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 128 + signal.SIGTERM
    # EOF means the background sleep, which held stdout too, is dead as well.
    assert await read_all(proc.read_stdout) == b""


async def test_signal_after_exit_is_typed(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["true"])
    await proc.wait()
    with pytest.raises(ProcessExited):
        proc.signal(signal.SIGTERM)
    with pytest.raises(ProcessLookupError):
        proc.signal(signal.SIGTERM)


async def test_concurrent_waiters_and_cancelled_waiter(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["cat"])
    cancelled = asyncio.create_task(proc.wait())
    others = [asyncio.create_task(proc.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    cancelled.cancel()
    proc.close_stdin()
    assert await asyncio.gather(*others) == [0, 0, 0]
    assert cancelled.cancelled()


# --- spawn failures -----------------------------------------------------------------------


async def test_missing_binary_carries_os_message() -> None:
    with pytest.raises(SpawnFailed, match="No such file or directory") as info:
        HostProcess.spawn(["/nonexistent/agentio-binary"])
    assert info.value.errno == 2


async def test_bad_cwd_carries_os_message(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(SpawnFailed, match="No such file or directory"):
        HostProcess.spawn(["true"], cwd=str(tmp_path / "missing"))
    with pytest.raises(SpawnFailed):
        HostProcess.spawn(["true"], cwd=str(tmp_path / "missing"), terminal=True)
    assert open_fds() == before


@pytest.mark.parametrize(
    ("args", "env"),
    [([], []), ([""], []), (["a\0b"], []), (["true"], ["NOEQUALS"]), (["true"], ["=v"])],
)
async def test_invalid_specs(args: list[str], env: list[str]) -> None:
    with pytest.raises(InvalidSpec):
        HostProcess.spawn(args, env=env)


async def test_env_and_cwd_are_applied(procs: list[HostProcess], tmp_path: Path) -> None:
    proc = spawn(procs, ["sh", "-c", 'echo "$FOO|$(pwd)"'], env=["FOO=a=b"], cwd=str(tmp_path))
    assert await read_all(proc.read_stdout) == f"a=b|{tmp_path}\n".encode()


# --- terminals ----------------------------------------------------------------------------


async def test_pty_initial_size_and_merged_stderr(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["sh", "-c", "stty size; echo e >&2"], terminal=True, window=(33, 77))
    assert await read_all(proc.read_stdout) == b"33 77\r\ne\r\n"
    assert await proc.read_stderr(10) == b""
    assert await proc.wait() == 0


async def test_pty_resize(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["sh", "-c", "read x; stty size"], terminal=True, window=(24, 80))
    proc.resize(40, 100)
    await proc.write_stdin(b"go\n")
    out = await read_all(proc.read_stdout)
    assert out.endswith(b"40 100\r\n")
    assert await proc.wait() == 0


async def test_pty_is_the_controlling_terminal(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["cat"], terminal=True)
    fields = stat_fields(proc.pid)
    pgrp, session, tty_nr = int(fields[2]), int(fields[3]), int(fields[4])
    assert pgrp == session == proc.pid
    assert tty_nr != 0


async def test_pty_close_stdin_ends_input(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["cat"], terminal=True)
    await proc.write_stdin(b"hi\n")
    proc.close_stdin()
    assert b"hi\r\n" in await read_all(proc.read_stdout)
    assert await proc.wait() == 0


async def test_resize_without_terminal(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["true"])
    with pytest.raises(NotATerminal):
        proc.resize(10, 10)


# --- cleanup ------------------------------------------------------------------------------


async def test_kill_and_reap_leaks_nothing() -> None:
    before_fds, before_kids = open_fds(), our_children()
    for terminal in (False, True):
        proc = HostProcess.spawn(["sh", "-c", "sleep 1000 & cat"], terminal=terminal)
        parked = asyncio.create_task(proc.read_stdout(10))
        await asyncio.sleep(0)
        assert await proc.kill_and_reap() == 128 + signal.SIGKILL
        assert await parked == b""  # a parked reader is woken, not left hanging
        assert await proc.read_stdout(10) == b""
        with pytest.raises(StdinClosed):
            await proc.write_stdin(b"x")
    assert open_fds() == before_fds
    assert our_children() == before_kids


async def test_release_lets_a_read_in_flight_finish(procs: list[HostProcess]) -> None:
    proc = spawn(procs, ["sh", "-c", "read x; echo late"])
    parked = asyncio.create_task(proc.read_stdout(100))
    await asyncio.sleep(0)
    await proc.write_stdin(b"go\n")
    proc.release()
    assert await parked == b"late\n"
    assert await proc.read_stdout(100) == b""  # the fd was given back after that read
    assert await proc.wait() == 0
