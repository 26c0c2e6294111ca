"""Fault injection between a client and an agent: a proxy and a scripted ttrpc peer.

Layer: testing. Imports :mod:`agentio.errors`, the transports' address parser and the
sans-I/O ttrpc codec; nothing from the public API, so tests of any layer can use it.

:class:`FaultProxy` listens on a private unix socket and forwards every connection it accepts
to an upstream unix socket (a :class:`~agentio.localagent.LocalAgent`, a :class:`ScriptedTtrpcPeer`,
a real agent's socket). Each direction is cut into *units*: whole ttrpc frames (found with
the codec's :class:`~agentio.protocols.ttrpc.codec.FrameDecoder`) or, in raw mode, the chunks
as read. Injected :class:`Fault` objects act on the units they match::

    async with FaultProxy(agent_address, sock_dir) as proxy:
        proxy.inject(Drop(method="WaitProcess", count=None))     # stop answering one method
        proxy.inject(Delay(seconds=0.2, direction=Direction.TO_AGENT))
        agent = open_agent(proxy.address)

With ``vmm_port`` set the proxy plays a hybrid-vsock VMM: it reads ``CONNECT <port>\\n`` and
sends ``OK <host_port>\\n`` as the first unit towards the client, so faults with
``handshake=True`` can break the reply.

Everything is bounded: queued bytes per direction (``max_buffer``), frame size
(``max_frame``; a larger frame ends that connection), connections, every duration (finite),
endless streams (``max_bytes``). Closing the proxy cancels and awaits all of its tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from agentio.errors import ConfigError, ProtocolError, RpcError
from agentio.lifecycle import Serving
from agentio.protocols.ttrpc.codec import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    Request,
    decode_request,
    encode_frame,
    encode_header,
    encode_response,
)
from agentio.transports.address import parse_address

logger = logging.getLogger(__name__)

Framing = Literal["ttrpc", "raw"]

_READ_CHUNK: Final = 64 * 1024
_MAX_METHODS: Final = 65_536  # stream id -> method entries remembered per connection
_MAX_HANDSHAKE_LINE: Final = 64
_UNIMPLEMENTED: Final = 12


class Direction(enum.Enum):
    """Which way bytes flow through the proxy."""

    TO_AGENT = "to_agent"
    """Client to upstream: requests."""
    TO_CLIENT = "to_client"
    """Upstream to client: responses (and the hybrid-vsock reply)."""


def _check_seconds(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number of seconds >= 0, not {value!r}")


# --- faults ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Fault:
    """What a fault matches; subclasses say what it does to a matching unit.

    Attributes:
        direction: the direction whose units it looks at.
        method: only frames of calls to this bare method name (ttrpc framing only; a response
            is matched through the request seen earlier on its stream id).
        stream_id: only frames on this stream id.
        frame_type: only frames of this ttrpc type (1 request, 2 response, 3 data).
        handshake: match the hybrid-vsock ``OK`` reply (and nothing else) instead of frames.
        skip: matching units let through untouched before the fault starts acting.
        count: matching units it acts on, then it is spent; ``None``: every one, until removed.

    When several injected faults match one unit, the one injected first acts.
    """

    direction: Direction = Direction.TO_CLIENT
    method: str | None = None
    stream_id: int | None = None
    frame_type: int | None = None
    handshake: bool = False
    skip: int = 0
    count: int | None = 1

    def __post_init__(self) -> None:
        if self.skip < 0:
            raise ConfigError("Fault.skip must be >= 0")
        if self.count is not None and self.count <= 0:
            raise ConfigError("Fault.count must be positive or None")


@dataclass(frozen=True, kw_only=True)
class Delay(Fault):
    """Hold each matching unit for ``seconds`` before forwarding it (order is kept)."""

    seconds: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_seconds("Delay.seconds", self.seconds)


@dataclass(frozen=True, kw_only=True)
class StallReads(Fault):
    """After the matching unit passes, stop reading from its sender for ``seconds``.

    The sender's socket buffers fill and it sees backpressure (a paused VM, a slow agent).
    """

    seconds: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_seconds("StallReads.seconds", self.seconds)


@dataclass(frozen=True, kw_only=True)
class StallWrites(Fault):
    """Stop writing towards the receiver for ``seconds``, starting with the matching unit.

    Reading goes on until ``max_buffer`` bytes are queued in the proxy.
    """

    seconds: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_seconds("StallWrites.seconds", self.seconds)


@dataclass(frozen=True, kw_only=True)
class Throttle(Fault):
    """Forward at most ``bytes_per_second`` (a slow reader and a slow writer in one).

    Defaults to acting on every unit (``count=None``); backpressure reaches the sender once the
    proxy's queue is full.
    """

    bytes_per_second: float
    count: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        rate = self.bytes_per_second
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ConfigError("Throttle.bytes_per_second must be a finite number > 0")


@dataclass(frozen=True, kw_only=True)
class Drop(Fault):
    """Swallow the matching unit. ``Drop(method=m, count=None)`` stops answering ``m``."""


@dataclass(frozen=True, kw_only=True)
class Truncate(Fault):
    """Forward only the first ``keep`` bytes of the unit and carry on: the receiver desyncs."""

    keep: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep < 0:
            raise ConfigError("Truncate.keep must be >= 0")


@dataclass(frozen=True, kw_only=True)
class Corrupt(Fault):
    """XOR the bytes at ``offsets`` (negative: from the end; wrapped to the unit) with ``xor``."""

    offsets: tuple[int, ...] = (0,)
    xor: int = 0xFF

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.xor <= 0xFF:
            raise ConfigError("Corrupt.xor must be in 1..255")


@dataclass(frozen=True, kw_only=True)
class Duplicate(Fault):
    """Forward the unit ``1 + times`` times."""

    times: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.times <= 0:
            raise ConfigError("Duplicate.times must be positive")


@dataclass(frozen=True, kw_only=True)
class Reorder(Fault):
    """Send the matching unit after the next one in its direction.

    If no other unit comes within ``hold`` seconds, the held one goes out alone.
    """

    hold: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_seconds("Reorder.hold", self.hold)


@dataclass(frozen=True, kw_only=True)
class CloseMidFrame(Fault):
    """Forward the first ``keep`` bytes of the unit, then close the connection (FIN)."""

    keep: int = HEADER_SIZE // 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep < 0:
            raise ConfigError("CloseMidFrame.keep must be >= 0")


@dataclass(frozen=True, kw_only=True)
class Reset(Fault):
    """Instead of the unit, reset the connection (``SO_LINGER`` 0: the client sees RST)."""


@dataclass(frozen=True, kw_only=True)
class RewriteStreamId(Fault):
    """Forward the frame on stream ``new_id`` instead (an answer nobody asked for)."""

    new_id: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.new_id <= MAX_STREAM_ID:
            raise ConfigError("RewriteStreamId.new_id must be a u32")


@dataclass(frozen=True, kw_only=True)
class OversizedHeader(Fault):
    """Replace the frame by a bare header announcing ``length`` payload bytes (same id, type)."""

    length: int = MAX_STREAM_ID

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.length <= MAX_STREAM_ID:
            raise ConfigError("OversizedHeader.length must be a u32")


@dataclass(frozen=True, kw_only=True)
class Endless(Fault):
    """Replace the unit, and everything after it in that direction, by a stream of ``pattern``.

    Stops after ``max_bytes`` (then the connection is closed) or when the receiver goes away;
    the receiver's reading paces it.
    """

    pattern: bytes = b"\xff" * 4096
    max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.pattern:
            raise ConfigError("Endless.pattern must not be empty")
        if self.max_bytes <= 0:
            raise ConfigError("Endless.max_bytes must be positive")


def stop_answering(method: str) -> Drop:
    """The fault that swallows every answer to ``method`` (its requests still reach the agent)."""
    return Drop(direction=Direction.TO_CLIENT, method=method, count=None)


# --- units ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    data: bytes
    stream_id: int | None = None
    frame_type: int | None = None
    method: str | None = None
    handshake: bool = False


@dataclass(slots=True)
class _FaultState:
    fault: Fault
    seen: int = 0
    fired: int = 0


# --- the proxy ------------------------------------------------------------------------------


class FaultProxy(Serving):
    """A unix-socket proxy in front of an agent that injects faults into what passes.

    Args:
        upstream: the agent: ``unix:///path`` (abstract ``unix://@name`` too) or a path.
        sock_dir: a private directory for the proxy's own socket.
        name: file name of the proxy's socket in ``sock_dir``.
        framing: ``"ttrpc"`` (faults see whole frames) or ``"raw"`` (faults see read chunks).
        vmm_port: when set, act as a hybrid-vsock VMM expecting ``CONNECT <vmm_port>``.
        host_port: the port named in the ``OK`` reply.
        max_frame: largest frame payload forwarded; a larger one ends its connection.
        max_buffer: bytes queued per direction before the proxy stops reading.
        max_connections: connections served at once; more are closed at once.
    """

    def __init__(
        self,
        upstream: str | os.PathLike[str],
        sock_dir: str | os.PathLike[str],
        *,
        name: str = "fault-proxy.sock",
        framing: Framing = "ttrpc",
        vmm_port: int | None = None,
        host_port: int = 1073741824,
        max_frame: int = 4 * MAX_PAYLOAD,
        max_buffer: int = 1 << 20,
        max_connections: int = 256,
    ) -> None:
        if framing not in ("ttrpc", "raw"):
            raise ConfigError(f"unknown framing {framing!r}")
        if max_buffer <= 0 or max_connections <= 0:
            raise ConfigError("max_buffer and max_connections must be positive")
        FrameDecoder(max_frame)  # validates the limit
        text = os.fspath(upstream)
        self._upstream = parse_address(text).unix_sockaddr() if "://" in text else text
        self.path = Path(sock_dir) / name
        self.framing: Framing = framing
        self.vmm_port = vmm_port
        self.host_port = host_port
        self.max_frame = max_frame
        self.max_buffer = max_buffer
        self.max_connections = max_connections
        self._faults: list[_FaultState] = []
        self._connections: set[_ProxyConnection] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused: dict[Direction, asyncio.Event] = {}
        self.accepted = 0
        """Connections accepted so far."""

    @property
    def address(self) -> str:
        """The proxy's address (``unix:///…``, or ``hvsock:///…:port`` as a VMM)."""
        if self.vmm_port is not None:
            return f"hvsock://{self.path}:{self.vmm_port}"
        return f"unix://{self.path}"

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    def __repr__(self) -> str:
        return f"<FaultProxy {self.path} -> {self._upstream} faults={len(self._faults)}>"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (mode 0600). Called by ``async with``."""
        for direction in Direction:
            self._paused[direction] = asyncio.Event()
            self._paused[direction].set()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._server = await asyncio.start_unix_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        """Stop listening, drop every connection, cancel and await every task."""
        self._stop_listening()
        for conn in list(self._connections):
            conn.close(reset=False)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # --- control --------------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        """Start applying ``fault`` to units passing from now on; returns it (for :meth:`fired`)."""
        if self.framing == "raw" and (fault.method is not None or fault.stream_id is not None
                                      or fault.frame_type is not None):
            raise ConfigError("frame filters need ttrpc framing")
        if self.framing == "raw" and isinstance(fault, RewriteStreamId | OversizedHeader):
            raise ConfigError(f"{type(fault).__name__} needs ttrpc framing")
        self._faults.append(_FaultState(fault))
        return fault

    def remove(self, fault: Fault) -> None:
        """Stop applying ``fault`` (no-op if it is not injected)."""
        self._faults = [s for s in self._faults if s.fault is not fault]

    def clear(self) -> None:
        """Remove every fault."""
        self._faults = []

    def fired(self, fault: Fault) -> int:
        """How many units ``fault`` has acted on."""
        return sum(s.fired for s in self._faults if s.fault is fault)

    def pause(self, direction: Direction | None = None) -> None:
        """Stop reading from the sender(s) until :meth:`resume` (both directions by default)."""
        for d in (direction,) if direction else Direction:
            self._paused[d].clear()

    def resume(self, direction: Direction | None = None) -> None:
        """Undo :meth:`pause`."""
        for d in (direction,) if direction else Direction:
            self._paused[d].set()

    def send(self, direction: Direction, data: bytes) -> None:
        """Queue raw ``data`` on every live connection, after what is already queued."""
        for conn in self._connections:
            pipe = conn.pipes.get(direction)
            if pipe is not None:
                pipe.put(_Unit(data))

    async def kill(self, *, reset: bool = True, keep_listening: bool = False) -> None:
        """The agent dies: drop every connection (RST by default) and, unless told, stop
        listening so that redialling fails too."""
        if not keep_listening:
            self._stop_listening()
        conns = list(self._connections)
        for conn in conns:
            conn.close(reset=reset)
        for conn in conns:
            await conn.done.wait()

    # --- internals ------------------------------------------------------------------------

    def _match(self, direction: Direction, unit: _Unit, *, held: bool = False) -> Fault | None:
        for state in self._faults:
            fault = state.fault
            if held and isinstance(fault, Reorder):
                continue
            if (fault.direction is not direction or fault.handshake != unit.handshake
                    or (fault.method is not None and fault.method != unit.method)
                    or (fault.stream_id is not None and fault.stream_id != unit.stream_id)
                    or (fault.frame_type is not None and fault.frame_type != unit.frame_type)):
                continue
            if state.seen < fault.skip:
                state.seen += 1
                continue
            if fault.count is not None and state.fired >= fault.count:
                continue
            state.fired += 1
            return fault
        return None

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._track(task)
        self.accepted += 1
        if len(self._connections) >= self.max_connections:
            logger.warning("fault proxy: connection limit %d reached", self.max_connections)
            writer.close()
            return
        conn = _ProxyConnection(self, reader, writer)
        self._connections.add(conn)
        try:
            await conn.run()
        except asyncio.CancelledError:
            # close() cancels us; we are a top-level task that asyncio's stream server would
            # otherwise report as failed, so end quietly
            pass
        finally:
            self._connections.discard(conn)
            conn.close(reset=False)
            conn.done.set()


class _ProxyConnection:
    """One client connection and its upstream connection."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client_reader = reader
        self.client_writer = writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.methods: dict[int, str] = {}
        self.pipes: dict[Direction, _Pipe] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.done = asyncio.Event()
        self._closed = False

    async def run(self) -> None:
        proxy = self.proxy
        to_client = _Pipe(self, Direction.TO_CLIENT, self.client_writer)
        self.pipes[Direction.TO_CLIENT] = to_client
        if proxy.vmm_port is not None and not await self._handshake(to_client, proxy.vmm_port):
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(proxy._upstream)
        except OSError as exc:
            logger.debug("fault proxy: upstream unreachable: %s", exc)
            return
        self.upstream_writer = up_writer
        to_agent = _Pipe(self, Direction.TO_AGENT, up_writer)
        self.pipes[Direction.TO_AGENT] = to_agent
        if self._closed:
            return
        async with asyncio.TaskGroup() as group:
            self.tasks = [
                group.create_task(to_agent.read_loop(self.client_reader)),
                group.create_task(to_agent.write_loop()),
                group.create_task(to_client.read_loop(up_reader)),
                group.create_task(to_client.write_loop()),
            ]

    async def _handshake(self, to_client: _Pipe, port: int) -> bool:
        try:
            line = await self.client_reader.readuntil(b"\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return False
        if len(line) > _MAX_HANDSHAKE_LINE or line != b"CONNECT %d\n" % port:
            logger.debug("fault proxy: bad CONNECT line %r", line[:_MAX_HANDSHAKE_LINE])
            return False
        # the reply goes through the pipe, where handshake faults can act on it
        to_client.put(_Unit(b"OK %d\n" % self.proxy.host_port, handshake=True))
        return True

    def learn(self, direction: Direction, frame: Frame) -> str | None:
        """The method a frame belongs to, remembering it from requests."""
        if direction is Direction.TO_AGENT and frame.type == TYPE_REQUEST:
            try:
                method = decode_request(frame.payload).method
            except ProtocolError:
                return None
            if len(self.methods) >= _MAX_METHODS:
                del self.methods[next(iter(self.methods))]
            self.methods[frame.stream_id] = method
            return method
        if direction is Direction.TO_CLIENT and frame.type == TYPE_RESPONSE:
            return self.methods.get(frame.stream_id)
        return None

    def close(self, *, reset: bool) -> None:
        if self._closed:
            return
        self._closed = True
        for writer in (self.client_writer, self.upstream_writer):
            if writer is None:
                continue
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        for pipe in self.pipes.values():
            pipe.put(None)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()  # a reader may be parked on a pause or a full queue


class _Pipe:
    """One direction: a reader task cuts units, a writer task applies faults and forwards."""

    def __init__(self, conn: _ProxyConnection, direction: Direction,
                 writer: asyncio.StreamWriter) -> None:
        self.conn = conn
        self.direction = direction
        self.writer = writer
        self.queue: deque[_Unit | None] = deque()
        self.queued = 0
        self.ready = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.stalled_until = 0.0
        self.writes_stalled_until = 0.0
        self.finished = False
        self.decoder = FrameDecoder(conn.proxy.max_frame)

    def put(self, unit: _Unit | None) -> None:
        self.queue.append(unit)
        if unit is not None:
            self.queued += len(unit.data)
            if self.queued >= self.conn.proxy.max_buffer:
                self.space.clear()
        self.ready.set()

    async def get(self, timeout: float | None = None) -> _Unit | Literal[False] | None:
        """Next unit; ``None`` at the end; ``False`` if ``timeout`` ran out first."""
        while not self.queue:
            self.ready.clear()
            if timeout is None:
                await self.ready.wait()
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await self.ready.wait()
                except TimeoutError:
                    return False
        unit = self.queue.popleft()
        if unit is not None:
            self.queued -= len(unit.data)
            if self.queued < self.conn.proxy.max_buffer:
                self.space.set()
        return unit

    async def read_loop(self, reader: asyncio.StreamReader) -> None:
        proxy = self.conn.proxy
        loop = asyncio.get_running_loop()
        try:
            while True:
                await proxy._paused[self.direction].wait()
                if (wait := self.stalled_until - loop.time()) > 0:
                    await asyncio.sleep(wait)  # re-checked before the next read
                await self.space.wait()
                data = await reader.read(_READ_CHUNK)
                if (wait := self.stalled_until - loop.time()) > 0:
                    # the read was already waiting when the stall began: hold what it got
                    await asyncio.sleep(wait)
                if not data:
                    break
                if proxy.framing == "raw":
                    self.put(_Unit(data))
                    continue
                for event in self.decoder.feed(data):
                    if not isinstance(event, Frame):
                        logger.warning("fault proxy: %d-byte frame over max_frame; dropping the "
                                       "connection", event.length)
                        self.conn.close(reset=False)
                        return
                    method = self.conn.learn(self.direction, event)
                    self.put(_Unit(encode_header(event.stream_id, event.type,
                                                 len(event.payload), event.flags)
                                   + event.payload, event.stream_id, event.type, method))
        except OSError as exc:
            logger.debug("fault proxy: %s read ended: %s", self.direction.value, exc)
        self.put(None)

    async def write_loop(self) -> None:
        try:
            while (unit := await self.get()) is not None:
                assert unit is not False
                if not await self.handle(unit):
                    break
        except OSError as exc:
            logger.debug("fault proxy: %s write ended: %s", self.direction.value, exc)
            self.conn.close(reset=False)
            return
        if self.writer.can_write_eof() and not self.writer.is_closing():
            with contextlib.suppress(OSError):
                self.writer.write_eof()
        self.finished = True
        other = Direction.TO_AGENT if self.direction is Direction.TO_CLIENT else \
            Direction.TO_CLIENT
        pipe = self.conn.pipes.get(other)
        if pipe is None or pipe.finished:
            self.conn.close(reset=False)

    async def handle(self, unit: _Unit, *, held: bool = False) -> bool:
        """Apply the matching fault (if any) and forward; False ends this direction.

        ``held``: a unit is already held back by :class:`Reorder`; this one is not held too
        (which would nest without bound on a stream of matching units).
        """
        loop = asyncio.get_running_loop()
        if (wait := self.writes_stalled_until - loop.time()) > 0:
            await asyncio.sleep(wait)
        fault = self.conn.proxy._match(self.direction, unit, held=held) if unit.data else None
        data = unit.data
        if fault is None:
            pass
        elif isinstance(fault, Delay):
            await asyncio.sleep(fault.seconds)
        elif isinstance(fault, StallWrites):
            self.writes_stalled_until = loop.time() + fault.seconds
            await asyncio.sleep(fault.seconds)
        elif isinstance(fault, StallReads):
            self.stalled_until = loop.time() + fault.seconds
        elif isinstance(fault, Throttle):
            await self.write(data)
            await asyncio.sleep(len(data) / fault.bytes_per_second)
            return True
        elif isinstance(fault, Drop):
            return True
        elif isinstance(fault, Truncate):
            data = data[:fault.keep]
        elif isinstance(fault, Corrupt):
            if data:
                mutable = bytearray(data)
                for offset in fault.offsets:
                    mutable[offset % len(mutable)] ^= fault.xor
                data = bytes(mutable)
        elif isinstance(fault, Duplicate):
            data = data * (1 + fault.times)
        elif isinstance(fault, Reorder):
            return await self.reorder(unit, fault.hold)
        elif isinstance(fault, CloseMidFrame):
            await self.write(data[:fault.keep])
            self.conn.close(reset=False)
            return False
        elif isinstance(fault, Reset):
            self.conn.close(reset=True)
            return False
        elif isinstance(fault, RewriteStreamId):
            data = data[:4] + fault.new_id.to_bytes(4, "big") + data[8:]
        elif isinstance(fault, OversizedHeader):
            data = fault.length.to_bytes(4, "big") + data[4:HEADER_SIZE]
        elif isinstance(fault, Endless):
            await self.endless(fault)
            return False
        await self.write(data)
        return True

    async def reorder(self, held: _Unit, hold: float) -> bool:
        following = await self.get(hold)
        if following is False:
            await self.write(held.data)
            return True
        if following is None:
            await self.write(held.data)
            return False
        go_on = await self.handle(following, held=True)
        if go_on:
            await self.write(held.data)
        return go_on

    async def endless(self, fault: Endless) -> None:
        sent = 0
        while sent < fault.max_bytes and not self.writer.is_closing():
            chunk = fault.pattern[:fault.max_bytes - sent]
            await self.write(chunk)
            sent += len(chunk)
        self.conn.close(reset=False)

    async def write(self, data: bytes) -> None:
        if data and not self.writer.is_closing():
            self.writer.write(data)
            await self.writer.drain()


# --- a scripted ttrpc peer ----------------------------------------------------------------


@dataclass(slots=True)
class PeerCall:
    """One request the scripted peer received."""

    stream_id: int
    request: Request
    connection: PeerConnection


PeerHandler = Callable[[PeerCall], Awaitable[bytes | None]]
"""Answers a call: bytes are sent as an OK answer; ``None`` sends nothing (the handler may
have written its own frames with :meth:`PeerConnection.send`); raising an
:class:`~agentio.errors.RpcError` answers its status."""


class PeerConnection:
    """The scripted peer's side of one client connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tasks: set[asyncio.Task[None]] = set()
        """Handlers still running for this connection's calls (cancelled when it ends)."""

    async def settled(self, limit: int) -> None:
        """Wait until fewer than ``limit`` handlers run."""
        while len(self.tasks) >= limit:
            await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_COMPLETED)

    def send(self, data: bytes) -> None:
        """Write raw bytes (anything: bad frames, unknown stream ids, garbage)."""
        if not self.writer.is_closing():
            self.writer.write(data)

    def answer(self, stream_id: int, payload: bytes = b"", *, code: int = 0,
               message: str = "") -> None:
        """Write a response frame."""
        self.send(encode_frame(stream_id, TYPE_RESPONSE, encode_response(payload, code, message),
                               max_payload=MAX_STREAM_ID))

    def close(self, *, reset: bool = False) -> None:
        """Close (FIN) or reset (RST) the connection."""
        if reset:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()


async def _unimplemented(call: PeerCall) -> bytes | None:
    call.connection.answer(call.stream_id, code=_UNIMPLEMENTED,
                           message=f"{call.request.method} method")
    return None


async def hang(call: PeerCall) -> bytes | None:
    """A handler that never answers (until the peer closes)."""
    await asyncio.Event().wait()
    return None


@dataclass
class ScriptedTtrpcPeer(Serving):
    """A ttrpc server whose answers are written by hand, on a unix socket in ``sock_dir``.

    Register handlers by bare method name with :meth:`on` (any service); unregistered methods
    are answered with ``default`` (UNIMPLEMENTED unless given). Each request runs in its own
    task, at most ``max_inflight`` per connection (beyond that the peer stops reading until one
    ends); the last ``max_calls`` calls are kept in :attr:`calls`.
    """

    sock_dir: str | os.PathLike[str]
    name: str = "scripted-peer.sock"
    default: PeerHandler = _unimplemented
    max_payload: int = MAX_PAYLOAD
    max_calls: int = 10_000
    max_inflight: int = 1024
    handlers: dict[str, PeerHandler] = field(default_factory=dict)
    calls: deque[PeerCall] = field(init=False)
    connections: list[PeerConnection] = field(default_factory=list, init=False)
    _server: asyncio.Server | None = field(default=None, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _reading: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        if self.max_calls <= 0 or self.max_inflight <= 0:
            raise ConfigError("max_calls and max_inflight must be positive")
        self.calls = deque(maxlen=self.max_calls)
        self._reading.set()

    @property
    def path(self) -> Path:
        """The socket's path."""
        return Path(self.sock_dir) / self.name

    @property
    def address(self) -> str:
        """``unix:///…``."""
        return f"unix://{self.path}"

    def on(self, method: str, handler: PeerHandler) -> None:
        """Answer ``method`` with ``handler``."""
        self.handlers[method] = handler

    def pause_reading(self) -> None:
        """Stop reading requests (the client sees backpressure) until :meth:`resume_reading`."""
        self._reading.clear()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        self._reading.set()

    async def start(self) -> None:
        """Listen (mode 0600). Called by ``async with``."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        """Stop listening, close every connection, cancel and await every task."""
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for conn in self.connections:
            conn.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _spawn(self, call: PeerCall) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(self._answer(call))
        for tasks in (self._tasks, call.connection.tasks):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        conn = PeerConnection(writer)
        self.connections.append(conn)
        decoder = FrameDecoder(self.max_payload)
        try:
            while True:
                await self._reading.wait()
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                for event in decoder.feed(data):
                    if not isinstance(event, Frame) or event.type != TYPE_REQUEST:
                        continue
                    try:
                        request = decode_request(event.payload)
                    except ProtocolError:
                        continue
                    if len(conn.tasks) >= self.max_inflight:
                        await conn.settled(self.max_inflight)  # stop reading: backpressure
                    call = PeerCall(event.stream_id, request, conn)
                    self.calls.append(call)
                    self._spawn(call)
        except (OSError, asyncio.CancelledError):
            pass  # cancelled by close(): a top-level task, end quietly (see FaultProxy._accept)
        finally:
            conn.close()
            self.connections.remove(conn)
            handlers = list(conn.tasks)
            for handler in handlers:
                handler.cancel()  # nobody can read their answers any more
            if handlers:
                await asyncio.gather(*handlers, return_exceptions=True)

    async def _answer(self, call: PeerCall) -> None:
        handler = self.handlers.get(call.request.method, self.default)
        try:
            result = await handler(call)
        except RpcError as exc:
            call.connection.answer(call.stream_id, code=exc.code, message=exc.message)
            return
        if result is not None:
            call.connection.answer(call.stream_id, result)
