"""The no-op agent: every operation succeeds and returns an empty result.

Layer: agents. As the runtime's noop agent, it talks to nothing; use it for dry runs of
orchestration code. Output reads end at once, waits report status 0, writes take every byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import AgentTimeout
from .agent_type import AgentType
from .base import Agent
from .specs import AgentVersion, ContainerStats, OciMapping, ProcessSpec, SandboxSpec


class NoopAgent(Agent):
    """An agent that does nothing, successfully."""

    agent_type = AgentType.NOOP

    async def check(self, *, timeout: float | None = None) -> None:
        return None

    async def version(self, *, timeout: float | None = None) -> AgentVersion:
        return AgentVersion(agent_version="", api_version="")

    async def disconnect(self) -> None:
        return None

    async def create_sandbox(self, spec: SandboxSpec, *, timeout: float | None = None) -> None:
        return None

    async def start_sandbox(self, spec: SandboxSpec, *, timeout: float | None = None) -> None:
        return None

    async def stop_sandbox(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        return None

    async def create_container(
        self, container_id: str, spec: OciMapping, *, timeout: float | None = None
    ) -> None:
        return None

    async def start_container(self, container_id: str, *, timeout: float | None = None) -> None:
        return None

    async def stop_container(self, container_id: str, *, timeout: float | None = None) -> None:
        return None

    async def pause_container(self, container_id: str, *, timeout: float | None = None) -> None:
        return None

    async def resume_container(self, container_id: str, *, timeout: float | None = None) -> None:
        return None

    async def update_container(
        self, container_id: str, resources: OciMapping, *, timeout: float | None = None
    ) -> None:
        return None

    async def stats_container(
        self, container_id: str, *, timeout: float | None = None
    ) -> ContainerStats:
        return ContainerStats(cpu_usage_ns=0, memory_usage_bytes=0, pids=0)

    async def list_processes(
        self, container_id: str, *, format: str = "json", args: Sequence[str] = (),
        timeout: float | None = None,
    ) -> bytes:
        return b""

    async def exec_process(
        self, container_id: str, exec_id: str, process: ProcessSpec | OciMapping, *,
        timeout: float | None = None,
    ) -> None:
        return None

    async def signal_process(
        self, container_id: str, exec_id: str, signal: int, *, all: bool = False,
        timeout: float | None = None,
    ) -> None:
        return None

    async def resize_tty(
        self, container_id: str, exec_id: str, rows: int, cols: int, *,
        timeout: float | None = None,
    ) -> None:
        return None

    async def write_stdin(
        self, container_id: str, exec_id: str, data: bytes, *, timeout: float | None = None
    ) -> int:
        return len(data)

    async def close_stdin(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> None:
        return None

    async def read_stdout(
        self, container_id: str, exec_id: str, size: int, *, timeout: float | None = None
    ) -> bytes:
        return b""

    async def read_stderr(
        self, container_id: str, exec_id: str, size: int, *, timeout: float | None = None
    ) -> bytes:
        return b""

    async def wait_process(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> int:
        return 0

    async def online_cpu_mem(
        self, cpus: int, *, cpu_only: bool = False, wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        return None

    async def guest_details(self, *, timeout: float | None = None) -> Mapping[str, Any]:
        return {}

    async def copy_file(
        self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
        timeout: float | None = None, progress: Callable[[int, int], object] | None = None,
    ) -> None:
        if progress is not None:
            progress(len(data), len(data))

    async def get_oom_event(self, *, timeout: float | None = None) -> str:
        """No container ever runs out of memory here: waits until cancelled or timed out."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.Event().wait()
        except TimeoutError:
            raise AgentTimeout("no OOM event", operation="get_oom_event") from None
        raise AssertionError("unreachable")

    async def list_interfaces(
        self, *, timeout: float | None = None
    ) -> Sequence[Mapping[str, Any]]:
        return []

    async def list_routes(self, *, timeout: float | None = None) -> Sequence[Mapping[str, Any]]:
        return []

    async def get_metrics(self, *, timeout: float | None = None) -> str:
        return ""
