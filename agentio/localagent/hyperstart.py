"""A local hyperstart: the agent's ctl and tty channels on unix sockets, running host processes.

Layer: local agent. Built on the hyperstart codec (:mod:`agentio.protocols.hyperstart`) and
the local engine (:mod:`.containers`, :mod:`.processes`). Each :meth:`LocalHyperstart.serve`
is one "VM": a ctl socket and a tty socket, its own pod and containers.

It answers the way the real agent does in the recorded transcripts, refusals included: NEXT for
every header and payload it reads, one ACK or ERROR per command, READY once per guest (not on
reconnect), output in frames of at most 10240 bytes, stdin cut to 512 bytes per frame, a
zero-length frame on the stdio seq at the end of a process and then PROCESSASYNCEVENT, status 0
for a process killed by a signal the host sent, 127 and a message on stderr for a failed exec,
ERROR for unknown keys in pod and container objects (and keys after the first unknown one in a
process object ignored), and a "power off" (both channels closed, every process killed) where
the real guest would crash: a tty frame over 4096 bytes, an EXECCMD without a process id while
another process runs, a share directory it cannot mount, and DESTROYPOD.

WRITEFILE/READFILE paths are taken inside the container's private directory (not the host's
root). A container is dropped once its init process has exited, so REMOVECONTAINER is refused
for it, as the real agent does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal as signal_mod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AgentError, ProtocolError
from ..lifecycle import Closing
from ..protocols.hyperstart.codec import (
    MAX_STDIN_CHUNK,
    MAX_TTY_FRAME_OUT,
    TTY_HEADER_SIZE,
    Code,
    CtlDecoder,
    TtyDecoder,
    encode_ctl,
    encode_tty,
    encode_u32,
)
from .containers import LocalContainer, LocalSandbox, ProcessSpec
from .processes import EngineError, HostProcess
from .server import private_directory

log = logging.getLogger(__name__)

API_VERSION = 4244
OUTPUT_FRAME = 10240
"""Largest tty frame the guest sends (header included)."""
GUEST_CONTAINER = "hyperstart"
"""The pseudo-container naming the agent's own namespace in EXECCMD."""
MAX_FILE = 1 << 20

_POD_KEYS = frozenset({"hostname", "shareDir", "containers", "interfaces", "routes", "dns",
                       "restartPolicy", "portmappingWhiteLists"})
_CONTAINER_KEYS = frozenset({"id", "rootfs", "image", "addr", "fstype", "volumes", "fsmap",
                             "sysctl", "process", "restartPolicy", "initialize", "ports"})
_PROCESS_KEYS = frozenset({"id", "user", "group", "additionalGroups", "terminal", "stdio",
                           "stderr", "args", "envs", "workdir"})


class _Refused(Exception):
    """The command is answered ERROR (with ``reason`` as payload, if any)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class _PowerOff(Exception):
    """The real guest would crash or power off here (after answering ERROR if ``refuse``)."""

    def __init__(self, *, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse


@dataclass
class _Process:
    container: str
    id: str
    host: HostProcess | None
    stdio: int
    stderr: int
    terminal: bool
    signalled: bool = False
    spawn_error: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def _object(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Refused() from None
    if not isinstance(obj, dict):
        raise _Refused()
    return obj


def _process_fields(obj: object, *, strict: bool) -> dict[str, Any]:
    """Like the agent's process parser: it stops at the first unknown key. In EXECCMD the rest
    is ignored; inside a container object (``strict``) the parse then fails."""
    if not isinstance(obj, dict):
        raise _Refused()
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        if key not in _PROCESS_KEYS:
            if strict:
                raise _Refused()
            break
        fields[key] = value
    return fields


def _spec(fields: Mapping[str, Any]) -> ProcessSpec:
    args = fields.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise _Refused()
    env = []
    for entry in fields.get("envs") or []:
        if not isinstance(entry, dict) or set(entry) - {"env", "value"}:
            raise _Refused()
        env.append(f"{entry.get('env', '')}={entry.get('value', '')}")
    workdir = fields.get("workdir", "")
    return ProcessSpec(args=tuple(args), env=tuple(env),
                       cwd=workdir if isinstance(workdir, str) else "",
                       terminal=fields.get("terminal") is True)


def _seq(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class _Guest:
    """One VM's agent: pod state, processes, and the current ctl and tty connections."""

    def __init__(self, name: str, root: Path, *, share_tags: frozenset[str],
                 drain_timeout: float) -> None:
        self.name = name
        root.mkdir(mode=0o700, exist_ok=True)
        self.sandbox = LocalSandbox(name, workdir_root=str(root))
        self.sandbox.create_container(GUEST_CONTAINER, {})
        self.share_tags = share_tags
        self.drain_timeout = drain_timeout
        self.ready_sent = False
        self.pod_started = False
        self.dead = False
        self.ctl: asyncio.StreamWriter | None = None
        self.tty: asyncio.StreamWriter | None = None
        self.tty_up = asyncio.Event()
        self.processes: dict[tuple[str, str], _Process] = {}
        self.by_seq: dict[int, _Process] = {}
        self.used_ids: set[tuple[str, str]] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    # -- connections ---------------------------------------------------------------------------

    async def serve_ctl(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dead:
            writer.close()
            return
        if self.ctl is not None:
            self.ctl.close()
        self.ctl = writer
        if not self.ready_sent:
            self.ready_sent = True
            writer.write(encode_ctl(Code.READY))
        decoder = CtlDecoder()
        try:
            while data := await reader.read(65536):
                for code, payload in decoder.feed(data):
                    writer.write(encode_ctl(Code.NEXT, encode_u32(8)))
                    if payload:
                        writer.write(encode_ctl(Code.NEXT, encode_u32(len(payload))))
                    await self._answer(writer, code, payload)
                await writer.drain()
        except _PowerOff as off:
            if off.refuse:
                writer.write(encode_ctl(Code.ERROR))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
            await self.power_off()
        except (ProtocolError, ConnectionError) as exc:
            log.debug("guest %s: ctl connection ends: %s", self.name, exc)
        finally:
            if self.ctl is writer:
                self.ctl = None
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, code: int, payload: bytes) -> None:
        try:
            reply = await self._command(code, payload)
        except _Refused as refusal:
            text = refusal.reason.encode() + b"\0" if refusal.reason else b""
            writer.write(encode_ctl(Code.ERROR, text))
            return
        except EngineError as exc:
            log.debug("guest %s: %s refused: %s", self.name, code, exc)
            writer.write(encode_ctl(Code.ERROR))
            return
        writer.write(encode_ctl(Code.ACK, reply))
        if code == Code.DESTROYPOD:
            await writer.drain()
            raise _PowerOff()

    async def serve_tty(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dead:
            writer.close()
            return
        if self.tty is not None:
            self.tty.close()
        self.tty = writer
        self.tty_up.set()
        decoder = TtyDecoder(max_payload=1 << 20)
        try:
            while data := await reader.read(65536):
                for seq, payload in decoder.feed(data):
                    if TTY_HEADER_SIZE + len(payload) > MAX_TTY_FRAME_OUT:
                        log.warning("guest %s: %d-byte tty frame: the real guest panics here",
                                    self.name, TTY_HEADER_SIZE + len(payload))
                        raise _PowerOff()
                    await self._stdin(seq, payload)
        except _PowerOff:
            await self.power_off()
        except (ProtocolError, ConnectionError) as exc:
            log.debug("guest %s: tty connection ends: %s", self.name, exc)
        finally:
            if self.tty is writer:
                self.tty = None
                self.tty_up.clear()
            writer.close()

    async def _stdin(self, seq: int, payload: bytes) -> None:
        proc = self.by_seq.get(seq)
        if proc is None or proc.host is None:
            if self.tty is not None:  # the agent answers stdin for an unknown seq with an end
                self.tty.write(encode_tty(seq))
            return
        if not payload:
            proc.host.close_stdin()
            return
        with contextlib.suppress(EngineError):
            await proc.host.write_stdin(payload[:MAX_STDIN_CHUNK])

    async def power_off(self) -> None:
        """Close both channels and kill everything, as a crashed or halted guest would."""
        if self.dead:
            return
        self.dead = True
        for writer in (self.ctl, self.tty):
            if writer is not None:
                writer.close()
        self.ctl = self.tty = None
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(AgentError):
            await self.sandbox.destroy()

    # -- commands ------------------------------------------------------------------------------

    async def _command(self, code: int, payload: bytes) -> bytes:
        if code == Code.VERSION:
            return encode_u32(API_VERSION)
        if code in (Code.PING, Code.READY, Code.ONLINECPUMEM):
            return b""
        if code == Code.STARTPOD:
            return self._start_pod(_object(payload))
        if code == Code.NEWCONTAINER:
            return await self._new_container(_object(payload))
        if code == Code.EXECCMD:
            return self._exec(_object(payload))
        if code == Code.WINSIZE:
            obj = _object(payload)
            proc = self._find(obj.get("container"), obj.get("process"))
            rows, cols = obj.get("row"), obj.get("column")
            if proc.host is None or not isinstance(rows, int) or not isinstance(cols, int):
                raise _Refused()
            proc.host.resize(rows, cols)
            return b""
        if code == Code.SIGNALPROCESS:
            obj = _object(payload)
            proc = self._find(obj.get("container"), obj.get("process"))
            sig = obj.get("signal")
            if proc.host is None or not isinstance(sig, int):
                raise _Refused()
            proc.host.signal(sig)
            proc.signalled = True
            return b""
        if code == Code.KILLCONTAINER:
            return self._kill_container(_object(payload))
        if code == Code.REMOVECONTAINER:
            obj = _object(payload)
            self._container(obj.get("container"))
            raise _Refused()  # running: refused; finished: already gone
        if code in (Code.WRITEFILE, Code.READFILE):
            return self._file(code, payload)
        if code == Code.SETUPINTERFACE:
            obj = _object(payload)
            if obj.get("device") != "lo" or not obj.get("ipAddresses"):
                raise _Refused()
            return b""
        if code == Code.SETUPROUTE:
            routes = _object(payload).get("routes")
            if not isinstance(routes, list) or any(
                    not isinstance(r, dict) or set(r) - {"dest", "gateway", "device"}
                    for r in routes):
                raise _Refused()
            return b""
        if code == Code.DESTROYPOD:
            await self._destroy_pod()
            return b""
        raise _Refused()  # DELETEINTERFACE of a device we do not have, deprecated, unknown

    def _start_pod(self, obj: dict[str, Any]) -> bytes:
        if set(obj) - _POD_KEYS:
            raise _Refused()
        share = obj.get("shareDir")
        if share is not None and share not in self.share_tags:
            log.warning("guest %s: cannot mount share %r: the real guest powers off",
                        self.name, share)
            raise _PowerOff(refuse=True)
        self.pod_started = True
        return b""

    async def _new_container(self, obj: dict[str, Any]) -> bytes:
        if not self.pod_started or set(obj) - _CONTAINER_KEYS:
            raise _Refused()
        container_id = obj.get("id")
        fields = _process_fields(obj.get("process"), strict=True)
        if not isinstance(container_id, str) or not container_id or not fields:
            raise _Refused()
        if container_id in self.sandbox.containers:
            raise _Refused()
        spec = _spec(fields)
        container = self.sandbox.create_container(container_id, {"process": {
            "args": list(spec.args), "env": list(spec.env), "cwd": spec.cwd,
            "terminal": spec.terminal}})
        process_id = fields.get("id") if isinstance(fields.get("id"), str) else "(null)"
        try:
            host = container.start()
        except EngineError:
            with contextlib.suppress(AgentError):
                await self.sandbox.remove_container(container_id)
            raise _Refused() from None
        self._track(_Process(container_id, str(process_id), host, _seq(fields.get("stdio")),
                             _seq(fields.get("stderr")), spec.terminal))
        return b""

    def _exec(self, obj: dict[str, Any]) -> bytes:
        container_id = obj.get("container")
        if not isinstance(container_id, str) or not container_id:
            raise _Refused()
        fields = _process_fields(obj.get("process"), strict=False)
        stdio = _seq(fields.get("stdio"))
        if not stdio:
            raise _Refused()
        spec = _spec(fields)
        if container_id == GUEST_CONTAINER and spec.terminal and not self.pod_started:
            raise _Refused()  # no devpts before the pod is up
        container = self._container(container_id)
        if container.init is not None and container.init.returncode is not None:
            raise _Refused()
        process_id = fields.get("id")
        if not isinstance(process_id, str) or not process_id:
            if self.processes:
                log.warning("guest %s: EXECCMD without a process id while processes run: the "
                            "real agent crashes here", self.name)
                raise _PowerOff()
            process_id = "(null)"
        if (container_id, process_id) in self.used_ids:
            raise _Refused()  # ids are not reused, "(null)" included
        proc = _Process(container_id, process_id, None, stdio, _seq(fields.get("stderr")),
                        spec.terminal)
        try:
            proc.host = container.exec_process(process_id, spec)
        except EngineError as exc:
            # the agent forks first: the exec fails in the child, after the ACK
            proc.spawn_error = str(exc.message).split(":", 1)[0]
        self._track(proc)
        return b""

    def _kill_container(self, obj: dict[str, Any]) -> bytes:
        container_id, sig = obj.get("container"), obj.get("signal")
        if not isinstance(container_id, str) or container_id not in self.sandbox.containers:
            raise _Refused("no such container")
        if not isinstance(sig, int) or isinstance(sig, bool):
            raise _Refused()
        self.sandbox.container(container_id).signal("", sig)
        for proc in self.processes.values():
            if proc.container == container_id:
                proc.signalled = True
        return b""

    def _file(self, code: int, payload: bytes) -> bytes:
        try:
            obj, end = json.JSONDecoder().raw_decode(payload.decode("latin-1"))
        except ValueError:
            raise _Refused() from None
        if not isinstance(obj, dict) or set(obj) != {"container", "file"}:
            raise _Refused()
        container = self._container(obj["container"])
        path = obj["file"]
        if not isinstance(path, str) or not path or "\0" in path:
            raise _Refused()
        target = Path(container.workdir, path.lstrip("/")).resolve()
        if not target.is_relative_to(Path(container.workdir).resolve()):
            raise _Refused()
        try:
            if code == Code.WRITEFILE:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(payload[end:])
                return b""
            with target.open("rb") as f:
                return f.read(MAX_FILE)
        except OSError:
            raise _Refused() from None

    async def _destroy_pod(self) -> None:
        for container in list(self.sandbox.containers.values()):
            container.signal("", signal_mod.SIGKILL)
        for proc in self.processes.values():
            proc.signalled = True
        pending = [p.task for p in self.processes.values() if p.task is not None]
        if pending:
            await asyncio.wait(pending, timeout=self.drain_timeout)

    def _container(self, container_id: object) -> LocalContainer:
        if not isinstance(container_id, str) or container_id not in self.sandbox.containers:
            raise _Refused()
        return self.sandbox.container(container_id)

    def _find(self, container_id: object, process_id: object) -> _Process:
        proc = self.processes.get((str(container_id), str(process_id)))
        if proc is None:
            raise _Refused()
        return proc

    # -- processes -----------------------------------------------------------------------------

    def _track(self, proc: _Process) -> None:
        self.processes[(proc.container, proc.id)] = proc
        self.used_ids.add((proc.container, proc.id))
        self.by_seq[proc.stdio] = proc
        proc.task = asyncio.create_task(self._run(proc), name=f"hyperstart:{proc.id}")
        self.tasks.add(proc.task)
        proc.task.add_done_callback(self.tasks.discard)

    async def _run(self, proc: _Process) -> None:
        if proc.host is None:
            await self._output(proc.stderr or proc.stdio,
                               f"exec failed: {proc.spawn_error}\n".encode())
            status = 127
        else:
            host = proc.host
            await asyncio.gather(self._pump(proc.stdio, host.read_stdout),
                                 self._pump(proc.stderr, host.read_stderr))
            status = await host.wait()
            if proc.signalled and status > 128:
                status = 0  # the agent reports a process killed by a signal as 0
        await self._output(proc.stdio, b"")
        self.processes.pop((proc.container, proc.id), None)
        if self.by_seq.get(proc.stdio) is proc:
            del self.by_seq[proc.stdio]
        event = {"container": proc.container, "process": proc.id, "event": "finished",
                 "status": status}
        if self.ctl is not None:
            self.ctl.write(encode_ctl(Code.PROCESSASYNCEVENT, json.dumps(
                event, separators=(",", ":")).encode()))
        await self._forget(proc)

    async def _forget(self, proc: _Process) -> None:
        if proc.container not in self.sandbox.containers:
            return
        container = self.sandbox.container(proc.container)
        if proc.host is not None and proc.host is container.init:
            with contextlib.suppress(AgentError):  # the container ends with its init
                await self.sandbox.remove_container(proc.container)
        elif proc.host is not None:
            with contextlib.suppress(AgentError):
                container.forget(proc.id)

    async def _pump(self, seq: int, read: Any) -> None:
        try:
            while data := await read(OUTPUT_FRAME - TTY_HEADER_SIZE):
                if seq:
                    await self._output(seq, data)
        except EngineError as exc:
            log.debug("guest %s: output seq %d ends: %s", self.name, seq, exc)

    async def _output(self, seq: int, data: bytes) -> None:
        await self.tty_up.wait()
        if self.tty is not None:
            self.tty.write(encode_tty(seq, data, max_frame=OUTPUT_FRAME))
            with contextlib.suppress(ConnectionError):
                await self.tty.drain()


class LocalHyperstart(Closing):
    """Serves local hyperstart guests, each on a ctl and a tty unix socket.

    Args:
        directory: where sockets and container directories go (private; a temporary one when
            ``None``, removed on :meth:`close`).
        share_tags: the 9p tags STARTPOD's ``shareDir`` may name; another one powers off.
        drain_timeout: how long DESTROYPOD waits for processes to end before answering.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *,
                 share_tags: tuple[str, ...] = ("hyperShared",),
                 drain_timeout: float = 5.0) -> None:
        self.directory, self._created = private_directory(directory)
        self._share_tags = frozenset(share_tags)
        self._drain_timeout = drain_timeout
        self._servers: list[asyncio.Server] = []
        self._guests: list[_Guest] = []
        self._count = 0

    async def serve(self, name: str | None = None) -> tuple[str, str]:
        """Start one guest; its ``(ctl, tty)`` addresses (``unix://`` URLs)."""
        self._count += 1
        name = name or f"hs{self._count}"
        guest = _Guest(name, self.directory / f"{name}.d", share_tags=self._share_tags,
                       drain_timeout=self._drain_timeout)
        self._guests.append(guest)
        paths = []
        for channel, handler in (("ctl", guest.serve_ctl), ("tty", guest.serve_tty)):
            path = self.directory / f"{name}.{channel}"
            server = await asyncio.start_unix_server(handler, path=str(path))
            os.chmod(path, 0o600)
            self._servers.append(server)
            paths.append(f"unix://{path}")
        return paths[0], paths[1]

    async def close(self) -> None:
        """Stop serving, kill every process, remove what we created."""
        for server in self._servers:
            server.close()
        for guest in self._guests:
            await guest.power_off()
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        self._servers.clear()
        if self._created:
            shutil.rmtree(self.directory, ignore_errors=True)

