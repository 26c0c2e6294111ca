"""ttrpc server over asyncio (layer: protocols), for the local agent and for tests.

Layer: protocols. Imports :mod:`agentio.errors` and the sans-I/O codec.

Each request runs as its own task. Answers follow what real servers send (see the wire
vectors): ``wire_style="go"`` words errors like containerd/ttrpc and sends no status on
success; ``wire_style="rust"`` words them like ttrpc-rust (the Kata agent) and sends an
explicit empty OK status. A request's ``timeout_nano`` cancels its handler when it runs out,
answered DEADLINE_EXCEEDED "timeout", as the Kata agent does. A connection that stops reading
its answers stops being read from (no unbounded buffering of answers), and at most
``max_in_flight`` requests run per connection: beyond that a request is answered
RESOURCE_EXHAUSTED at once (long polls that never return would otherwise pile up a task each).
Closing a connection cancels every handler still running for it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast

from agentio.errors import AgentError, ConfigError, ProtocolError, RpcError, rpc_error
from agentio.transports.listen import bind_private_unix, unlink_own_socket

from .codec import (
    MAX_PAYLOAD,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    decode_request,
    encode_frame,
    encode_response,
)

logger = logging.getLogger(__name__)

WireStyle = Literal["go", "rust"]

_INVALID_ARGUMENT: Final = 3
_DEADLINE_EXCEEDED: Final = 4
_RESOURCE_EXHAUSTED: Final = 8
_UNIMPLEMENTED: Final = 12
_INTERNAL: Final = 13

DEFAULT_MAX_IN_FLIGHT: Final = 10_000
"""Requests run at once per connection: what our own client may have pending
(``Limits.max_pending_calls``), so it is never refused by our own server."""


@dataclass(frozen=True, slots=True)
class ServerCall:
    """One request as a handler sees it."""

    service: str
    method: str
    payload: bytes
    metadata: tuple[tuple[str, str], ...]
    timeout_nano: int
    stream_id: int


Handler = Callable[[ServerCall], Awaitable[bytes]]


class TtrpcServer:
    """A ttrpc server: register services, then serve a unix socket or given transports."""

    def __init__(self, *, max_payload: int = MAX_PAYLOAD, wire_style: WireStyle = "go",
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        if wire_style not in ("go", "rust"):
            raise ConfigError(f"unknown ttrpc wire style {wire_style!r}")
        if max_in_flight <= 0:
            raise ConfigError("max_in_flight must be positive")
        FrameDecoder(max_payload)  # validates the limit
        self.max_payload = max_payload
        self.max_in_flight = max_in_flight
        self.wire_style: WireStyle = wire_style
        self._services: dict[str, dict[str, Handler]] = {}
        self._connections: set[_ServerConnection] = set()
        self._listeners: list[tuple[asyncio.Server, str, int]] = []
        self._closing = False

    def register(self, service: str, methods: Mapping[str, Handler]) -> None:
        """Serve ``methods`` (bare method name → handler) under ``service``.

        A handler returns the response payload; raising an :class:`RpcError` subclass answers
        that status, any other exception answers INTERNAL with its text.
        """
        self._services.setdefault(service, {}).update(methods)

    def lookup(self, service: str, method: str) -> Handler | RpcError:
        """The handler for ``service``/``method``, or the error this wire style answers."""
        methods = self._services.get(service)
        rust = self.wire_style == "rust"
        if methods is None:
            if rust:
                return rpc_error(_INVALID_ARGUMENT, f"{service} service does not exist")
            return rpc_error(_UNIMPLEMENTED, f"service {service}")
        handler = methods.get(method)
        if handler is None:
            return rpc_error(_UNIMPLEMENTED, f"{method} method" if rust else f"method {method}")
        return handler

    # --- serving --------------------------------------------------------------------------

    def make_protocol(self) -> asyncio.Protocol:
        """A protocol serving one connection: pass to any ``create_*``/``connect_*`` call."""
        if self._closing:
            raise ConfigError("server is closed")
        return _ServerConnection(self)

    async def serve_socket(self, sock: socket.socket) -> None:
        """Serve an already-connected stream socket (e.g. one end of a ``socketpair``)."""
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(self.make_protocol, sock)

    async def start_unix(self, path: str) -> None:
        """Listen on a unix socket at ``path`` with mode 0600 (never a network port).

        A stale socket file at ``path`` is replaced; any other file is refused. The privacy of
        the parent directory is the caller's job.
        """
        sock, inode = bind_private_unix(path)
        try:
            server = await asyncio.get_running_loop().create_unix_server(
                self.make_protocol, sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self._listeners.append((server, path, inode))

    async def close(self) -> None:
        """Stop listening, close every connection and cancel (and await) every handler."""
        self._closing = True
        listeners, self._listeners = self._listeners, []
        for server, path, inode in listeners:
            server.close()
            unlink_own_socket(path, inode)
        tasks: list[asyncio.Task[None]] = []
        for conn in list(self._connections):
            tasks.extend(conn.abort())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server, _, _ in listeners:
            await server.wait_closed()

    def _forget(self, conn: _ServerConnection) -> None:
        self._connections.discard(conn)


class _ServerConnection(asyncio.Protocol):
    """One accepted connection: decode requests, run handlers, write answers."""

    def __init__(self, server: TtrpcServer) -> None:
        self._server = server
        self._decoder = FrameDecoder(server.max_payload)
        self._explicit_ok = server.wire_style == "rust"
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # duck-typed: uvloop's and our own (yamux) transports do not subclass asyncio's
        self._transport = cast(asyncio.Transport, transport)
        self._server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._lost:
            return
        for event in self._decoder.feed(data):
            if isinstance(event, OversizedFrame):
                # the decoder discards the payload; answer on that stream and carry on
                self._send_error(event.stream_id, _RESOURCE_EXHAUSTED, (
                    f"message length {event.length} exceed maximum message size of "
                    f"{self._decoder.max_payload}"
                ))
            elif event.type == TYPE_REQUEST:
                self._request(event)
            else:
                logger.debug("ignoring ttrpc frame of type %d on stream %d",
                             event.type, event.stream_id)

    def _request(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        if stream_id % 2 != 1:
            self._send_error(stream_id, _INVALID_ARGUMENT, (
                "stream id must be odd" if self._explicit_ok
                else "StreamID must be odd for client initiated streams"
            ))
            return
        try:
            request = decode_request(frame.payload)
        except ProtocolError as exc:
            self._send_error(stream_id, _INVALID_ARGUMENT,
                             f"unmarshal request error: {exc.message}")
            return
        handler = self._server.lookup(request.service, request.method)
        if isinstance(handler, RpcError):
            self._send_error(stream_id, handler.code, handler.message)
            return
        if len(self._tasks) >= self._server.max_in_flight:
            self._send_error(stream_id, _RESOURCE_EXHAUSTED, (
                f"{len(self._tasks)} requests in flight on this connection, "
                f"at most {self._server.max_in_flight}"))
            return
        call = ServerCall(request.service, request.method, request.payload,
                          request.metadata, request.timeout_nano, stream_id)
        task = self._loop.create_task(self._run(handler, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, call: ServerCall) -> None:
        deadline = None
        try:
            if call.timeout_nano > 0:
                deadline = asyncio.timeout(call.timeout_nano / 1e9)
                async with deadline:
                    result = await handler(call)
            else:
                result = await handler(call)
        except RpcError as exc:
            self._send_error(call.stream_id, exc.code, exc.message)
            return
        except Exception as exc:
            if deadline is not None and deadline.expired():
                # the request's own deadline ran out: the Kata agent's answer, word for word
                self._send_error(call.stream_id, _DEADLINE_EXCEEDED, "timeout")
            else:
                self._internal(call, exc)
            return
        self._send_result(call, result)

    def _internal(self, call: ServerCall, exc: Exception) -> None:
        logger.exception("ttrpc handler %s/%s failed", call.service, call.method)
        message = exc.message if isinstance(exc, AgentError) else str(exc)
        self._send_error(call.stream_id, _INTERNAL, message)

    def _send_result(self, call: ServerCall, result: bytes) -> None:
        if not isinstance(result, bytes | bytearray):
            self._internal(call, TypeError(f"handler returned {type(result).__name__}"))
            return
        body = encode_response(bytes(result), explicit_ok=self._explicit_ok)
        self._write(call.stream_id, body)

    def _send_error(self, stream_id: int, code: int, message: str) -> None:
        self._write(stream_id, encode_response(code=code, message=message))

    def _write(self, stream_id: int, body: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            frame = encode_frame(stream_id, TYPE_RESPONSE, body,
                                 max_payload=self._decoder.max_payload)
        except AgentError as exc:
            frame = encode_frame(stream_id, TYPE_RESPONSE, encode_response(
                code=_RESOURCE_EXHAUSTED, message=exc.message))
        transport.write(frame)

    # --- backpressure and teardown --------------------------------------------------------

    def pause_writing(self) -> None:
        # the client is not reading its answers: stop reading its requests until it does
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True  # no handler starts after this (a late data_received is dropped)
        self._server._forget(self)
        for task in self._tasks:
            task.cancel()  # nobody is left to read the answers

    def abort(self) -> list[asyncio.Task[None]]:
        """Drop the connection now; return its handler tasks (cancelled) for awaiting."""
        self._lost = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if self._transport is not None:
            self._transport.abort()
        self._server._forget(self)
        return tasks
