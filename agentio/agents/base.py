"""The agent interface: every operation on a guest agent, as a coroutine.

Layer: agents. One ``Agent`` talks to the agent of one sandbox (one VM). Adapters
(``KataAgent``, …) implement it over their protocol; the public API (``Sandbox``,
``Container``, ``Process``) is written against this class only.

Deadlines: every call takes ``timeout`` in seconds. ``None`` means the agent's default
deadline for ordinary calls, and no bound for the long polls (``wait_process``,
``read_stdout``/``read_stderr``, ``write_stdin``, ``get_oom_event``), which callers bound
or cancel themselves. ``math.inf`` asks for no bound on any call.

Output reads return ``b""`` at end of stream, whatever form the agent uses to say so.
Operations an agent type cannot do raise :class:`~agentio.errors.UnsupportedOperation`.

Failing fast: :meth:`Agent.mark_failed` (what a health monitor calls when the guest is gone)
makes every pending and later operation raise :class:`~agentio.errors.SandboxFailed` with
the cause. Telemetry: with ``agent.telemetry`` set (:mod:`agentio.agents.telemetry`), each
operation is traced and measured. Both are applied once, here, to every adapter's
operations, by one gate that costs an attribute test or two when neither is in use.
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import AgentError, SandboxFailed, UnsupportedOperation
from ..limits import DEFAULT_LIMITS, Limits
from .agent_type import AgentType
from .specs import AgentVersion, ContainerStats, OciMapping, ProcessSpec, SandboxSpec

if TYPE_CHECKING:
    from .telemetry import Telemetry


class Agent(abc.ABC):
    """The operation set of one sandbox's guest agent."""

    agent_type: ClassVar[AgentType]

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.failure: SandboxFailed | None = None
        """Set by :meth:`mark_failed`: why every operation now fails."""
        self.telemetry: Telemetry | None = None
        """Set it to trace and measure every operation (off by default)."""
        self.health_check_interval: float | None = None
        """From the agent's config: :meth:`agentio.Sandbox.create` monitors the sandbox at
        this interval (seconds) when set."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _OPERATIONS:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_failure_gate", False):
                setattr(cls, name, _failure_gate(method))

    async def mark_failed(self, cause: BaseException, message: str = "sandbox failed") -> None:
        """Fail every pending and later operation fast with :class:`SandboxFailed`.

        ``cause`` becomes the error's ``__cause__``. Disconnects (pending calls end at once);
        the first failure recorded is kept.
        """
        if self.failure is None:
            failure = SandboxFailed(message)
            failure.__cause__ = cause
            self.failure = failure
        await self.disconnect()

    def _failed(self, operation: str) -> SandboxFailed:
        assert self.failure is not None
        error = SandboxFailed(self.failure.message, operation=operation,
                              sandbox=str(getattr(self, "sandbox_id", "")))
        error.__cause__ = self.failure.__cause__
        return error

    def _unsupported(self, operation: str) -> UnsupportedOperation:
        """The error of an operation this agent type cannot do (naming the type and sandbox)."""
        return UnsupportedOperation(f"not supported by {self.agent_type}",
                                    operation=operation,
                                    sandbox=getattr(self, "sandbox_id", ""))

    # -- connection ------------------------------------------------------------------------

    @abc.abstractmethod
    async def check(self, *, timeout: float | None = None) -> None:
        """Check the agent is alive and serving (raises if not)."""

    async def version(self, *, timeout: float | None = None) -> AgentVersion:
        """The agent's version and API version."""
        raise self._unsupported("version")

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Close the connection; pending calls fail with ConnectionClosed. Idempotent."""

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    # -- sandbox ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_sandbox(self, spec: SandboxSpec, *, timeout: float | None = None) -> None:
        """Prepare the sandbox in the guest (host-side for some agents)."""

    @abc.abstractmethod
    async def start_sandbox(self, spec: SandboxSpec, *, timeout: float | None = None) -> None:
        """Start the sandbox so containers can be created in it."""

    @abc.abstractmethod
    async def stop_sandbox(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        """Stop the sandbox and everything in it."""

    # -- containers ------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_container(
        self, container_id: str, spec: OciMapping, *, timeout: float | None = None
    ) -> None:
        """Create a container from an OCI runtime spec (``config.json`` shape)."""

    @abc.abstractmethod
    async def start_container(self, container_id: str, *, timeout: float | None = None) -> None:
        """Start the container's init process."""

    @abc.abstractmethod
    async def stop_container(self, container_id: str, *, timeout: float | None = None) -> None:
        """Stop and remove the container (its processes are killed)."""

    @abc.abstractmethod
    async def pause_container(self, container_id: str, *, timeout: float | None = None) -> None:
        """Freeze every process of the container."""

    @abc.abstractmethod
    async def resume_container(self, container_id: str, *, timeout: float | None = None) -> None:
        """Thaw a paused container."""

    @abc.abstractmethod
    async def update_container(
        self, container_id: str, resources: OciMapping, *, timeout: float | None = None
    ) -> None:
        """Apply new OCI ``linux.resources`` to a running container."""

    @abc.abstractmethod
    async def stats_container(
        self, container_id: str, *, timeout: float | None = None
    ) -> ContainerStats:
        """Resource usage of the container."""

    async def list_processes(
        self, container_id: str, *, format: str = "json", args: Sequence[str] = (),
        timeout: float | None = None,
    ) -> bytes:
        """The container's processes as the agent formats them (``json`` or ``table``)."""
        raise self._unsupported("list_processes")

    # -- processes -------------------------------------------------------------------------

    @abc.abstractmethod
    async def exec_process(
        self, container_id: str, exec_id: str, process: ProcessSpec | OciMapping, *,
        timeout: float | None = None,
    ) -> None:
        """Start another process in a running container.

        ``process`` is a :class:`ProcessSpec` or a full OCI ``process`` mapping.
        """

    @abc.abstractmethod
    async def signal_process(
        self, container_id: str, exec_id: str, signal: int, *, all: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Send ``signal`` to one process, or with ``all`` (or an empty ``exec_id``) to all."""

    @abc.abstractmethod
    async def resize_tty(
        self, container_id: str, exec_id: str, rows: int, cols: int, *,
        timeout: float | None = None,
    ) -> None:
        """Set the terminal size of a process started with a terminal."""

    @abc.abstractmethod
    async def write_stdin(
        self, container_id: str, exec_id: str, data: bytes, *, timeout: float | None = None
    ) -> int:
        """Write to the process's stdin; returns how many bytes the agent took."""

    @abc.abstractmethod
    async def close_stdin(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> None:
        """Close the process's stdin (its stdout/stderr stay open)."""

    @abc.abstractmethod
    async def read_stdout(
        self, container_id: str, exec_id: str, size: int, *, timeout: float | None = None
    ) -> bytes:
        """Up to ``size`` bytes of stdout as soon as some are available; ``b""`` at its end."""

    @abc.abstractmethod
    async def read_stderr(
        self, container_id: str, exec_id: str, size: int, *, timeout: float | None = None
    ) -> bytes:
        """Up to ``size`` bytes of stderr as soon as some are available; ``b""`` at its end."""

    @abc.abstractmethod
    async def wait_process(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> int:
        """Wait for the process to exit; its status (128+N after signal N).

        The agent forgets the process afterwards: read its output concurrently.
        """

    # -- guest -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def online_cpu_mem(
        self, cpus: int, *, cpu_only: bool = False, wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Bring hot-added vCPUs (and memory, unless ``cpu_only``) online in the guest."""

    async def guest_details(self, *, timeout: float | None = None) -> Mapping[str, Any]:
        """What the guest reports about its memory block size and capabilities."""
        raise self._unsupported("guest_details")

    async def copy_file(
        self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
        timeout: float | None = None, progress: Callable[[int, int], object] | None = None,
    ) -> None:
        """Write a file into the guest.

        ``progress(sent, total)`` is called as the bytes go out (for a progress display).
        """
        raise self._unsupported("copy_file")

    async def get_oom_event(self, *, timeout: float | None = None) -> str:
        """Wait for the next out-of-memory kill; the container id it hit."""
        raise self._unsupported("get_oom_event")

    async def list_interfaces(
        self, *, timeout: float | None = None
    ) -> Sequence[Mapping[str, Any]]:
        """The guest's network interfaces."""
        raise self._unsupported("list_interfaces")

    async def list_routes(self, *, timeout: float | None = None) -> Sequence[Mapping[str, Any]]:
        """The guest's routes."""
        raise self._unsupported("list_routes")

    async def get_metrics(self, *, timeout: float | None = None) -> str:
        """The agent's own metrics, in Prometheus text format."""
        raise self._unsupported("get_metrics")


_OPERATIONS = frozenset(
    name for name, value in vars(Agent).items()
    if inspect.iscoroutinefunction(value) and not name.startswith("_")
    and name not in ("disconnect", "mark_failed"))
"""The operations :meth:`Agent.mark_failed` stops: every coroutine of the operation set."""


def _failure_gate(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``method`` failing fast once its agent was marked failed, and observed if asked."""
    name = method.__name__

    @functools.wraps(method)
    async def gated(self: Agent, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            raise self._failed(name)
        try:
            if self.telemetry is None:
                return await method(self, *args, **kwargs)
            return await self.telemetry.observe(self, name, method(self, *args, **kwargs))
        except AgentError as exc:
            if self.failure is None or isinstance(exc, SandboxFailed):
                raise
            raise self._failed(name) from self.failure.__cause__

    gated._failure_gate = True  # type: ignore[attr-defined]
    return gated
