"""The Kata agent API (``grpc.AgentService`` and ``grpc.Health``) served from host processes.

Layer: local agent. Decodes each request with the current generation's messages, runs it on
the engine (:mod:`.containers`, :mod:`.processes`) and answers with the statuses and wording
the real Rust agent uses, so clients see what they would see from a VM. One
:class:`KataService` is one agent, that is, one "VM": it holds at most one sandbox.

What it cannot do as a VM would, it says: cgroup limits from UpdateContainer are recorded,
not enforced; there is no guest network (empty interface and route lists) and no OOM killer
(GetOOMEvent waits until cancelled); CopyFile writes below the agent's private guest root.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import betterproto2

from .. import __version__
from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    RpcError,
    Unknown,
)
from ..proto.kata import grpc as pb
from ..proto.kata.google import protobuf as pb_empty
from ..proto.kata1 import grpc as pb1
from ..proto.kata1.google import protobuf as pb1_empty
from ..protocols.ttrpc import Handler, ServerCall
from .containers import (
    ContainerExists,
    InvalidId,
    InvalidState,
    LocalContainer,
    LocalSandbox,
    ProcessExists,
    UnknownContainer,
    UnknownProcess,
)
from .generations import CURRENT, KATA1, Wire
from .processes import EngineError, HostProcess, InvalidSpec, SpawnFailed

log = logging.getLogger(__name__)

Q = TypeVar("Q", bound=betterproto2.Message)
EofStyle = Literal["empty", "error", "unknown"]

MAX_READ_LEN = 1 << 20
"""Largest ReadStdout/ReadStderr answer, well under the 4 MiB frame cap."""

AGENT_API_VERSION = "0.0.1"

# How the real agent words an unknown container, per method (see the ttrpc vectors).
_UNKNOWN_CONTAINER: Mapping[str, RpcError] = {
    "ExecProcess": Internal("Invalid container id"),
    "StatsContainer": InvalidArgument('"invalid container id"'),
}


class Registry(Protocol):
    """A server handlers register on (:class:`~agentio.protocols.ttrpc.TtrpcServer`,
    :class:`~agentio.protocols.grpc.server.GrpcServer`)."""

    def register(self, service: str, methods: Mapping[str, Handler]) -> None: ...


class KataService:
    """One local agent: the state of one sandbox and the handlers serving it.

    ``eof_style`` is how the end of output is said: an empty reply (Kata >= 3.27), INTERNAL
    "read meet eof" (``"error"``, older Rust agents) or UNKNOWN "EOF" (``"unknown"``, 1.x).
    """

    def __init__(
        self, *, guest_root: Path, eof_style: EofStyle = "empty", drain_timeout: float = 2.0
    ) -> None:
        self.guest_root = guest_root
        self.eof_style: EofStyle = eof_style
        self.drain_timeout = drain_timeout
        self.sandbox: LocalSandbox | None = None
        self.online_cpus = 0
        self.resources: dict[str, pb.LinuxResources] = {}

    def register(self, server: Registry, wire: Wire = CURRENT) -> None:
        """Serve this agent's methods on ``server``, in the API generation ``wire`` speaks."""
        agent = self._methods()
        if wire is KATA1:
            del agent["GetMetrics"]  # 1.x has no GetMetrics; it has these instead:
            agent["ListProcesses"] = (pb1.ListProcessesRequest, self.list_processes)
            agent["StartTracing"] = (pb1.StartTracingRequest, self.start_tracing)
            agent["StopTracing"] = (pb1.StopTracingRequest, self.stop_tracing)
        server.register("grpc.AgentService", {
            name: _unary(request, method, wire) for name, (request, method) in agent.items()})
        server.register("grpc.Health", {
            "Check": _unary(pb.CheckRequest, self.check, wire),
            "Version": _unary(pb.CheckRequest, self.version, wire),
        })

    def _methods(self) -> dict[str, tuple[type[Any], Callable[[Any], Awaitable[Any]]]]:
        return {
            "CreateSandbox": (pb.CreateSandboxRequest, self.create_sandbox),
            "DestroySandbox": (pb.DestroySandboxRequest, self.destroy_sandbox),
            "CreateContainer": (pb.CreateContainerRequest, self.create_container),
            "StartContainer": (pb.StartContainerRequest, self.start_container),
            "RemoveContainer": (pb.RemoveContainerRequest, self.remove_container),
            "PauseContainer": (pb.PauseContainerRequest, self.pause_container),
            "ResumeContainer": (pb.ResumeContainerRequest, self.resume_container),
            "UpdateContainer": (pb.UpdateContainerRequest, self.update_container),
            "StatsContainer": (pb.StatsContainerRequest, self.stats_container),
            "ExecProcess": (pb.ExecProcessRequest, self.exec_process),
            "SignalProcess": (pb.SignalProcessRequest, self.signal_process),
            "WaitProcess": (pb.WaitProcessRequest, self.wait_process),
            "ReadStdout": (pb.ReadStreamRequest, self.read_stdout),
            "ReadStderr": (pb.ReadStreamRequest, self.read_stderr),
            "WriteStdin": (pb.WriteStreamRequest, self.write_stdin),
            "CloseStdin": (pb.CloseStdinRequest, self.close_stdin),
            "TtyWinResize": (pb.TtyWinResizeRequest, self.tty_win_resize),
            "OnlineCPUMem": (pb.OnlineCpuMemRequest, self.online_cpu_mem),
            "GetGuestDetails": (pb.GuestDetailsRequest, self.guest_details),
            "CopyFile": (pb.CopyFileRequest, self.copy_file),
            "GetOOMEvent": (pb.GetOomEventRequest, self.get_oom_event),
            "ListInterfaces": (pb.ListInterfacesRequest, self.list_interfaces),
            "ListRoutes": (pb.ListRoutesRequest, self.list_routes),
            "GetMetrics": (pb.GetMetricsRequest, self.get_metrics),
        }

    async def close(self) -> None:
        """Kill everything the agent started."""
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            await sandbox.destroy()

    # -- lookups ---------------------------------------------------------------------------

    def _sandbox(self) -> LocalSandbox:
        if self.sandbox is None:
            raise FailedPrecondition("sandbox not created")
        return self.sandbox

    def _container(self, container_id: str) -> LocalContainer:
        return self._sandbox().container(container_id)

    def _process(self, container_id: str, exec_id: str) -> HostProcess:
        return self._container(container_id).process(exec_id)

    # -- health ----------------------------------------------------------------------------

    async def check(self, request: pb.CheckRequest) -> pb.HealthCheckResponse:
        return pb.HealthCheckResponse(status=pb.HealthCheckResponseServingStatus.SERVING)

    async def version(self, request: pb.CheckRequest) -> pb.VersionCheckResponse:
        return pb.VersionCheckResponse(grpc_version=AGENT_API_VERSION,
                                       agent_version=f"agentio-localagent {__version__}")

    # -- sandbox ---------------------------------------------------------------------------

    async def create_sandbox(self, request: pb.CreateSandboxRequest) -> pb_empty.Empty:
        if self.sandbox is not None:
            raise AlreadyExists(f"sandbox {self.sandbox.id} already exists")
        root = self.guest_root / "containers"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sandbox = LocalSandbox(request.sandbox_id or "sandbox", hostname=request.hostname,
                                    workdir_root=str(root))
        return pb_empty.Empty()

    async def destroy_sandbox(self, request: pb.DestroySandboxRequest) -> pb_empty.Empty:
        sandbox = self._sandbox()
        self.sandbox = None
        self.resources.clear()
        await sandbox.destroy()
        return pb_empty.Empty()

    # -- containers ------------------------------------------------------------------------

    async def create_container(self, request: pb.CreateContainerRequest) -> pb_empty.Empty:
        if request.oci is None:
            raise InvalidArgument("no OCI spec")
        self._sandbox().create_container(request.container_id, _oci(request.oci))
        return pb_empty.Empty()

    async def start_container(self, request: pb.StartContainerRequest) -> pb_empty.Empty:
        self._container(request.container_id).start()
        return pb_empty.Empty()

    async def remove_container(self, request: pb.RemoveContainerRequest) -> pb_empty.Empty:
        timeout = float(request.timeout) if request.timeout else 5.0
        await self._sandbox().remove_container(request.container_id, timeout)
        self.resources.pop(request.container_id, None)
        return pb_empty.Empty()

    async def pause_container(self, request: pb.PauseContainerRequest) -> pb_empty.Empty:
        await self._container(request.container_id).pause()
        return pb_empty.Empty()

    async def resume_container(self, request: pb.ResumeContainerRequest) -> pb_empty.Empty:
        await self._container(request.container_id).resume()
        return pb_empty.Empty()

    async def update_container(self, request: pb.UpdateContainerRequest) -> pb_empty.Empty:
        self._container(request.container_id)  # must exist
        if request.resources is not None:
            self.resources[request.container_id] = request.resources
        return pb_empty.Empty()

    async def stats_container(
        self, request: pb.StatsContainerRequest
    ) -> pb.StatsContainerResponse:
        stats = self._container(request.container_id).stats()
        limit = self.resources.get(request.container_id)
        memory_limit = (limit.memory.limit or 0) if limit and limit.memory else 0
        cgroup = pb.CgroupStats(
            cpu_stats=pb.CpuStats(cpu_usage=pb.CpuUsage(
                total_usage=stats.cpu_ns, usage_in_usermode=stats.user_ns,
                usage_in_kernelmode=stats.system_ns)),
            memory_stats=pb.MemoryStats(usage=pb.MemoryData(usage=stats.rss_bytes,
                                                             limit=max(memory_limit, 0))),
            pids_stats=pb.PidsStats(current=stats.pids))
        return pb.StatsContainerResponse(cgroup_stats=cgroup)

    # -- processes -------------------------------------------------------------------------

    async def exec_process(self, request: pb.ExecProcessRequest) -> pb_empty.Empty:
        if request.process is None:
            raise InvalidArgument("no process")
        container = self._container(request.container_id)
        container.exec_process(request.exec_id, _oci(request.process))
        return pb_empty.Empty()

    async def signal_process(self, request: pb.SignalProcessRequest) -> pb_empty.Empty:
        self._container(request.container_id).signal(request.exec_id, request.signal)
        return pb_empty.Empty()

    async def wait_process(self, request: pb.WaitProcessRequest) -> pb.WaitProcessResponse:
        if self.sandbox is None:
            raise InvalidArgument("InvalidContainerId")
        status = await self._container(request.container_id).wait_and_forget(
            request.exec_id, self.drain_timeout)
        return pb.WaitProcessResponse(status=status)

    async def read_stdout(self, request: pb.ReadStreamRequest) -> pb.ReadStreamResponse:
        proc = self._process(request.container_id, request.exec_id)
        return self._read_answer(await proc.read_stdout(_read_len(request.len)))

    async def read_stderr(self, request: pb.ReadStreamRequest) -> pb.ReadStreamResponse:
        proc = self._process(request.container_id, request.exec_id)
        return self._read_answer(await proc.read_stderr(_read_len(request.len)))

    def _read_answer(self, data: bytes) -> pb.ReadStreamResponse:
        if not data and self.eof_style == "error":
            raise Internal("read meet eof")
        if not data and self.eof_style == "unknown":
            raise Unknown("EOF")
        return pb.ReadStreamResponse(data=data)

    async def write_stdin(self, request: pb.WriteStreamRequest) -> pb.WriteStreamResponse:
        proc = self._process(request.container_id, request.exec_id)
        return pb.WriteStreamResponse(len=await proc.write_stdin(request.data))

    async def close_stdin(self, request: pb.CloseStdinRequest) -> pb_empty.Empty:
        self._process(request.container_id, request.exec_id).close_stdin()
        return pb_empty.Empty()

    async def tty_win_resize(self, request: pb.TtyWinResizeRequest) -> pb_empty.Empty:
        self._process(request.container_id, request.exec_id).resize(request.row, request.column)
        return pb_empty.Empty()

    async def list_processes(
        self, request: pb1.ListProcessesRequest
    ) -> pb1.ListProcessesResponse:
        """1.x only: the container's pids as a JSON array, or a one-column ``table``."""
        pids = self._container(request.container_id).pids()
        if request.format == "json":
            listing = json.dumps(pids, separators=(",", ":"))
        elif request.format == "table":
            listing = "".join(f"{pid}\n" for pid in ["PID", *pids])
        else:
            raise InvalidArgument(f"invalid format option {request.format!r}")
        return pb1.ListProcessesResponse(process_list=listing.encode())

    async def start_tracing(self, request: pb1.StartTracingRequest) -> pb1_empty.Empty:
        """1.x only: accepted; the local agent has no tracing to start."""
        return pb1_empty.Empty()

    async def stop_tracing(self, request: pb1.StopTracingRequest) -> pb1_empty.Empty:
        """1.x only: accepted; the local agent has no tracing to stop."""
        return pb1_empty.Empty()

    # -- guest -----------------------------------------------------------------------------

    async def online_cpu_mem(self, request: pb.OnlineCpuMemRequest) -> pb_empty.Empty:
        available = len(os.sched_getaffinity(0))
        if request.nb_cpus > available:
            raise InvalidArgument(f"cannot online {request.nb_cpus} CPUs: {available} present")
        self.online_cpus = max(self.online_cpus, request.nb_cpus)
        return pb_empty.Empty()

    async def guest_details(self, request: pb.GuestDetailsRequest) -> pb.GuestDetailsResponse:
        info = (self.sandbox or LocalSandbox("probe")).guest_info()
        return pb.GuestDetailsResponse(
            mem_block_size_bytes=info.mem_block_size_bytes if request.mem_block_size else 0,
            agent_details=pb.AgentDetails(version=__version__, init_daemon=False),
            support_mem_hotplug_probe=False)

    async def copy_file(self, request: pb.CopyFileRequest) -> pb_empty.Empty:
        target = self._guest_path(request.path)
        if request.offset < 0 or request.file_size < 0 or (
                request.offset + len(request.data) > request.file_size):
            raise InvalidArgument("CopyFile chunk lies outside file_size")
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
                     request.file_mode & 0o777 or 0o644)
        try:
            if request.offset == 0:
                os.ftruncate(fd, request.file_size)  # a new copy replaces the old file
            os.pwrite(fd, request.data, request.offset)
        finally:
            os.close(fd)
        return pb_empty.Empty()

    def _guest_path(self, path: str) -> Path:
        # normpath folds "..": an absolute path cannot climb above the guest root
        relative = Path(os.path.normpath(path).lstrip("/"))
        if not path.startswith("/") or not relative.parts:
            raise InvalidArgument(f"CopyFile needs an absolute file path, not {path!r}")
        return self.guest_root / "rootfs" / relative

    async def get_oom_event(self, request: pb.GetOomEventRequest) -> pb.OomEvent:
        await asyncio.Event().wait()  # no OOM killer here: wait until the caller gives up
        raise AssertionError("unreachable")

    async def list_interfaces(self, request: pb.ListInterfacesRequest) -> pb.Interfaces:
        return pb.Interfaces()

    async def list_routes(self, request: pb.ListRoutesRequest) -> pb.Routes:
        return pb.Routes()

    async def get_metrics(self, request: pb.GetMetricsRequest) -> pb.Metrics:
        containers = len(self.sandbox.containers) if self.sandbox else 0
        text = ("# TYPE localagent_containers gauge\n"
                f"localagent_containers {containers}\n")
        return pb.Metrics(metrics=text)


def _read_len(requested: int) -> int:
    if requested <= 0:
        raise InvalidArgument("len must be positive")
    return min(requested, MAX_READ_LEN)


def _oci(message: betterproto2.Message) -> dict[str, Any]:
    """A protobuf OCI message as the OCI JSON mapping the engine reads."""
    return message.to_dict(casing=betterproto2.Casing.CAMEL)


def _unary(
    request_type: type[Q], method: Callable[[Q], Awaitable[betterproto2.Message]], wire: Wire,
) -> Handler:
    """A handler: decode (from ``wire``'s generation), run, encode; engine errors become the
    agent's statuses."""
    name = _method_name(method)

    async def handle(call: ServerCall) -> bytes:
        try:
            request = wire.decode(request_type, call.payload)
        except Exception as exc:
            raise InvalidArgument(f"unmarshal request error: {exc}") from None
        log.debug("rpc %s", call.method)
        try:
            return wire.encode(await method(request))
        except EngineError as exc:
            raise _status(call.method, exc) from exc

    handle.__name__ = name
    return handle


def _method_name(method: Callable[..., Any]) -> str:
    return str(getattr(method, "__name__", "handler"))


def _status(method: str, exc: EngineError) -> RpcError:
    """The status the real agent answers for an engine error."""
    if isinstance(exc, UnknownContainer):
        return _UNKNOWN_CONTAINER.get(method) or InvalidArgument("InvalidContainerId")
    if isinstance(exc, UnknownProcess):
        return NotFound("InvalidExecId")
    if isinstance(exc, ContainerExists | ProcessExists):
        return AlreadyExists(exc.message)
    if isinstance(exc, InvalidState):
        return FailedPrecondition(exc.message)
    if isinstance(exc, InvalidSpec | InvalidId):
        return InvalidArgument(exc.message)
    if isinstance(exc, SpawnFailed):
        return Internal(f"Could not run process: {exc.message}")
    return Internal(exc.message)
