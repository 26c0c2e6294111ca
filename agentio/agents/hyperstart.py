"""The hyperstart agent: the operation set over hyperstart's ctl and tty channels.

Layer: agents. Maps :class:`~agentio.agents.base.Agent` onto hyperstart commands through a
:class:`~agentio.protocols.hyperstart.client.HyperstartClient` (connected lazily, on the first
operation):

==========================  =================================================================
start_sandbox               STARTPOD (hostname, DNS, the configured 9p share tag)
stop_sandbox                DESTROYPOD (the guest then powers off: the connection closes)
create_container            nothing yet: hyperstart creates and starts in one command
start_container             NEWCONTAINER, the init process under the container's id
stop_container              KILLCONTAINER SIGKILL, wait for the init, REMOVECONTAINER
exec_process                EXECCMD with fresh tty seqs (every process gets an id)
signal_process              SIGNALPROCESS (KILLCONTAINER for all processes)
resize_tty                  WINSIZE
write_stdin / close_stdin   tty frames of at most 512 bytes / a zero-length frame
read_stdout / read_stderr   the tty channel, demultiplexed by seq
wait_process                PROCESSASYNCEVENT, then stdout's end (bounded)
online_cpu_mem              ONLINECPUMEM
check / version             PING / VERSION
==========================  =================================================================

Pause, resume, update, stats, OOM events, guest details, interfaces/routes listing and a
guest-wide ``copy_file`` do not exist in hyperstart and raise
:class:`~agentio.errors.UnsupportedOperation`; files go into a container with
:meth:`HyperstartAgent.write_file` / :meth:`HyperstartAgent.read_file`. hyperstart reports a
process killed by a signal with status 0, not 128+N; that status is passed on as is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal as signals
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from ..errors import AgentError, AgentTimeout, ConfigError
from ..limits import DEFAULT_LIMITS, Limits
from ..protocols.hyperstart import messages
from ..protocols.hyperstart.client import HyperstartClient, ProcessIO
from ..protocols.hyperstart.messages import Command, HyperContainer, HyperPod, HyperProcess
from .agent_type import AgentType
from .base import Agent
from .specs import (
    AgentVersion,
    ContainerStats,
    OciMapping,
    ProcessSpec,
    SandboxSpec,
    process_to_oci,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CALL_TIMEOUT = 60.0


class HyperstartAgent(Agent):
    """A hyperstart guest agent (hyper.sh / Kata 1.x with hyperstart).

    Args:
        client: both channels of the guest (connected on the first operation).
        sandbox_id: named in every error this agent raises.
        call_timeout: default deadline of ordinary commands, seconds.
        share_dir: the 9p tag sent as STARTPOD's ``shareDir`` (empty: none).
    """

    agent_type = AgentType.HYPERSTART

    def __init__(self, client: HyperstartClient, *, sandbox_id: str = "",
                 call_timeout: float = DEFAULT_CALL_TIMEOUT, share_dir: str = "",
                 limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits=limits)
        self.client = client
        self.sandbox_id = sandbox_id
        self.call_timeout = call_timeout
        self.share_dir = share_dir
        self._specs: dict[str, OciMapping] = {}
        self._connect_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<HyperstartAgent sandbox={self.sandbox_id or '?'}>"

    # -- plumbing ------------------------------------------------------------------------------

    def _bound(self, timeout: float | None, long_poll: bool = False) -> float | None:
        """The deadline of a call: the default for ordinary ones, none for long polls."""
        if timeout is None:
            return None if long_poll else self.call_timeout
        return None if math.isinf(timeout) else timeout

    async def _client(self, timeout: float | None) -> HyperstartClient:
        async with self._connect_lock:
            if not self.client.started:
                try:
                    await self.client.connect(timeout=self._bound(timeout))
                except AgentError as exc:
                    exc.add_context(sandbox=self.sandbox_id)
                    raise
        return self.client

    async def _call(self, command: Command, *, timeout: float | None,
                    container: str | None = None, exec_id: str | None = None) -> bytes:
        try:
            client = await self._client(timeout)
            return await client.call(command, timeout=self._bound(timeout))
        except AgentError as exc:
            exc.add_context(sandbox=self.sandbox_id, container=container, exec=exec_id)
            raise

    def _io(self, operation: str, container_id: str, exec_id: str) -> ProcessIO:
        try:
            return self.client.process(container_id, exec_id)
        except AgentError as exc:
            raise exc.add_context(operation=operation, sandbox=self.sandbox_id,
                                  container=container_id, exec=exec_id) from None

    # -- connection ----------------------------------------------------------------------------

    async def check(self, *, timeout: float | None = None) -> None:
        await self._call(messages.ping(), timeout=timeout)

    async def version(self, *, timeout: float | None = None) -> AgentVersion:
        await self._client(timeout)
        return AgentVersion(agent_version="hyperstart",
                            api_version=str(self.client.api_version))

    async def disconnect(self) -> None:
        self.client.close()

    # -- sandbox -------------------------------------------------------------------------------

    async def create_sandbox(self, spec: SandboxSpec, *, timeout: float | None = None) -> None:
        """Connect: wait for READY and check the API version."""
        await self._client(timeout)

    async def start_sandbox(self, spec: SandboxSpec, *, timeout: float | None = None) -> None:
        if spec.kernel_modules or spec.guest_hook_path or spec.sandbox_pidns:
            raise self._unsupported("start_sandbox with kernel modules, hooks or a shared pidns")
        pod = HyperPod(hostname=spec.hostname, share_dir=self.share_dir, dns=tuple(spec.dns))
        await self._call(messages.start_pod(pod), timeout=timeout)

    async def stop_sandbox(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        await self._call(messages.destroy_pod(), timeout=timeout)

    # -- containers ----------------------------------------------------------------------------

    async def create_container(
        self, container_id: str, spec: OciMapping, *, timeout: float | None = None
    ) -> None:
        """Check and keep the spec: hyperstart creates a container by starting its init."""
        if container_id in self._specs or self.client.find(container_id, container_id):
            raise ConfigError(f"container {container_id!r} already exists",
                              operation="create_container", sandbox=self.sandbox_id,
                              container=container_id)
        if not isinstance(spec.get("process"), Mapping):
            raise ConfigError("the spec has no process", operation="create_container",
                              sandbox=self.sandbox_id, container=container_id)
        self._specs[container_id] = spec

    async def start_container(self, container_id: str, *, timeout: float | None = None) -> None:
        spec = self._specs.get(container_id)
        if spec is None:
            raise ConfigError("no such container created", operation="start_container",
                              sandbox=self.sandbox_id, container=container_id)
        client = await self._client(timeout)
        process = spec["process"]
        terminal = bool(process.get("terminal", False))
        stdio, stderr = client.allocate_seqs(terminal=terminal)
        hyper = _hyper_process(container_id, process, stdio, stderr)
        command = messages.new_container(HyperContainer(id=container_id, image=container_id,
                                                        process=hyper))
        await self._start(command, container_id, container_id, stdio, stderr, timeout)
        del self._specs[container_id]
        await self._initial_size(container_id, container_id, process, timeout)

    async def _start(self, command: Command, container_id: str, exec_id: str, stdio: int,
                     stderr: int, timeout: float | None) -> None:
        # output may come before the ACK: collect it from the start
        io = self.client.register(container_id, exec_id, stdio, stderr)
        try:
            await self._call(command, timeout=timeout, container=container_id, exec_id=exec_id)
        except BaseException:
            self.client.unregister(io)
            raise

    async def _initial_size(self, container_id: str, exec_id: str, process: OciMapping,
                            timeout: float | None) -> None:
        size = process.get("consoleSize") if process.get("terminal") else None
        if isinstance(size, Mapping) and size.get("height") and size.get("width"):
            await self.resize_tty(container_id, exec_id, int(size["height"]),
                                  int(size["width"]), timeout=timeout)

    async def stop_container(self, container_id: str, *, timeout: float | None = None) -> None:
        if self._specs.pop(container_id, None) is not None:
            return  # never started: nothing in the guest
        init = self.client.find(container_id, container_id)
        if init is None or not init.exited:
            await self._call(messages.kill_container(container_id, signals.SIGKILL),
                             timeout=timeout, container=container_id)
        if init is not None:
            try:
                async with asyncio.timeout(self._bound(timeout)):
                    await init.wait(self.limits.drain_timeout)
            except TimeoutError:
                log.warning("container %s: init not seen to exit after SIGKILL", container_id)
            except AgentError:
                pass
        try:
            await self._call(messages.remove_container(container_id), timeout=timeout,
                             container=container_id)
        except AgentError as exc:
            if init is None or not init.exited:
                raise
            # the guest drops a container once its init has exited, then refuses the remove
            log.debug("container %s already gone: %s", container_id, exc)

    async def pause_container(self, container_id: str, *, timeout: float | None = None) -> None:
        raise self._unsupported("pause_container")

    async def resume_container(self, container_id: str, *, timeout: float | None = None) -> None:
        raise self._unsupported("resume_container")

    async def update_container(
        self, container_id: str, resources: OciMapping, *, timeout: float | None = None
    ) -> None:
        raise self._unsupported("update_container")

    async def stats_container(
        self, container_id: str, *, timeout: float | None = None
    ) -> ContainerStats:
        raise self._unsupported("stats_container")

    # -- processes -----------------------------------------------------------------------------

    async def exec_process(
        self, container_id: str, exec_id: str, process: ProcessSpec | OciMapping, *,
        timeout: float | None = None,
    ) -> None:
        client = await self._client(timeout)
        oci = process_to_oci(process)
        terminal = bool(oci.get("terminal", False))
        stdio, stderr = client.allocate_seqs(terminal=terminal)
        try:
            command = messages.exec_cmd(container_id,
                                        _hyper_process(exec_id, oci, stdio, stderr))
        except ConfigError as exc:
            raise exc.add_context(operation="exec_process", sandbox=self.sandbox_id,
                                  container=container_id, exec=exec_id) from None
        await self._start(command, container_id, exec_id, stdio, stderr, timeout)
        await self._initial_size(container_id, exec_id, oci, timeout)

    async def signal_process(
        self, container_id: str, exec_id: str, signal: int, *, all: bool = False,
        timeout: float | None = None,
    ) -> None:
        if all or not exec_id:
            command = messages.kill_container(container_id, int(signal))
        else:
            command = messages.signal_process(container_id, exec_id, int(signal))
        await self._call(command, timeout=timeout, container=container_id, exec_id=exec_id)

    async def resize_tty(
        self, container_id: str, exec_id: str, rows: int, cols: int, *,
        timeout: float | None = None,
    ) -> None:
        await self._call(messages.winsize(container_id, exec_id, rows, cols), timeout=timeout,
                         container=container_id, exec_id=exec_id)

    async def _stdio(self, operation: str, container_id: str, exec_id: str,
                     timeout: float | None, action: Callable[[ProcessIO], Awaitable[T]]) -> T:
        """One stdio long poll on a tracked process, bounded by ``timeout`` (none by default);
        every failure names the operation and ids, a timeout included."""
        io = self._io(operation, container_id, exec_id)
        bound = self._bound(timeout, long_poll=True)
        try:
            async with asyncio.timeout(bound):
                return await action(io)
        except AgentError as exc:
            raise exc.add_context(operation=operation, sandbox=self.sandbox_id,
                                  container=container_id, exec=exec_id) from None
        except TimeoutError:
            raise AgentTimeout(f"nothing within {bound:g} s", operation=operation,
                               sandbox=self.sandbox_id, container=container_id,
                               exec=exec_id) from None

    async def write_stdin(
        self, container_id: str, exec_id: str, data: bytes, *, timeout: float | None = None
    ) -> int:
        payload = bytes(data)
        return await self._stdio("write_stdin", container_id, exec_id, timeout,
                                 lambda io: self.client.write_stdin(io, payload))

    async def close_stdin(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> None:
        if self.client.recently_finished(container_id, exec_id):
            return  # it exited and was forgotten: its stdin is closed already
        await self._stdio("close_stdin", container_id, exec_id, timeout, self.client.close_stdin)

    async def read_stdout(
        self, container_id: str, exec_id: str, size: int, *, timeout: float | None = None
    ) -> bytes:
        return await self._stdio("read_stdout", container_id, exec_id, timeout,
                                 lambda io: io.read("stdout", size))

    async def read_stderr(
        self, container_id: str, exec_id: str, size: int, *, timeout: float | None = None
    ) -> bytes:
        return await self._stdio("read_stderr", container_id, exec_id, timeout,
                                 lambda io: io.read("stderr", size))

    async def wait_process(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> int:
        return await self._stdio("wait_process", container_id, exec_id, timeout,
                                 lambda io: io.wait(self.limits.drain_timeout))

    # -- guest ---------------------------------------------------------------------------------

    async def online_cpu_mem(
        self, cpus: int, *, cpu_only: bool = False, wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """ONLINECPUMEM: hyperstart brings every hot-added CPU and memory block online, and
        answers once done (``wait=False`` waits all the same). It cannot leave memory out:
        ``cpu_only`` is refused."""
        if cpu_only:
            raise self._unsupported("online_cpu_mem with cpu_only (memory comes online too)")
        await self._call(messages.online_cpu_mem(), timeout=timeout)

    async def copy_file(
        self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
        timeout: float | None = None, progress: Callable[[int, int], object] | None = None,
    ) -> None:
        """hyperstart writes files into a container only: see :meth:`write_file`."""
        raise self._unsupported("copy_file (use write_file into a container)")

    async def write_file(self, container_id: str, path: str, data: bytes, *,
                         timeout: float | None = None) -> None:
        """WRITEFILE: write ``data`` to ``path`` inside a container."""
        limit = self.limits.max_message - 1024
        if len(data) > limit:
            raise ConfigError(f"file of {len(data)} bytes exceeds {limit}",
                              operation="write_file", sandbox=self.sandbox_id,
                              container=container_id)
        await self._call(messages.write_file(container_id, path, data), timeout=timeout,
                         container=container_id)

    async def read_file(self, container_id: str, path: str, *,
                        timeout: float | None = None) -> bytes:
        """READFILE: the bytes of ``path`` inside a container."""
        return await self._call(messages.read_file(container_id, path), timeout=timeout,
                                container=container_id)


def _hyper_process(process_id: str, oci: OciMapping, stdio: int, stderr: int) -> HyperProcess:
    """An OCI ``process`` as hyperstart's process object (unknown OCI fields are not sent)."""
    envs = []
    for entry in oci.get("env") or ():
        name, sep, value = str(entry).partition("=")
        if not sep or not name:
            raise ConfigError(f"bad environment entry {entry!r}")
        envs.append((name, value))
    user = oci.get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    groups = tuple(str(g) for g in user.get("additionalGids") or ())
    return HyperProcess(
        id=process_id, args=list(oci.get("args") or ()), stdio=stdio, stderr=stderr,
        envs=envs, workdir=str(oci.get("cwd") or ""), terminal=bool(oci.get("terminal")),
        user=str(uid) if uid else "", group=str(gid) if gid else "",
        additional_groups=groups)

