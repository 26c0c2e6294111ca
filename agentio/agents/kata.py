"""The Kata Containers agent (2.x and later) over ttrpc.

Layer: agents. Maps each operation of :class:`~agentio.agents.base.Agent` onto one call of
``grpc.AgentService`` / ``grpc.Health`` with the current generation's messages
(:mod:`agentio.proto.kata`), and normalises what differs between agent versions: the three
ways of saying end-of-output, both OK-status forms (handled by the ttrpc layer), long polls
sent without a wire deadline.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import betterproto2

from ..errors import AgentError, AgentTimeout, ProtocolError, RpcError, is_end_of_stream
from ..limits import DEFAULT_LIMITS, Limits
from ..proto.kata import grpc as pb
from ..proto.kata.google import protobuf as pb_empty
from .agent_type import AgentType
from .base import Agent
from .oci import from_oci
from .specs import (
    AgentVersion,
    ContainerStats,
    LazyMapping,
    OciMapping,
    ProcessSpec,
    SandboxSpec,
    process_to_oci,
)
from .telemetry import outgoing_metadata
from .wiretypes import check_message

R = TypeVar("R", bound=betterproto2.Message)
T = TypeVar("T")

OFF_LOOP_DECODE = 256 * 1024
"""Answers larger than this many bytes are decoded in a worker thread, not on the loop."""

AGENT_SERVICE = "grpc.AgentService"
HEALTH_SERVICE = "grpc.Health"
DEFAULT_CALL_TIMEOUT = 60.0
"""Seconds an ordinary call may take unless the caller says otherwise (Kata's runtime default)."""


class RpcChannel(Protocol):
    """What an agent adapter needs from its protocol: one unary call, bytes in and out."""

    async def call(
        self, service: str, method: str, payload: bytes, *, timeout: float | None,
        send_timeout: bool = True,
    ) -> bytes: ...

    async def close(self) -> None: ...


class KataAgent(Agent):
    """A Kata agent reached over ttrpc (Kata 2.x, 3.x, 4.x guests).

    Args:
        channel: the call channel (a :class:`~agentio.protocols.ttrpc.TtrpcClient`, which
            connects lazily on the first call).
        sandbox_id: named in every error this agent raises.
        call_timeout: default deadline of ordinary calls, in seconds.

    Every operation is written once, here, against the generation's message module
    (``_pb``); an adapter for another API generation (:class:`~agentio.agents.kata1.Kata1Agent`)
    swaps the module and the few requests that differ, and reuses the call path.
    """

    agent_type = AgentType.KATA
    # The generated messages of this API generation: classes of the same names in each.
    _pb = pb
    _pb_empty = pb_empty
    # CheckRequest.service of a Version call, as this generation's own client fills it.
    _version_service: ClassVar[str] = AGENT_SERVICE

    def __init__(
        self, channel: RpcChannel, *, sandbox_id: str = "",
        call_timeout: float = DEFAULT_CALL_TIMEOUT, limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(limits=limits)
        self.channel = channel
        self.sandbox_id = sandbox_id
        self.call_timeout = call_timeout

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sandbox={self.sandbox_id or '?'}>"

    # -- the one call path ---------------------------------------------------------------------

    async def _call(
        self, method: str, request: betterproto2.Message, response_type: type[R], *,
        timeout: float | None, long_poll: bool = False, service: str = AGENT_SERVICE,
        container: str | None = None, exec_id: str | None = None,
    ) -> R:
        return await self._call_as(method, request, response_type, _same, timeout=timeout,
                                   long_poll=long_poll, service=service, container=container,
                                   exec_id=exec_id)

    async def _call_as(
        self, method: str, request: betterproto2.Message, response_type: type[R],
        convert: Callable[[R], T], *, timeout: float | None, long_poll: bool = False,
        service: str = AGENT_SERVICE, container: str | None = None,
        exec_id: str | None = None,
    ) -> T:
        """Call ``method``; parse, check and ``convert`` the answer (off the loop if large)."""
        bound = self._bound(timeout, long_poll)
        deadline = None if bound is None else asyncio.get_running_loop().time() + bound
        try:
            metadata = outgoing_metadata()  # the trace context, when tracing
            data = await self.channel.call(service, method, bytes(request), timeout=bound,
                                           send_timeout=not long_poll,
                                           **({"metadata": metadata} if metadata else {}))
        except AgentError as exc:
            exc.add_context(operation=method, sandbox=self.sandbox_id, container=container,
                            exec=exec_id)
            raise

        def decode() -> T:
            response = response_type.parse(data)
            check_message(response)  # the decoder takes any wire type for any field
            return convert(response)

        try:
            if len(data) > OFF_LOOP_DECODE:
                # decoding megabytes of small entries takes seconds to minutes of CPU: let
                # the loop (other sandboxes, deadlines) run meanwhile; the call's deadline
                # covers the decoding too (the thread itself cannot be stopped)
                async with asyncio.timeout_at(deadline):
                    return await asyncio.to_thread(decode)
            return decode()
        except TimeoutError:
            raise AgentTimeout(f"decoding {len(data)} bytes of answer outlasted the "
                               f"{bound:g}s deadline", operation=method, sandbox=self.sandbox_id,
                               container=container or "", exec=exec_id or "") from None
        except Exception as exc:  # whatever the decoder trips on, the peer sent it
            raise _malformed(method, exc).add_context(
                sandbox=self.sandbox_id, container=container, exec=exec_id) from exc

    async def _ack(
        self, method: str, request: betterproto2.Message, *, timeout: float | None,
        container: str | None = None, exec_id: str | None = None,
    ) -> None:
        """A call answered with ``google.protobuf.Empty``."""
        await self._call(method, request, self._pb_empty.Empty, timeout=timeout,
                         container=container, exec_id=exec_id)

    def _oci_process(self, process: ProcessSpec | OciMapping) -> dict[str, Any]:
        """The OCI ``process`` object sent for ``process``: a hook for what generations add."""
        return process_to_oci(process)

    def _bound(self, timeout: float | None, long_poll: bool) -> float | None:
        if timeout is None:
            return None if long_poll else self.call_timeout
        return None if math.isinf(timeout) else timeout

    # -- connection ----------------------------------------------------------------------------

    async def check(self, *, timeout: float | None = None) -> None:
        response = await self._call("Check", self._pb.CheckRequest(),
                                    self._pb.HealthCheckResponse, timeout=timeout,
                                    service=HEALTH_SERVICE)
        if response.status != self._pb.HealthCheckResponseServingStatus.SERVING:
            # a garbled answer can decode to a non-enum here: name it without trusting it
            state = getattr(response.status, "name", None) or f"{response.status!r:.80}"
            raise AgentError(f"agent is {state}", operation="Check", sandbox=self.sandbox_id)

    async def version(self, *, timeout: float | None = None) -> AgentVersion:
        request = self._pb.CheckRequest(service=self._version_service)
        response = await self._call("Version", request, self._pb.VersionCheckResponse,
                                    timeout=timeout, service=HEALTH_SERVICE)
        return AgentVersion(agent_version=response.agent_version,
                            api_version=response.grpc_version)

    async def disconnect(self) -> None:
        await self.channel.close()

    # -- sandbox -------------------------------------------------------------------------------

    async def create_sandbox(self, spec: SandboxSpec, *, timeout: float | None = None) -> None:
        """Nothing to do in the guest yet: Kata creates the sandbox when it starts."""

    async def start_sandbox(self, spec: SandboxSpec, *, timeout: float | None = None) -> None:
        request = self._pb.CreateSandboxRequest(
            hostname=spec.hostname, dns=list(spec.dns), sandbox_pidns=spec.sandbox_pidns,
            sandbox_id=spec.sandbox_id, guest_hook_path=spec.guest_hook_path,
            kernel_modules=[self._pb.KernelModule(name=name) for name in spec.kernel_modules])
        await self._ack("CreateSandbox", request, timeout=timeout)

    async def stop_sandbox(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        await self._ack("DestroySandbox", self._pb.DestroySandboxRequest(), timeout=timeout)

    # -- containers ----------------------------------------------------------------------------

    async def create_container(
        self, container_id: str, spec: OciMapping, *, timeout: float | None = None
    ) -> None:
        if "process" in spec:
            spec = {**spec, "process": self._oci_process(spec["process"])}
        request = self._pb.CreateContainerRequest(
            container_id=container_id, exec_id=container_id, oci=from_oci(self._pb.Spec, spec))
        await self._ack("CreateContainer", request, timeout=timeout, container=container_id)

    async def start_container(self, container_id: str, *, timeout: float | None = None) -> None:
        request = self._pb.StartContainerRequest(container_id=container_id)
        await self._ack("StartContainer", request, timeout=timeout, container=container_id)

    async def stop_container(self, container_id: str, *, timeout: float | None = None) -> None:
        request = self._pb.RemoveContainerRequest(container_id=container_id)
        await self._ack("RemoveContainer", request, timeout=timeout, container=container_id)

    async def pause_container(self, container_id: str, *, timeout: float | None = None) -> None:
        request = self._pb.PauseContainerRequest(container_id=container_id)
        await self._ack("PauseContainer", request, timeout=timeout, container=container_id)

    async def resume_container(self, container_id: str, *, timeout: float | None = None) -> None:
        request = self._pb.ResumeContainerRequest(container_id=container_id)
        await self._ack("ResumeContainer", request, timeout=timeout, container=container_id)

    async def update_container(
        self, container_id: str, resources: OciMapping, *, timeout: float | None = None
    ) -> None:
        request = self._pb.UpdateContainerRequest(
            container_id=container_id,
            resources=from_oci(self._pb.LinuxResources, resources, "resources"))
        await self._ack("UpdateContainer", request, timeout=timeout, container=container_id)

    async def stats_container(
        self, container_id: str, *, timeout: float | None = None
    ) -> ContainerStats:
        response = await self._call(
            "StatsContainer", self._pb.StatsContainerRequest(container_id=container_id),
            self._pb.StatsContainerResponse, timeout=timeout, container=container_id)
        cgroup = response.cgroup_stats or self._pb.CgroupStats()
        cpu = (cgroup.cpu_stats or self._pb.CpuStats()).cpu_usage or self._pb.CpuUsage()
        memory = (cgroup.memory_stats or self._pb.MemoryStats()).usage or self._pb.MemoryData()
        pids = cgroup.pids_stats or self._pb.PidsStats()
        return ContainerStats(cpu_usage_ns=cpu.total_usage, memory_usage_bytes=memory.usage,
                              pids=pids.current, raw=LazyMapping(response.to_dict))

    # -- processes -----------------------------------------------------------------------------

    async def exec_process(
        self, container_id: str, exec_id: str, process: ProcessSpec | OciMapping, *,
        timeout: float | None = None,
    ) -> None:
        request = self._pb.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id,
            process=from_oci(self._pb.Process, self._oci_process(process), "process"))
        await self._ack("ExecProcess", request, timeout=timeout, container=container_id,
                        exec_id=exec_id)

    async def signal_process(
        self, container_id: str, exec_id: str, signal: int, *, all: bool = False,
        timeout: float | None = None,
    ) -> None:
        request = self._pb.SignalProcessRequest(
            container_id=container_id, exec_id="" if all else exec_id, signal=int(signal))
        await self._ack("SignalProcess", request, timeout=timeout, container=container_id,
                        exec_id=exec_id)

    async def resize_tty(
        self, container_id: str, exec_id: str, rows: int, cols: int, *,
        timeout: float | None = None,
    ) -> None:
        request = self._pb.TtyWinResizeRequest(container_id=container_id, exec_id=exec_id,
                                               row=rows, column=cols)
        await self._ack("TtyWinResize", request, timeout=timeout, container=container_id,
                        exec_id=exec_id)

    async def write_stdin(
        self, container_id: str, exec_id: str, data: bytes, *, timeout: float | None = None
    ) -> int:
        request = self._pb.WriteStreamRequest(container_id=container_id, exec_id=exec_id,
                                              data=data)
        response = await self._call("WriteStdin", request, self._pb.WriteStreamResponse,
                                    timeout=timeout, long_poll=True, container=container_id,
                                    exec_id=exec_id)
        return response.len

    async def close_stdin(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> None:
        request = self._pb.CloseStdinRequest(container_id=container_id, exec_id=exec_id)
        await self._ack("CloseStdin", request, timeout=timeout, container=container_id,
                        exec_id=exec_id)

    async def read_stdout(
        self, container_id: str, exec_id: str, size: int, *, timeout: float | None = None
    ) -> bytes:
        return await self._read("ReadStdout", container_id, exec_id, size, timeout)

    async def read_stderr(
        self, container_id: str, exec_id: str, size: int, *, timeout: float | None = None
    ) -> bytes:
        return await self._read("ReadStderr", container_id, exec_id, size, timeout)

    async def _read(self, method: str, container_id: str, exec_id: str, size: int,
                    timeout: float | None) -> bytes:
        request = self._pb.ReadStreamRequest(container_id=container_id, exec_id=exec_id, len=size)
        try:
            response = await self._call(method, request, self._pb.ReadStreamResponse,
                                        timeout=timeout, long_poll=True,
                                        container=container_id, exec_id=exec_id)
        except RpcError as exc:
            if is_end_of_stream(exc):
                return b""
            raise
        if len(response.data) > size:
            raise _malformed(method, ValueError(f"{len(response.data)} bytes for len {size}"))
        return response.data

    async def wait_process(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> int:
        request = self._pb.WaitProcessRequest(container_id=container_id, exec_id=exec_id)
        response = await self._call("WaitProcess", request, self._pb.WaitProcessResponse,
                                    timeout=timeout, long_poll=True, container=container_id,
                                    exec_id=exec_id)
        return response.status

    # -- guest ---------------------------------------------------------------------------------

    async def online_cpu_mem(
        self, cpus: int, *, cpu_only: bool = False, wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        request = self._pb.OnlineCpuMemRequest(wait=wait, nb_cpus=cpus, cpu_only=cpu_only)
        await self._ack("OnlineCPUMem", request, timeout=timeout)

    async def guest_details(self, *, timeout: float | None = None) -> Mapping[str, Any]:
        request = self._pb.GuestDetailsRequest(mem_block_size=True, mem_hotplug_probe=True)
        return await self._call_as("GetGuestDetails", request, self._pb.GuestDetailsResponse,
                                   _to_dict, timeout=timeout)

    async def copy_file(
        self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
        timeout: float | None = None, progress: Callable[[int, int], object] | None = None,
    ) -> None:
        # One message per chunk: the frame cap bounds each, the offset orders them.
        chunk = self.limits.stdin_chunk
        for offset in range(0, max(len(data), 1), chunk):
            request = self._pb.CopyFileRequest(
                path=path, file_size=len(data), file_mode=mode, dir_mode=0o755, uid=uid,
                gid=gid, offset=offset, data=data[offset:offset + chunk])
            await self._ack("CopyFile", request, timeout=timeout)
            if progress is not None:
                progress(min(offset + chunk, len(data)), len(data))

    async def get_oom_event(self, *, timeout: float | None = None) -> str:
        response = await self._call("GetOOMEvent", self._pb.GetOomEventRequest(),
                                    self._pb.OomEvent, timeout=timeout, long_poll=True)
        return response.container_id

    async def list_interfaces(
        self, *, timeout: float | None = None
    ) -> Sequence[Mapping[str, Any]]:
        return await self._call_as("ListInterfaces", self._pb.ListInterfacesRequest(),
                                   self._pb.Interfaces, _interfaces, timeout=timeout)

    async def list_routes(self, *, timeout: float | None = None) -> Sequence[Mapping[str, Any]]:
        return await self._call_as("ListRoutes", self._pb.ListRoutesRequest(), self._pb.Routes,
                                   _routes, timeout=timeout)

    async def get_metrics(self, *, timeout: float | None = None) -> str:
        response = await self._call("GetMetrics", self._pb.GetMetricsRequest(), self._pb.Metrics,
                                    timeout=timeout)
        return response.metrics


def _to_dict(response: betterproto2.Message) -> Mapping[str, Any]:
    return response.to_dict()


def _interfaces(response: Any) -> Sequence[Mapping[str, Any]]:
    return [iface.to_dict() for iface in response.interfaces]


def _routes(response: Any) -> Sequence[Mapping[str, Any]]:
    return [route.to_dict() for route in response.routes]


def _same(response: R) -> R:
    return response


def _malformed(method: str, cause: BaseException) -> AgentError:
    return ProtocolError(f"malformed response: {cause}", operation=method)
