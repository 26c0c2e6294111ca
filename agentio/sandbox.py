"""Sandboxes and containers: the objects users hold.

Layer: public API. A :class:`Sandbox` owns the connection to one guest agent (one VM) and
the containers created through it; a :class:`Container` starts processes
(:class:`~agentio.process.Process`). Both are async context managers that tear down what
they created. Everything here goes through :class:`~agentio.agents.base.Agent`, so it works
the same for every agent type.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .agents import AgentType, open_agent
from .agents.base import Agent
from .agents.specs import (
    DEFAULT_PATH_ENV,
    AgentVersion,
    ContainerStats,
    OciMapping,
    ProcessSpec,
    SandboxSpec,
    default_container_spec,
    is_terminal,
)
from .errors import AgentError
from .limits import DEFAULT_LIMITS, Limits
from .process import Process, close_all
from .teardown import shielded_teardown

if TYPE_CHECKING:
    from .monitor import HealthMonitor

log = logging.getLogger(__name__)

_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid():x}-{next(_ids):x}-{os.urandom(4).hex()}"


class Sandbox:
    """One sandbox (one VM's guest agent) and the containers created in it.

    Create one with :meth:`Sandbox.create` (connects and sets the sandbox up), or wrap an
    :class:`~agentio.agents.base.Agent` you built yourself.
    """

    def __init__(self, agent: Agent, spec: SandboxSpec, *, limits: Limits = DEFAULT_LIMITS):
        self.agent = agent
        self.spec = spec
        self.limits = limits
        self.containers: dict[str, Container] = {}
        self.monitor: HealthMonitor | None = None
        """The health monitor started for ``health_check_interval`` in the agent's config."""
        self._started = False
        self._destroyed = False

    @property
    def id(self) -> str:
        """The sandbox id."""
        return self.spec.sandbox_id

    def __repr__(self) -> str:
        return (f"<Sandbox {self.id} agent={self.agent.agent_type} "
                f"containers={len(self.containers)}>")

    @classmethod
    async def create(
        cls,
        address: str,
        *,
        sandbox_id: str | None = None,
        agent_type: AgentType | str = AgentType.KATA,
        hostname: str = "",
        config: Mapping[str, Any] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        timeout: float | None = None,
    ) -> Sandbox:
        """Connect to the agent at ``address`` and set a sandbox up in it.

        ``address`` is a URL (``unix:///path``, ``vsock://CID:PORT``,
        ``hvsock:///path/to/vmm.sock:PORT``; hyperstart's ctl channel; ignored by ``noop``);
        ``config`` holds the agent type's settings (see :func:`~agentio.agents.open_agent`).
        """
        sandbox_id = sandbox_id or _new_id("sb")
        spec = SandboxSpec(sandbox_id=sandbox_id, hostname=hostname or sandbox_id[:12])
        agent = open_agent(address, agent_type, sandbox_id=sandbox_id, config=config,
                           limits=limits)
        sandbox = cls(agent, spec, limits=limits)
        try:
            await sandbox.start(timeout=timeout)
        except BaseException:
            await agent.disconnect()
            raise
        if agent.health_check_interval is not None:
            from .monitor import HealthMonitor  # the monitor is built on Sandbox

            sandbox.monitor = HealthMonitor(sandbox, interval=agent.health_check_interval)
            sandbox.monitor.start()
        return sandbox

    async def start(self, *, timeout: float | None = None) -> None:
        """Create and start the sandbox in the guest."""
        await self.agent.create_sandbox(self.spec, timeout=timeout)
        await self.agent.start_sandbox(self.spec, timeout=timeout)
        self._started = True

    async def destroy(self, *, timeout: float | None = None) -> None:
        """Stop the sandbox (every container in it) and disconnect. Idempotent.

        Runs to its end even inside an expired cancel scope, bounded by
        ``Limits.teardown_timeout``. A sandbox whose agent was marked failed (by a health
        monitor) is not asked to stop: only what is held here is released.
        """
        if self._destroyed:
            return
        self._destroyed = True
        async with shielded_teardown(self.limits.teardown_timeout, "destroy_sandbox",
                                     sandbox=self.id):
            if self.monitor is not None:
                await self.monitor.stop()
            try:
                if self._started and self.agent.failure is None:
                    await self.agent.stop_sandbox(self.id, timeout=timeout)
            finally:
                try:
                    await close_all([p for c in self.containers.values()
                                     for p in c.processes.values()], kill=False)
                finally:
                    for container in self.containers.values():
                        container.processes.clear()
                    self.containers.clear()
                    await self.agent.disconnect()

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.destroy()
        except AgentError as cleanup_error:
            if exc is None:
                raise
            # the caller gets the first error; this one is usually its echo (a dead agent)
            log.warning("destroying sandbox %s after an error failed too: %s", self.id,
                        cleanup_error)
            log.debug("destroy failure of sandbox %s", self.id, exc_info=True)

    # -- containers --------------------------------------------------------------------------

    async def create_container(
        self,
        container_id: str | None = None,
        args: Sequence[str] = ("sleep", "infinity"),
        *,
        spec: OciMapping | None = None,
        env: Sequence[str] = (DEFAULT_PATH_ENV,),
        cwd: str = "/",
        terminal: bool = False,
        timeout: float | None = None,
    ) -> Container:
        """Create a container running ``args`` (or the OCI ``spec`` given); not started yet.

        ``container_id`` comes first (None: a generated one); pass the command as ``args=``.
        """
        if container_id is not None and not isinstance(container_id, str):
            raise TypeError(f"container_id must be a string or None, not "
                            f"{type(container_id).__name__} (pass the command as args=...)")
        container_id = container_id or _new_id("ctr")
        if spec is None:
            process = ProcessSpec(args=list(args), env=list(env), cwd=cwd, terminal=terminal)
            spec = default_container_spec(process, container_id=container_id,
                                          hostname=self.spec.hostname)
        await self.agent.create_container(container_id, spec, timeout=timeout)
        terminal = bool(spec.get("process", {}).get("terminal", False))
        container = Container(self, container_id, terminal=terminal)
        self.containers[container_id] = container
        return container

    # -- the guest ---------------------------------------------------------------------------

    async def check(self, *, timeout: float | None = None) -> None:
        """Check the agent is alive."""
        await self.agent.check(timeout=timeout)

    async def version(self, *, timeout: float | None = None) -> AgentVersion:
        """The agent's version."""
        return await self.agent.version(timeout=timeout)

    async def online_cpu_mem(self, cpus: int, *, cpu_only: bool = False,
                             timeout: float | None = None) -> None:
        """Bring hot-added vCPUs (and memory) online in the guest."""
        await self.agent.online_cpu_mem(cpus, cpu_only=cpu_only, timeout=timeout)

    async def copy_file(self, path: str, data: bytes, *, mode: int = 0o644,
                        timeout: float | None = None) -> None:
        """Write a file into the guest."""
        await self.agent.copy_file(path, data, mode=mode, timeout=timeout)


class Container:
    """A container in a sandbox. ``async with`` removes it on exit."""

    def __init__(self, sandbox: Sandbox, container_id: str, *, terminal: bool = False) -> None:
        self.sandbox = sandbox
        self.id = container_id
        self._terminal = terminal
        self.init: Process | None = None
        self.processes: dict[str, Process] = {}
        self._removed = False

    def __repr__(self) -> str:
        return f"<Container {self.id} sandbox={self.sandbox.id}>"

    @property
    def _agent(self) -> Agent:
        return self.sandbox.agent

    async def start(self, *, timeout: float | None = None) -> Process:
        """Start the container's init process; returns it (its stdio is already flowing)."""
        await self._agent.start_container(self.id, timeout=timeout)
        self.init = self._track(Process(self._agent, self.id, self.id, terminal=self._terminal,
                                        limits=self.sandbox.limits))
        return self.init

    async def exec(
        self,
        args: Sequence[str],
        *,
        env: Sequence[str] = (DEFAULT_PATH_ENV,),
        cwd: str = "/",
        tty: bool = False,
        exec_id: str | None = None,
        uid: int = 0,
        gid: int = 0,
        timeout: float | None = None,
    ) -> Process:
        """Run ``args`` in the container; returns the running :class:`Process`."""
        spec = ProcessSpec(args=list(args), env=list(env), cwd=cwd, terminal=tty, uid=uid,
                           gid=gid)
        return await self.exec_spec(spec, exec_id=exec_id, timeout=timeout)

    async def exec_spec(self, spec: ProcessSpec | OciMapping, *, exec_id: str | None = None,
                        timeout: float | None = None) -> Process:
        """Run the process described by ``spec`` (a ProcessSpec or an OCI process mapping)."""
        exec_id = exec_id or _new_id("exec")
        await self._agent.exec_process(self.id, exec_id, spec, timeout=timeout)
        return self._track(Process(self._agent, self.id, exec_id, terminal=is_terminal(spec),
                                   limits=self.sandbox.limits))

    def _track(self, process: Process) -> Process:
        self.processes[process.exec_id] = process
        process._start()
        return process

    async def signal(self, sig: int, *, all: bool = True, timeout: float | None = None) -> None:
        """Send ``sig`` to every process of the container (or only init with ``all=False``)."""
        await self._agent.signal_process(self.id, "" if all else self.id, int(sig), all=all,
                                         timeout=timeout)

    async def pause(self, *, timeout: float | None = None) -> None:
        """Freeze every process of the container."""
        await self._agent.pause_container(self.id, timeout=timeout)

    async def resume(self, *, timeout: float | None = None) -> None:
        """Thaw the container."""
        await self._agent.resume_container(self.id, timeout=timeout)

    async def update(self, resources: OciMapping, *, timeout: float | None = None) -> None:
        """Apply new OCI ``linux.resources``."""
        await self._agent.update_container(self.id, resources, timeout=timeout)

    async def stats(self, *, timeout: float | None = None) -> ContainerStats:
        """Resource usage."""
        return await self._agent.stats_container(self.id, timeout=timeout)

    async def list_processes(self, *, format: str = "json", args: Sequence[str] = (),
                             timeout: float | None = None) -> bytes:
        """The container's processes as the agent lists them."""
        return await self._agent.list_processes(self.id, format=format, args=args,
                                                timeout=timeout)

    async def _close_processes(self) -> None:
        # The agent already killed them: wait for their exits, don't signal again.
        try:
            await close_all(list(self.processes.values()), kill=False)
        finally:
            self.processes.clear()

    async def remove(self, *, timeout: float | None = None) -> None:
        """Stop the container (killing its processes) and forget it. Idempotent.

        Like :meth:`Sandbox.destroy`, runs to its end even when the caller was cancelled.
        """
        if self._removed:
            return
        self._removed = True
        async with shielded_teardown(self.sandbox.limits.teardown_timeout, "remove_container",
                                     sandbox=self.sandbox.id, container=self.id):
            try:
                if self._agent.failure is None:  # else there is no guest to ask
                    await self._agent.stop_container(self.id, timeout=timeout)
            finally:
                await self._close_processes()
                self.sandbox.containers.pop(self.id, None)

    async def __aenter__(self) -> Container:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(AgentError) if exc is not None else contextlib.nullcontext():
            await self.remove()
