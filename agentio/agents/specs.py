"""Plain values the agent operations take and return, the same for every agent type.

Layer: agents. Adapters translate these to and from their wire messages; nothing here knows a
protocol. OCI structures are plain mappings in the OCI runtime-spec JSON shape (what
``config.json`` holds), so callers can pass what their runtime already has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OciMapping = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """A process to run in a container: the parts of OCI ``process`` callers usually set."""

    args: Sequence[str]
    env: Sequence[str] = (DEFAULT_PATH_ENV,)
    cwd: str = "/"
    terminal: bool = False
    uid: int = 0
    gid: int = 0
    additional_gids: Sequence[int] = ()
    no_new_privileges: bool = False
    console_size: tuple[int, int] | None = None
    """(rows, cols) of the terminal, when ``terminal`` is set."""

    def to_oci(self) -> dict[str, Any]:
        """The OCI runtime-spec ``process`` object for this process."""
        process: dict[str, Any] = {
            "terminal": self.terminal,
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
            "noNewPrivileges": self.no_new_privileges,
        }
        if self.uid or self.gid or self.additional_gids:
            # root with no extra groups is the agent's default: sent as no user at all
            process["user"] = {"uid": self.uid, "gid": self.gid}
            if self.additional_gids:
                process["user"]["additionalGids"] = list(self.additional_gids)
        if self.terminal and self.console_size:
            rows, cols = self.console_size
            process["consoleSize"] = {"height": rows, "width": cols}
        return process


def process_to_oci(process: ProcessSpec | OciMapping) -> dict[str, Any]:
    """An OCI ``process`` object from a :class:`ProcessSpec` or an OCI mapping given as is."""
    if isinstance(process, ProcessSpec):
        return process.to_oci()
    return dict(process)


def is_terminal(process: ProcessSpec | OciMapping) -> bool:
    """Whether the process runs on a terminal."""
    if isinstance(process, ProcessSpec):
        return process.terminal
    return bool(process.get("terminal", False))


def default_container_spec(
    process: ProcessSpec,
    *,
    container_id: str,
    hostname: str = "",
    rootfs: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A minimal OCI runtime spec running ``process``, shaped like what Kata's runtime sends.

    ``rootfs`` defaults to the guest path where Kata shares container root filesystems.
    """
    return {
        "ociVersion": "1.1.0",
        "process": process.to_oci(),
        "root": {"path": rootfs or f"/run/kata-containers/shared/containers/{container_id}/rootfs"},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
        ],
        "annotations": dict(annotations or {}),
        "linux": {"namespaces": [{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
    }


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What the agent needs to set a sandbox (a VM's pod) up."""

    sandbox_id: str
    hostname: str = ""
    dns: Sequence[str] = ()
    kernel_modules: Sequence[str] = ()
    sandbox_pidns: bool = False
    guest_hook_path: str = ""


@dataclass(frozen=True, slots=True)
class AgentVersion:
    """What the agent says about itself."""

    agent_version: str
    api_version: str


class LazyMapping(Mapping[str, Any]):
    """A mapping built on first use: converting a whole agent answer to a dict can cost far
    more than the figures most callers read (megabytes of per-CPU counters)."""

    def __init__(self, build: Callable[[], Mapping[str, Any]]) -> None:
        self._build: Callable[[], Mapping[str, Any]] | None = build
        self._value: Mapping[str, Any] = {}

    def _mapping(self) -> Mapping[str, Any]:
        if self._build is not None:
            self._value, self._build = self._build(), None
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return "LazyMapping(<not built yet>)" if self._build is not None \
            else f"LazyMapping({self._value!r})"


@dataclass(frozen=True, slots=True)
class ContainerStats:
    """Headline figures of a container, plus everything the agent sent in ``raw``."""

    cpu_usage_ns: int
    memory_usage_bytes: int
    pids: int
    raw: Mapping[str, Any] = field(default_factory=dict)
