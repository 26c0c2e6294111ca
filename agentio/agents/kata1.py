"""The Kata Containers 1.x agent over gRPC.

Layer: agents. The same operation set as :class:`~agentio.agents.kata.KataAgent`, on the same
call path (deadlines, error context, the three end-of-output forms), with the 1.x message
classes (:mod:`agentio.proto.kata1`) swapped in. What the generation changes is all here:
ListProcesses exists (it was removed in 2.1), GetMetrics does not, the 1.x client sends an
empty ``CheckRequest`` for Health.Version and always names the process's user.

The channel is normally a :class:`~agentio.protocols.grpc.GrpcClient` (HTTP/2 over vsock, a
unix socket, or a yamux stream); any object with the ``RpcChannel`` shape works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ..proto.kata1 import grpc as pb1
from ..proto.kata1.google import protobuf as pb1_empty
from .agent_type import AgentType
from .kata import KataAgent
from .specs import OciMapping, ProcessSpec


class Kata1Agent(KataAgent):
    """A Kata 1.x agent reached over gRPC; built like :class:`KataAgent`, usually on a
    :class:`~agentio.protocols.grpc.GrpcClient` (which connects lazily on the first call)."""

    agent_type = AgentType.KATA1
    _pb = pb1
    _pb_empty = pb1_empty
    _version_service: ClassVar[str] = ""

    def _oci_process(self, process: ProcessSpec | OciMapping) -> dict[str, Any]:
        # The 1.x runtime always sends Process.User, root as an empty message; so do we.
        oci = super()._oci_process(process)
        oci.setdefault("user", {})
        return oci

    async def list_processes(
        self, container_id: str, *, format: str = "json", args: Sequence[str] = (),
        timeout: float | None = None,
    ) -> bytes:
        """The container's processes: ``json`` gives a JSON array of pids, ``table`` ps output."""
        request = pb1.ListProcessesRequest(container_id=container_id, format=format,
                                           args=list(args))
        response = await self._call("ListProcesses", request, pb1.ListProcessesResponse,
                                    timeout=timeout, container=container_id)
        return response.process_list

    async def get_metrics(self, *, timeout: float | None = None) -> str:
        """Not in the 1.x API."""
        raise self._unsupported("get_metrics")
