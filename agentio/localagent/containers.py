"""Sandbox and container bookkeeping for the local agent, kept the way a real Kata agent keeps it.

Layer: local agent. Pure asyncio over :mod:`agentio.localagent.processes`; no protocol here.

A :class:`LocalSandbox` holds :class:`LocalContainer` objects by id; a container holds its OCI
spec (a plain dict), its state, its init process (exec id ``""`` or the container id) and its
exec'd processes by exec id. Every process runs in its own process group; the container
remembers those groups (also of forgotten processes, while they have members) so pause,
resume, stats, signal-all and remove reach background children too.

Engine errors and the wire status a service should answer (real Rust agent in quotes):

========================  ==========================================================
``InvalidId``             INVALID_ARGUMENT
``UnknownContainer``      INVALID_ARGUMENT "InvalidContainerId" (Wait/Signal/stdio);
                          INTERNAL "Invalid container id" (ExecProcess);
                          INVALID_ARGUMENT ``"invalid container id"`` (StatsContainer)
``UnknownProcess``        NOT_FOUND "InvalidExecId"
``ContainerExists``       ALREADY_EXISTS
``ProcessExists``         ALREADY_EXISTS
``InvalidState``          FAILED_PRECONDITION
``InvalidSpec``           INVALID_ARGUMENT
``SpawnFailed``           INTERNAL "Could not run process: <OS message>"
``ProcessExited``         INTERNAL (the agent reports ESRCH)
``StdinClosed``           INTERNAL
``NotATerminal``          INTERNAL
========================  ==========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shutil
import signal as signal_mod
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from agentio import errors
from agentio.localagent.processes import EngineError, HostProcess, InvalidSpec

__all__ = [
    "ContainerExists",
    "ContainerState",
    "ContainerStats",
    "GuestInfo",
    "InvalidId",
    "InvalidState",
    "LocalContainer",
    "LocalSandbox",
    "ProcessExists",
    "ProcessSpec",
    "UnknownContainer",
    "UnknownProcess",
]

logger = logging.getLogger(__name__)

#: Longest container / exec id accepted (Kata ids are 64 hex digits).
MAX_ID_LENGTH = 256
#: How long pause() waits for every process to show as stopped in /proc.
STOP_TIMEOUT = 5.0


# --- errors -------------------------------------------------------------------------------


class InvalidId(EngineError, ValueError):
    """A container or exec id is empty, too long or contains NUL."""


class UnknownContainer(EngineError, LookupError):
    """No container has this id in the sandbox."""


class UnknownProcess(EngineError, LookupError):
    """The container has no (more) process with this exec id."""


class ContainerExists(EngineError):
    """A container with this id already exists."""


class ProcessExists(EngineError):
    """A process with this exec id already exists in the container."""


class InvalidState(EngineError):
    """The operation does not fit the container's state (e.g. start twice, exec when stopped)."""


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidId(f"{what} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{what} longer than {MAX_ID_LENGTH} characters")
    if "\0" in value:
        raise InvalidId(f"{what} contains a NUL character")
    return value


# --- values -------------------------------------------------------------------------------


class ContainerState(enum.StrEnum):
    """The states a Kata agent reports for a container."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ProcessSpec:
    """What the engine needs of an OCI / Kata ``Process``: argv, env, cwd, terminal."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = ""
    terminal: bool = False
    #: Initial (rows, cols) of the pty, from ``consoleSize`` {height, width}.
    console_size: tuple[int, int] | None = None

    @classmethod
    def from_oci(cls, process: Mapping[str, Any]) -> ProcessSpec:
        """Read an OCI ``process`` object; key spelling is free (``consoleSize``,
        ``console_size``, ``ConsoleSize``). Unknown keys (user, rlimits, ...) are ignored.
        """
        fields = _normalised(process, "process")
        args = _str_list(fields.get("args"), "process.args")
        env = _str_list(fields.get("env"), "process.env")
        cwd = fields.get("cwd") or ""
        if not isinstance(cwd, str):
            raise InvalidSpec("process.cwd must be a string")
        return cls(
            args=tuple(args),
            env=tuple(env),
            cwd=cwd,
            terminal=bool(fields.get("terminal", False)),
            console_size=_console_size(fields.get("consolesize")),
        )


def _normalised(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidSpec(f"{what} must be an object")
    return {str(k).replace("_", "").lower(): v for k, v in obj.items()}


def _str_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise InvalidSpec(f"{what} must be a list of strings")
    if not all(isinstance(item, str) for item in value):
        raise InvalidSpec(f"{what} must be a list of strings")
    return list(value)


def _console_size(value: object) -> tuple[int, int] | None:
    if not value:
        return None
    size = _normalised(value, "process.consoleSize")
    rows, cols = size.get("height", 0), size.get("width", 0)
    if not (isinstance(rows, int) and isinstance(cols, int)) or rows <= 0 or cols <= 0:
        return None  # the agent ignores a zero / absent size
    return rows, cols


@dataclass(frozen=True)
class ContainerStats:
    """Resource use of a container's live processes, read from /proc."""

    #: CPU time in ns (user + system, including reaped children of those processes).
    cpu_ns: int
    user_ns: int
    system_ns: int
    #: Resident set size, summed over processes (shared pages counted once per process).
    rss_bytes: int
    #: Number of live (non-zombie) processes.
    pids: int


@dataclass(frozen=True)
class GuestInfo:
    """What the "guest" (here the host) reports about itself."""

    online_cpus: int
    mem_total_bytes: int
    mem_available_bytes: int
    #: Memory hotplug block size (0 when the kernel does not expose it).
    mem_block_size_bytes: int


# --- /proc --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProcStat:
    pid: int
    state: str
    pgrp: int
    user_ticks: int
    system_ticks: int
    rss_pages: int


def _read_stat(pid: int) -> _ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None  # gone between listing and reading
    # comm may contain spaces and parentheses: the fields start after the last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        utime, stime, cutime, cstime = (int(rest[i]) for i in (11, 12, 13, 14))
        return _ProcStat(
            pid=pid,
            state=rest[0].decode("ascii", "replace"),
            pgrp=int(rest[2]),
            user_ticks=utime + cutime,
            system_ticks=stime + cstime,
            rss_pages=int(rest[21]),
        )
    except (IndexError, ValueError):
        return None


def _members(groups: set[int]) -> Iterator[_ProcStat]:
    """Every process in /proc whose process group is one of ``groups``."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _read_stat(int(name))
            if stat is not None and stat.pgrp in groups:
                yield stat


def _is_dead(stat: _ProcStat) -> bool:
    return stat.state in ("Z", "X")


def _is_stopped(stat: _ProcStat) -> bool:
    # "D" counts: a process in uninterruptible sleep runs no user code, and the SIGSTOP we sent
    # is pending, so it stops before its next instruction. A shell that vforked a child we
    # stopped before its exec stays in D until that child runs again, so waiting for T would
    # time out.
    return stat.state in ("T", "t", "D") or _is_dead(stat)


def _meminfo() -> dict[str, int]:
    info: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                info[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return info


def _mem_block_size() -> int:
    try:
        with open("/sys/devices/system/memory/block_size_bytes") as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return 0


# --- container ----------------------------------------------------------------------------


class LocalContainer:
    """One container: its spec, state, init process and exec'd processes.

    The init is registered under the container id and is also found with exec id ``""``.
    """

    def __init__(
        self, container_id: str, spec: Mapping[str, Any], *, workdir_root: str | None = None
    ) -> None:
        self.id = container_id
        self.spec: dict[str, Any] = dict(spec)
        raw_process = _normalised(self.spec, "spec").get("process")
        self._init_spec = ProcessSpec.from_oci(raw_process) if raw_process is not None else None
        self._processes: dict[str, HostProcess] = {}
        self._groups: set[int] = set()  # process groups ever spawned that may still have members
        self._init: HostProcess | None = None
        self._paused = False
        self._removed = False
        self._own_workdir: str | None = None
        self.workdir = self._make_workdir(workdir_root)

    def _make_workdir(self, root: str | None) -> str:
        cwd = self._init_spec.cwd if self._init_spec else ""
        if cwd and os.path.isdir(cwd):
            return cwd
        self._own_workdir = tempfile.mkdtemp(prefix="agentio-ctr-", dir=root)
        return self._own_workdir

    # -- state --

    @property
    def state(self) -> ContainerState:
        """created → running (start) ⇄ paused; stopped once the init has exited."""
        if self._init is None:
            return ContainerState.CREATED
        if self._paused:
            return ContainerState.PAUSED
        if self._init.returncode is not None or self._removed:
            return ContainerState.STOPPED
        return ContainerState.RUNNING

    @property
    def init(self) -> HostProcess | None:
        """The init process once started (kept for its status even after it is forgotten)."""
        return self._init

    @property
    def exec_ids(self) -> list[str]:
        """Exec ids of the processes currently known (the init under the container id)."""
        return list(self._processes)

    def _require(self, *states: ContainerState) -> None:
        if self._removed:
            raise InvalidState(f"container {self.id} was removed")
        if self.state not in states:
            raise InvalidState(f"container {self.id} is {self.state}")

    # -- processes --

    def start(self) -> HostProcess:
        """Spawn the init process from the spec's ``process`` (StartContainer)."""
        self._require(ContainerState.CREATED)
        if self._init_spec is None:
            raise InvalidSpec(f"container {self.id} has no process in its spec")
        self._init = self._spawn(self.id, self._init_spec)
        return self._init

    def exec_process(self, exec_id: str, spec: ProcessSpec | Mapping[str, Any]) -> HostProcess:
        """Spawn an extra process under ``exec_id`` (ExecProcess)."""
        _check_id(exec_id, "exec id")
        self._require(ContainerState.CREATED, ContainerState.RUNNING)
        if isinstance(spec, Mapping):
            spec = ProcessSpec.from_oci(spec)
        return self._spawn(exec_id, spec)

    def _spawn(self, exec_id: str, spec: ProcessSpec) -> HostProcess:
        if exec_id in self._processes:
            raise ProcessExists(f"exec id {exec_id!r} already exists in container {self.id}")
        cwd = spec.cwd if spec.cwd and os.path.isdir(spec.cwd) else self.workdir
        proc = HostProcess.spawn(
            spec.args, env=spec.env, cwd=cwd, terminal=spec.terminal, window=spec.console_size
        )
        self._processes[exec_id] = proc
        self._groups.add(proc.pid)
        return proc

    def process(self, exec_id: str = "") -> HostProcess:
        """The process with ``exec_id`` (``""`` = init). :class:`UnknownProcess` if none."""
        proc = self._processes.get(exec_id or self.id)
        if proc is None:
            raise UnknownProcess(f"no process {exec_id!r} in container {self.id}")
        return proc

    def forget(self, exec_id: str = "") -> None:
        """Drop a process (after WaitProcess): new lookups fail, reads in flight complete."""
        proc = self.process(exec_id)
        del self._processes[exec_id or self.id]
        proc.release()

    async def wait_and_forget(self, exec_id: str, drain_timeout: float) -> int:
        """WaitProcess: wait for exit, let readers drain the output (bounded), then forget.

        A background child holding stdout open makes the drain time out; the process is
        forgotten anyway. Cancelling the call leaves the process registered.
        """
        proc = self.process(exec_id)
        status = await proc.wait()
        try:
            async with asyncio.timeout(drain_timeout):
                await proc.wait_drained()
        except TimeoutError:
            logger.debug("container %s exec %r: output not drained in time", self.id, exec_id)
        if self._processes.get(exec_id or self.id) is proc:  # another waiter may have won
            self.forget(exec_id)
        return status

    def signal(self, exec_id: str, sig: int) -> None:
        """Signal one process's group, or with ``exec_id == ""`` every process of the container.

        The all-processes form is a no-op when nothing is left alive.
        """
        if exec_id:
            self.process(exec_id).signal(sig)
            return
        self._signal_groups(sig)

    # -- whole container --

    async def pause(self, stop_timeout: float = STOP_TIMEOUT) -> None:
        """SIGSTOP every process group; return once /proc shows them all stopped.

        The state is paused as soon as the signals are sent; :class:`errors.AgentTimeout`
        if some process (e.g. in uninterruptible sleep) has not stopped within the bound.
        """
        self._require(ContainerState.RUNNING)
        self._paused = True
        self._signal_groups(signal_mod.SIGSTOP)
        try:
            async with asyncio.timeout(stop_timeout):
                await self._poll_members(_is_stopped)
        except TimeoutError as exc:
            raise errors.AgentTimeout(f"container {self.id}: processes did not stop") from exc

    async def resume(self) -> None:
        """SIGCONT every process group (ResumeContainer)."""
        self._require(ContainerState.PAUSED)
        self._paused = False
        self._signal_groups(signal_mod.SIGCONT)

    def _signal_groups(self, sig: int) -> None:
        for group in self._live_groups():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)

    def _live_groups(self) -> set[int]:
        """Groups that still have members; the others are dropped so ids are never reused."""
        members = list(_members(self._groups))
        # A group whose leader we have not reaped is still reserved, zombie or not.
        self._groups = {s.pgrp for s in members}
        return {s.pgrp for s in members if not _is_dead(s)}

    def pids(self) -> list[int]:
        """Pids of every live process of the container, background children included."""
        return sorted(s.pid for s in _members(self._groups) if not _is_dead(s))

    def stats(self) -> ContainerStats:
        """CPU time, RSS and process count of the container's live processes."""
        live = [s for s in _members(self._groups) if not _is_dead(s)]
        tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        user = sum(s.user_ticks for s in live) * tick_ns
        system = sum(s.system_ticks for s in live) * tick_ns
        rss = sum(s.rss_pages for s in live) * os.sysconf("SC_PAGE_SIZE")
        return ContainerStats(
            cpu_ns=user + system, user_ns=user, system_ns=system, rss_bytes=rss, pids=len(live)
        )

    async def remove(self, reap_timeout: float = 5.0) -> None:
        """SIGKILL everything, reap our children, close every fd, delete the private workdir."""
        self._removed = True
        self._paused = False
        self._signal_groups(signal_mod.SIGKILL)
        procs = list(self._processes.values())
        self._processes.clear()
        try:
            reaped = await asyncio.gather(
                *(p.kill_and_reap(reap_timeout) for p in procs), return_exceptions=True
            )
            results: list[object] = [*reaped, await self._until_dead(reap_timeout)]
        finally:
            if self._own_workdir is not None:
                shutil.rmtree(self._own_workdir, ignore_errors=True)
                self._own_workdir = None
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _until_dead(self, reap_timeout: float) -> errors.AgentTimeout | None:
        # Background children are not ours to reap: watch /proc until they are zombies or gone.
        try:
            async with asyncio.timeout(reap_timeout):
                await self._poll_members(_is_dead)
        except TimeoutError:
            return errors.AgentTimeout(f"container {self.id}: processes survived SIGKILL")
        return None

    async def _poll_members(self, done: Callable[[_ProcStat], bool]) -> None:
        delay = 0.0005
        # The kernel offers no event for "stopped" or "dead" on processes that are not our
        # children, so poll with a growing interval (callers bound the total).
        while not all(done(s) for s in _members(self._groups)):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


# --- sandbox ------------------------------------------------------------------------------


class LocalSandbox:
    """The sandbox a local agent serves: hostname, containers, guest details."""

    def __init__(
        self, sandbox_id: str, *, hostname: str = "", workdir_root: str | None = None
    ) -> None:
        self.id = _check_id(sandbox_id, "sandbox id")
        self.hostname = hostname
        self._workdir_root = workdir_root
        self._containers: dict[str, LocalContainer] = {}

    @property
    def containers(self) -> Mapping[str, LocalContainer]:
        """Read-only view of the containers by id."""
        return MappingProxyType(self._containers)

    def create_container(self, container_id: str, spec: Mapping[str, Any]) -> LocalContainer:
        """Register a container (CreateContainer); nothing runs before `LocalContainer.start`."""
        _check_id(container_id, "container id")
        if container_id in self._containers:
            raise ContainerExists(f"container {container_id} already exists")
        container = LocalContainer(container_id, spec, workdir_root=self._workdir_root)
        self._containers[container_id] = container
        return container

    def container(self, container_id: str) -> LocalContainer:
        """The container with this id, or :class:`UnknownContainer`."""
        container = self._containers.get(container_id)
        if container is None:
            raise UnknownContainer(f"no container {container_id!r}")
        return container

    async def remove_container(self, container_id: str, reap_timeout: float = 5.0) -> None:
        """Kill and forget a container (RemoveContainer)."""
        container = self.container(container_id)
        del self._containers[container_id]
        await container.remove(reap_timeout)

    async def destroy(self, reap_timeout: float = 5.0) -> None:
        """Remove every container (DestroySandbox); the first failure is raised at the end."""
        containers = list(self._containers.values())
        self._containers.clear()
        results = await asyncio.gather(
            *(c.remove(reap_timeout) for c in containers), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def guest_info(self) -> GuestInfo:
        """Online CPUs and memory counters, as the agent's guest details report them."""
        mem = _meminfo()
        return GuestInfo(
            online_cpus=len(os.sched_getaffinity(0)),
            mem_total_bytes=mem.get("MemTotal", 0),
            mem_available_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)),
            mem_block_size_bytes=_mem_block_size(),
        )
