"""hyperstart on asyncio: the ctl and tty connections of one guest, host side.

Layer: protocols. A thin layer over the sans-I/O pieces (:mod:`.codec`, :mod:`.ctl`): two
``asyncio.Protocol`` objects feed bytes in and act on the events.

* ctl: after connecting, READY is awaited (bounded; a reconnecting host skips it), VERSION is
  checked, and commands go one at a time (an ``asyncio.Lock``). A command whose caller gave up
  (timeout, cancellation) is still outstanding in the guest, so the next command first waits for
  its reply. ERROR becomes an :class:`~agentio.errors.RpcError` via ``rpc_error``.
* tty: frames are demultiplexed by seq into per-process stdout/stderr buffers. Buffers are
  bounded: while one holds more than its limit, the tty connection stops reading (hyperstart
  has no per-stream flow control, so the backpressure reaches the guest's channel).
* exit: the end frame on the stdio seq ends stdout; PROCESSASYNCEVENT gives the status. stderr
  gets no end frame: it ends once stdout ended and the exit was reported. :meth:`ProcessIO.wait`
  returns the status only after stdout ended, bounded by a drain timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agentio.errors import (
    AgentError,
    AgentTimeout,
    ConfigError,
    ConnectionClosed,
    OutputIncomplete,
    ProtocolError,
    UnsupportedOperation,
    rpc_error,
)

from .codec import (
    MAX_CTL_PAYLOAD,
    MAX_TTY_PAYLOAD_IN,
    Code,
    TtyDecoder,
    code_name,
    decode_u32,
    encode_stdin_close,
    iter_stdin_frames,
)
from .ctl import Consumed, CtlClient, CtlState, Ready, Reply
from .messages import Command, ProcessEvent, error_text, version

log = logging.getLogger(__name__)

API_VERSION = 4244
SUPPORTED_API_VERSIONS = frozenset({4243, 4244})
"""4244 (current) and 4243; 4242 has no PROCESSASYNCEVENT, so exit statuses cannot be read."""
MAX_PROCESSES = 4096
"""Processes tracked per connection before new ones are refused."""

P = TypeVar("P", bound=asyncio.BaseProtocol)
Connector = Callable[[Callable[[], Any]], Awaitable[tuple[asyncio.Transport, Any]]]
"""Dials one channel: takes a protocol factory, returns ``(transport, protocol)``."""

_UNKNOWN = 2  # gRPC UNKNOWN: hyperstart's ERROR carries no status code
_NOT_FOUND = 5


class _Output:
    """One output stream of a process: bytes in arrival order, end of stream, or an error."""

    def __init__(self, name: str, limit: int, on_space: Callable[[], None]) -> None:
        self.name = name
        self.limit = limit
        self._on_space = on_space
        self.buffer = bytearray()
        self.eof = False
        self.error: AgentError | None = None
        self.drained = False  # a reader was told b"" (or the error)
        self._changed = asyncio.Event()

    @property
    def full(self) -> bool:
        return len(self.buffer) >= self.limit

    def feed(self, data: bytes) -> None:
        if self.eof:
            log.debug("%s: %d bytes after its end dropped", self.name, len(data))
            return
        self.buffer += data
        self._changed.set()

    def end(self, error: AgentError | None = None) -> None:
        if not self.eof:
            self.eof = True
            self.error = error
        self._changed.set()

    async def read(self, size: int) -> bytes:
        while not self.buffer and not self.eof:
            self._changed.clear()
            await self._changed.wait()
        if self.buffer:
            was_full = self.full
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
            if was_full and not self.full:
                self._on_space()
            return data
        self.drained = True
        if self.error is not None:
            raise self.error
        return b""

    async def ended(self) -> None:
        while not self.eof:
            self._changed.clear()
            await self._changed.wait()


class ProcessIO:
    """The host's view of one guest process: its seqs, output buffers and exit status."""

    def __init__(self, owner: HyperstartClient, container: str, process: str, stdio: int,
                 stderr: int, limit: int) -> None:
        self._owner = owner
        self.container = container
        self.process = process
        self.stdio = stdio
        self.stderr_seq = stderr
        self.stdout = _Output(f"{container}/{process} stdout", limit, owner._space_freed)
        self.stderr = _Output(f"{container}/{process} stderr", limit, owner._space_freed)
        if not stderr:
            self.stderr.end()
        self.status: int | None = None
        self.error: AgentError | None = None
        self._exited = asyncio.Event()
        self.waited = False

    def __repr__(self) -> str:
        return f"<ProcessIO {self.container}/{self.process} stdio={self.stdio}>"

    @property
    def exited(self) -> bool:
        """True once PROCESSASYNCEVENT (or a failure) was seen."""
        return self._exited.is_set()

    def _exit(self, status: int) -> None:
        if not self._exited.is_set():
            self.status = status
            self._exited.set()
            self._settle()

    def _fail(self, error: AgentError) -> None:
        self.stdout.end(error)
        self.stderr.end(error)
        if not self._exited.is_set():
            self.error = error
            self._exited.set()

    def _settle(self) -> None:
        # stderr has no end frame: it ends when stdout ended and the exit is known
        if self.stdout.eof and self._exited.is_set():
            self.stderr.end()

    async def wait(self, drain_timeout: float) -> int:
        """The exit status, once stdout has ended too (waiting at most ``drain_timeout``).

        If stdout does not end in time (a background child holds it open), both streams are
        cut with :class:`OutputIncomplete` rather than left hanging.
        """
        await self._exited.wait()
        if self.error is not None:
            raise self.error
        try:
            async with asyncio.timeout(drain_timeout):
                await self.stdout.ended()
        except TimeoutError:
            cut = OutputIncomplete(f"output still open {drain_timeout:g} s after the exit",
                                   operation="wait", container=self.container,
                                   exec=self.process)
            self.stdout.end(cut)
            self.stderr.end(cut)
        self._settle()
        self.waited = True
        self._owner._maybe_forget(self)
        assert self.status is not None
        return self.status

    async def read(self, stream: str, size: int) -> bytes:
        """Up to ``size`` bytes of ``stream`` (``"stdout"``/``"stderr"``); ``b""`` at its end."""
        if size <= 0:
            raise ConfigError(f"read size must be positive, not {size}")
        output = self.stdout if stream == "stdout" else self.stderr
        data = await output.read(size)
        if not data:
            self._owner._maybe_forget(self)
        return data


class HyperstartClient:
    """Both channels of one hyperstart guest.

    Args:
        ctl_connect, tty_connect: dial each channel (see :data:`Connector`).
        wait_ready: expect READY first (a freshly booted guest); ``False`` when reconnecting.
        ready_timeout: bound on the READY wait, seconds.
        max_payload: bound on ctl payloads either way.
        output_buffer: bytes one output stream may hold before the tty channel pauses.
    """

    def __init__(self, ctl_connect: Connector, tty_connect: Connector, *,
                 wait_ready: bool = True, ready_timeout: float = 30.0,
                 max_payload: int = MAX_CTL_PAYLOAD, output_buffer: int = 1 << 20,
                 max_processes: int = MAX_PROCESSES) -> None:
        self._ctl_connect = ctl_connect
        self._tty_connect = tty_connect
        self._ready_timeout = ready_timeout
        self._output_buffer = output_buffer
        self._max_processes = max_processes
        self._ctl = CtlClient(wait_ready=wait_ready, max_payload=max_payload)
        self._ctl_transport: asyncio.Transport | None = None
        self._tty_transport: asyncio.Transport | None = None
        self._ready: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._reply: asyncio.Future[Reply] | None = None
        self._writable: asyncio.Event | None = None
        self._closed: AgentError | None = None
        self._paused = False
        self._destroying = False
        self.api_version: int | None = None
        self._next_seq = 1 + (secrets.randbits(30) << 8)
        self._by_id: dict[tuple[str, str], ProcessIO] = {}
        self._by_seq: dict[int, tuple[ProcessIO, str]] = {}
        self._finished: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._connected = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._connected else "new"
        return f"<HyperstartClient {state} processes={len(self._by_id)}>"

    # -- connection ----------------------------------------------------------------------------

    async def connect(self, *, timeout: float | None = None) -> int:
        """Dial both channels, wait for READY, check VERSION; the guest's API version."""
        if self._connected:
            raise ConfigError("already connected")
        self._connected = True
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writable = asyncio.Event()
        self._writable.set()
        try:
            self._ctl_transport, _ = await self._ctl_connect(lambda: _CtlProtocol(self))
            self._tty_transport, _ = await self._tty_connect(lambda: _TtyProtocol(self))
            if self._ctl.state is CtlState.WAIT_READY:
                try:
                    async with asyncio.timeout(self._ready_timeout):
                        await self._wait_ready()
                except TimeoutError:
                    raise AgentTimeout(
                        f"no READY from hyperstart within {self._ready_timeout:g} s (a guest "
                        "sends it once, at boot: set wait_ready=false to reconnect)",
                        operation="READY") from None
            reply = await self.call(version(), timeout=timeout)
            self.api_version = decode_u32(reply, "VERSION reply")
            if self.api_version not in SUPPORTED_API_VERSIONS:
                raise UnsupportedOperation(
                    f"hyperstart API version {self.api_version} is not supported "
                    f"(supported: {', '.join(map(str, sorted(SUPPORTED_API_VERSIONS)))})",
                    operation="VERSION")
            return self.api_version
        except BaseException:
            self.close()
            raise

    async def _wait_ready(self) -> None:
        assert self._ready is not None
        await self._ready.wait()  # close() sets it too
        if self._closed is not None:
            raise self._closed

    @property
    def started(self) -> bool:
        """True once :meth:`connect` was called (whatever came of it)."""
        return self._connected

    @property
    def is_open(self) -> bool:
        """Connected and not closed."""
        return self._connected and self._closed is None

    def close(self, error: AgentError | None = None) -> None:
        """Close both channels; pending and later calls fail with ``error``. Idempotent."""
        if self._closed is not None:
            return
        self._closed = error or ConnectionClosed("hyperstart connection closed")
        for transport in (self._ctl_transport, self._tty_transport):
            if transport is not None:
                transport.close()
        if self._reply is not None and not self._reply.done():
            if self._destroying:
                self._reply.set_result(Reply(Code.DESTROYPOD, True, b""))
            else:
                self._reply.set_exception(self._closed)
        for io in list(self._by_id.values()):
            io._fail(self._closed)
        if self._ready is not None:
            self._ready.set()
        if self._writable is not None:
            self._writable.set()

    # -- commands ------------------------------------------------------------------------------

    async def call(self, command: Command, *, timeout: float | None) -> bytes:
        """Send one command and return its ACK payload; ERROR raises an RpcError.

        DESTROYPOD also succeeds when the guest closes the channel instead of answering.
        """
        if self._lock is None:
            raise ConfigError("not connected")
        name = code_name(command.code)
        async with self._lock:
            if self._reply is not None:
                # a caller gave up on the previous command: its reply must come first
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(self._reply)
                except TimeoutError:
                    raise AgentTimeout("the previous command is still unanswered",
                                       operation=name) from None
                except AgentError:
                    pass
                self._reply = None
            if self._closed is not None:
                raise type(self._closed)(self._closed.message, operation=name)
            transport = self._ctl_transport
            assert transport is not None
            frame = self._ctl.send(command.code, command.payload)
            self._destroying = command.code is Code.DESTROYPOD
            reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            reply.add_done_callback(_retrieve)  # a caller that gave up never reads it
            self._reply = reply
            transport.write(frame)
            try:
                async with asyncio.timeout(timeout):
                    result = await asyncio.shield(reply)
            except TimeoutError:
                raise AgentTimeout(f"no reply within {timeout:g} s", operation=name) from None
            self._reply = None
        if not result.ok:
            raise rpc_error(_UNKNOWN, error_text(result.payload) or "refused by hyperstart",
                            operation=name)
        if command.code is Code.DESTROYPOD:
            self.close(ConnectionClosed("the guest was destroyed (DESTROYPOD)"))
        return result.payload

    def _on_ctl_event(self, event: Ready | Reply | Consumed | ProcessEvent) -> None:
        if isinstance(event, Reply):
            if self._reply is not None and not self._reply.done():
                self._reply.set_result(event)
        elif isinstance(event, ProcessEvent):
            io = self._by_id.get((event.container, event.process))
            if io is None:
                log.debug("exit of unknown process %s/%s", event.container, event.process)
            elif event.event == "finished":
                io._exit(event.status)
        elif isinstance(event, Ready):
            assert self._ready is not None
            self._ready.set()

    # -- processes and stdio -------------------------------------------------------------------

    def allocate_seqs(self, *, terminal: bool) -> tuple[int, int]:
        """Fresh ``(stdio, stderr)`` seqs; stderr is 0 for a terminal (it shares the pty)."""
        stdio = self._next_seq
        self._next_seq += 2
        return stdio, 0 if terminal else stdio + 1

    def register(self, container: str, process: str, stdio: int, stderr: int) -> ProcessIO:
        """Start collecting a process's output (before the command that starts it is sent)."""
        if self._closed is not None:
            raise type(self._closed)(self._closed.message, operation="register",
                                     container=container, exec=process)
        if (container, process) in self._by_id:
            raise ConfigError(f"process {process!r} of container {container!r} already exists")
        if len(self._by_id) >= self._max_processes:
            raise ConfigError(f"more than {self._max_processes} processes tracked")
        io = ProcessIO(self, container, process, stdio, stderr, self._output_buffer)
        self._by_id[(container, process)] = io
        self._by_seq[stdio] = (io, "stdout")
        if stderr:
            self._by_seq[stderr] = (io, "stderr")
        return io

    def unregister(self, io: ProcessIO) -> None:
        """Forget a process (its start was refused, or it is fully consumed)."""
        key = (io.container, io.process)
        if self._by_id.get(key) is io:
            del self._by_id[key]
            if io.exited:
                self._finished[key] = None
                while len(self._finished) > self._max_processes:
                    self._finished.popitem(last=False)
        for seq in (io.stdio, io.stderr_seq):
            if seq and self._by_seq.get(seq, (None, ""))[0] is io:
                del self._by_seq[seq]
        self._space_freed()

    def process(self, container: str, process: str) -> ProcessIO:
        """The tracked process, or NOT_FOUND."""
        io = self._by_id.get((container, process))
        if io is None:
            raise rpc_error(_NOT_FOUND, f"no process {process!r} in container {container!r}")
        return io

    def recently_finished(self, container: str, process: str) -> bool:
        """True for a process that exited and was forgotten (the last few thousand)."""
        return (container, process) in self._finished

    def find(self, container: str, process: str) -> ProcessIO | None:
        """The tracked process, if any."""
        return self._by_id.get((container, process))

    def _maybe_forget(self, io: ProcessIO) -> None:
        if io.waited and io.stdout.drained and io.stderr.drained and not io.stderr.buffer:
            self.unregister(io)

    async def write_stdin(self, io: ProcessIO, data: bytes) -> int:
        """Send ``data`` to the process's stdin in frames of at most 512 bytes, in order."""
        transport = self._tty_open(io)
        for frame in iter_stdin_frames(io.stdio, data):
            transport.write(frame)
        await self._drain()
        return len(data)

    async def close_stdin(self, io: ProcessIO) -> None:
        """Close the process's stdin (a zero-length frame on its stdio seq); no-op once it
        exited."""
        if io.exited:
            return
        self._tty_open(io).write(encode_stdin_close(io.stdio))
        await self._drain()

    def _tty_open(self, io: ProcessIO) -> asyncio.Transport:
        if self._closed is not None or self._tty_transport is None:
            error = self._closed or ConnectionClosed("tty channel not connected")
            raise type(error)(error.message, container=io.container, exec=io.process)
        if io.exited:
            raise rpc_error(_NOT_FOUND, "the process has exited").add_context(
                container=io.container, exec=io.process)
        return self._tty_transport

    async def _drain(self) -> None:
        assert self._writable is not None
        await self._writable.wait()
        if self._closed is not None:
            raise self._closed

    def _on_tty_frame(self, seq: int, payload: bytes) -> None:
        entry = self._by_seq.get(seq)
        if entry is None:
            log.debug("tty frame for unknown seq %d (%d bytes) dropped", seq, len(payload))
            return
        io, stream = entry
        output = io.stdout if stream == "stdout" else io.stderr
        if payload:
            output.feed(payload)
            if output.full and not self._paused and self._tty_transport is not None:
                self._paused = True
                self._tty_transport.pause_reading()
        else:
            output.end()
            io._settle()

    def _space_freed(self) -> None:
        if not self._paused or self._tty_transport is None:
            return
        if any(io.stdout.full or io.stderr.full for io in self._by_id.values()):
            return
        self._paused = False
        with contextlib.suppress(RuntimeError):
            self._tty_transport.resume_reading()


def _retrieve(future: asyncio.Future[Reply]) -> None:
    if not future.cancelled():
        future.exception()


class _CtlProtocol(asyncio.Protocol):
    def __init__(self, owner: HyperstartClient) -> None:
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        try:
            events = owner._ctl.receive(data)
        except ProtocolError as exc:
            log.warning("hyperstart ctl: %s", exc)
            owner.close(exc)
            return
        for event in events:
            owner._on_ctl_event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.close(ConnectionClosed(f"ctl channel closed{f': {exc}' if exc else ''}"))


class _TtyProtocol(asyncio.Protocol):
    def __init__(self, owner: HyperstartClient) -> None:
        self._owner = owner
        self._decoder = TtyDecoder(MAX_TTY_PAYLOAD_IN)

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            log.warning("hyperstart tty: %s", exc)
            owner.close(exc)
            return
        for seq, payload in frames:
            owner._on_tty_frame(seq, payload)

    def pause_writing(self) -> None:
        if self._owner._writable is not None:
            self._owner._writable.clear()

    def resume_writing(self) -> None:
        if self._owner._writable is not None:
            self._owner._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.close(ConnectionClosed(f"tty channel closed{f': {exc}' if exc else ''}"))
