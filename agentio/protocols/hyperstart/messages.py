"""hyperstart ctl payloads: the JSON objects the agent knows, built with only its keys.

Layer: protocols. Pure values and functions; imports only :mod:`agentio.errors` and the codec.

hyperstart's JSON parser refuses an unknown key in a pod or container object, and in a process
object silently ignores every key after the first unknown one (so ``args`` could be lost). The
classes here therefore emit only the keys the agent parses, omit optional ones left at their
defaults, and refuse strings the agent's C parser would cut short (NUL bytes). Every process
must carry an ``id``: an EXECCMD without one while another process runs crashes the agent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from agentio.errors import ConfigError, ProtocolError

from .codec import Code

_MAX_EVENT_TEXT = 4096


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise ConfigError(f"{what} contains a NUL character")
    return value


def _nonempty(value: object, what: str) -> str:
    text = _text(value, what)
    if not text:
        raise ConfigError(f"{what} must not be empty")
    return text


def _seq(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise ConfigError(f"{what} must be an integer in 0..2**63-1")
    return value


@dataclass(frozen=True, slots=True)
class HyperProcess:
    """A hyperstart ``process`` object.

    ``stdio`` is the tty seq of stdin+stdout (required: the agent refuses 0), ``stderr`` the
    seq of stderr (0 = none, as for a terminal). ``envs`` are ``(name, value)`` pairs.
    """

    id: str
    args: Sequence[str]
    stdio: int
    stderr: int = 0
    envs: Sequence[tuple[str, str]] = ()
    workdir: str = ""
    terminal: bool = False
    user: str = ""
    group: str = ""
    additional_groups: Sequence[str] = ()

    def __post_init__(self) -> None:
        _nonempty(self.id, "process id")
        if isinstance(self.args, str) or not self.args:
            raise ConfigError("process args must be a non-empty list of strings")
        for arg in self.args:
            _text(arg, "process arg")
        if _seq(self.stdio, "process stdio seq") == 0:
            raise ConfigError("process stdio seq must not be 0")
        _seq(self.stderr, "process stderr seq")
        for name, value in self.envs:
            _nonempty(name, "env name")
            _text(value, f"env {name}")
        for what in ("workdir", "user", "group"):
            _text(getattr(self, what), f"process {what}")
        for group in self.additional_groups:
            _text(group, "additional group")

    def to_json(self) -> dict[str, Any]:
        """The JSON object, known keys only, ``id`` first."""
        obj: dict[str, Any] = {"id": self.id}
        if self.user:
            obj["user"] = self.user
        if self.group:
            obj["group"] = self.group
        if self.additional_groups:
            obj["additionalGroups"] = list(self.additional_groups)
        obj["args"] = list(self.args)
        if self.envs:
            obj["envs"] = [{"env": name, "value": value} for name, value in self.envs]
        obj["stdio"] = self.stdio
        if self.stderr:
            obj["stderr"] = self.stderr
        if self.workdir:
            obj["workdir"] = self.workdir
        if self.terminal:
            obj["terminal"] = True
        return obj


@dataclass(frozen=True, slots=True)
class HyperContainer:
    """A hyperstart container (NEWCONTAINER): its rootfs under the shared directory, its init.

    The agent mounts ``<shareDir>/<image>/<rootfs>``; ``restart_policy`` and ``initialize``
    are sent only when set.
    """

    id: str
    process: HyperProcess
    rootfs: str = "rootfs"
    image: str = ""
    fstype: str = ""
    restart_policy: str | None = None
    initialize: bool | None = None
    sysctl: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _nonempty(self.id, "container id")
        for what in ("rootfs", "image", "fstype"):
            _text(getattr(self, what), f"container {what}")
        if self.restart_policy is not None:
            _text(self.restart_policy, "container restartPolicy")
        for key, value in self.sysctl.items():
            _nonempty(key, "sysctl key")
            _text(value, f"sysctl {key}")

    def to_json(self) -> dict[str, Any]:
        """The JSON object, known keys only."""
        obj: dict[str, Any] = {"id": self.id}
        if self.rootfs:
            obj["rootfs"] = self.rootfs
        if self.image:
            obj["image"] = self.image
        if self.fstype:
            obj["fstype"] = self.fstype
        if self.sysctl:
            obj["sysctl"] = dict(self.sysctl)
        obj["process"] = self.process.to_json()
        if self.restart_policy is not None:
            obj["restartPolicy"] = self.restart_policy
        if self.initialize is not None:
            obj["initialize"] = self.initialize
        return obj


@dataclass(frozen=True, slots=True)
class HyperPod:
    """The STARTPOD object: hostname, the 9p share tag, DNS servers.

    A ``share_dir`` tag the guest cannot mount makes the real agent power the VM off: leave it
    empty unless the VMM exports that tag.
    """

    hostname: str = ""
    share_dir: str = ""
    dns: Sequence[str] = ()

    def __post_init__(self) -> None:
        _text(self.hostname, "pod hostname")
        _text(self.share_dir, "pod shareDir")
        for server in self.dns:
            _nonempty(server, "dns server")

    def to_json(self) -> dict[str, Any]:
        """The JSON object, known keys only."""
        obj: dict[str, Any] = {}
        if self.hostname:
            obj["hostname"] = self.hostname
        if self.share_dir:
            obj["shareDir"] = self.share_dir
        if self.dns:
            obj["dns"] = list(self.dns)
        return obj


class Command(NamedTuple):
    """A host command ready to frame: its code and payload."""

    code: Code
    payload: bytes = b""


# --- command builders ---------------------------------------------------------------------


def version() -> Command:
    """VERSION: the ACK carries the API version as a u32."""
    return Command(Code.VERSION)


def ping() -> Command:
    """PING: a liveness check."""
    return Command(Code.PING)


def start_pod(pod: HyperPod) -> Command:
    """STARTPOD."""
    return Command(Code.STARTPOD, _dumps(pod.to_json()))


def destroy_pod() -> Command:
    """DESTROYPOD: kills every container; the guest then powers off."""
    return Command(Code.DESTROYPOD)


def new_container(container: HyperContainer) -> Command:
    """NEWCONTAINER: creates the container and starts its init process."""
    return Command(Code.NEWCONTAINER, _dumps(container.to_json()))


def exec_cmd(container_id: str, process: HyperProcess) -> Command:
    """EXECCMD: another process in a container (``"hyperstart"`` = the agent's own namespace)."""
    return Command(Code.EXECCMD, _dumps({"container": _nonempty(container_id, "container id"),
                                         "process": process.to_json()}))


def winsize(container_id: str, process_id: str, rows: int, cols: int) -> Command:
    """WINSIZE: resize a terminal process's window."""
    for what, value in (("rows", rows), ("cols", cols)):
        if not isinstance(value, int) or not 0 < value <= 0xFFFF:
            raise ConfigError(f"{what} must be 1..65535, not {value!r}")
    return Command(Code.WINSIZE, _dumps({"container": _nonempty(container_id, "container id"),
                                         "process": _nonempty(process_id, "process id"),
                                         "row": rows, "column": cols}))


def _signal(sig: int) -> int:
    if not isinstance(sig, int) or isinstance(sig, bool) or not 0 < sig < 65:
        raise ConfigError(f"signal must be 1..64, not {sig!r}")
    return int(sig)


def signal_process(container_id: str, process_id: str, sig: int) -> Command:
    """SIGNALPROCESS: one process of a container."""
    return Command(Code.SIGNALPROCESS, _dumps({
        "container": _nonempty(container_id, "container id"),
        "process": _nonempty(process_id, "process id"), "signal": _signal(sig)}))


def kill_container(container_id: str, sig: int) -> Command:
    """KILLCONTAINER: signal every process of a container."""
    return Command(Code.KILLCONTAINER, _dumps({
        "container": _nonempty(container_id, "container id"), "signal": _signal(sig)}))


def remove_container(container_id: str) -> Command:
    """REMOVECONTAINER."""
    return Command(Code.REMOVECONTAINER,
                   _dumps({"container": _nonempty(container_id, "container id")}))


def write_file(container_id: str, path: str, data: bytes) -> Command:
    """WRITEFILE: the JSON object immediately followed by the file's bytes."""
    head = _dumps({"container": _nonempty(container_id, "container id"),
                   "file": _nonempty(path, "file path")})
    return Command(Code.WRITEFILE, head + bytes(data))


def read_file(container_id: str, path: str) -> Command:
    """READFILE: the ACK carries the file's bytes."""
    return Command(Code.READFILE, _dumps({"container": _nonempty(container_id, "container id"),
                                          "file": _nonempty(path, "file path")}))


def online_cpu_mem() -> Command:
    """ONLINECPUMEM: bring hot-plugged CPUs and memory online."""
    return Command(Code.ONLINECPUMEM)


def setup_interface(device: str, *, new_name: str = "",
                    addresses: Sequence[tuple[str, str]] = (), mtu: int = 0) -> Command:
    """SETUPINTERFACE: ``addresses`` are ``(ip, mask-bits)`` pairs."""
    obj: dict[str, Any] = {"device": _nonempty(device, "device")}
    if new_name:
        obj["newDeviceName"] = _text(new_name, "new device name")
    obj["ipAddresses"] = [{"ipAddress": _nonempty(ip, "ip address"),
                           "netMask": _nonempty(mask, "net mask")} for ip, mask in addresses]
    if mtu:
        obj["mtu"] = int(mtu)
    return Command(Code.SETUPINTERFACE, _dumps(obj))


def setup_route(routes: Sequence[Mapping[str, str]]) -> Command:
    """SETUPROUTE: each route has some of ``dest``, ``gateway``, ``device``."""
    clean = []
    for route in routes:
        unknown = set(route) - {"dest", "gateway", "device"}
        if unknown:
            raise ConfigError(f"route keys {sorted(unknown)} are not known to hyperstart")
        clean.append({k: _text(v, f"route {k}") for k, v in route.items()})
    return Command(Code.SETUPROUTE, _dumps({"routes": clean}))


def delete_interface(device: str) -> Command:
    """DELETEINTERFACE."""
    return Command(Code.DELETEINTERFACE, _dumps({"device": _nonempty(device, "device")}))


# --- guest payloads -----------------------------------------------------------------------


class ProcessEvent(NamedTuple):
    """A PROCESSASYNCEVENT: ``event`` is ``"finished"`` with the exit ``status``."""

    container: str
    process: str
    event: str
    status: int


def parse_process_event(payload: bytes) -> ProcessEvent:
    """Decode a PROCESSASYNCEVENT payload; :class:`ProtocolError` if it is not one."""
    try:
        obj = json.loads(payload.rstrip(b"\0").decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"PROCESSASYNCEVENT is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("PROCESSASYNCEVENT is not a JSON object")
    container, process, event = obj.get("container"), obj.get("process"), obj.get("event")
    status = obj.get("status", 0)
    if not (isinstance(container, str) and isinstance(process, str)
            and isinstance(event, str)):
        raise ProtocolError("PROCESSASYNCEVENT lacks container, process or event")
    if (not isinstance(status, int) or isinstance(status, bool)
            or not -(1 << 31) <= status < 1 << 32):
        raise ProtocolError(f"PROCESSASYNCEVENT status {status!r:.40} is not a number")
    if max(len(container), len(process), len(event)) > _MAX_EVENT_TEXT:
        raise ProtocolError("PROCESSASYNCEVENT field too long")
    return ProcessEvent(container, process, event, status)


def error_text(payload: bytes) -> str:
    """The reason an ERROR carries (often none): NUL-terminated text, decoded leniently."""
    return payload.split(b"\0", 1)[0][:_MAX_EVENT_TEXT].decode("utf-8", "replace")
