"""ttrpc client over asyncio (layer: protocols): one multiplexed connection, and a client owning it.

Layer: protocols. Imports :mod:`agentio.errors` and the sans-I/O codec; the transport comes
from an injected connector (in the library, :func:`agentio.transports.connect`).

:class:`TtrpcConnection` is an :class:`asyncio.Protocol`: any number of calls share one socket,
each on its own odd stream id, answered in any order. ttrpc has no cancel frame, so a call that
is cancelled or times out is simply forgotten; a late answer for it is dropped. Losing the
connection fails every pending call at once.

:class:`TtrpcClient` owns at most one connection, dialled lazily on first use. Once that
connection is lost the client stays failed (calls raise :class:`ConnectionClosed` naming the
original cause) until :meth:`TtrpcClient.reconnect` is awaited: a dead agent connection
usually means a dead VM, and silently redialling would hide that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, cast

from agentio.errors import (
    ConfigError,
    ConnectionClosed,
    DeadlineExceeded,
    FrameTooLarge,
    ProtocolError,
    ResourceExhausted,
    rpc_error,
)

from ...lifecycle import Closing
from .codec import (
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    FrameDecoder,
    OversizedFrame,
    Response,
    decode_response,
    encode_header,
    encode_request,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_PENDING: Final = 10_000

ProtocolFactory = Callable[[], asyncio.Protocol]
Connector = Callable[
    [ProtocolFactory], Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]
]


class TtrpcConnection(asyncio.Protocol):
    """One ttrpc connection multiplexing concurrent calls (an :class:`asyncio.Protocol`)."""

    def __init__(
        self,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_pending: int = DEFAULT_MAX_PENDING,
        first_stream_id: int = 1,
    ) -> None:
        if max_pending <= 0:
            raise ConfigError("max_pending must be positive")
        if first_stream_id % 2 != 1 or not 0 < first_stream_id <= MAX_STREAM_ID:
            raise ConfigError("first_stream_id must be an odd u32")
        self._decoder = FrameDecoder(max_payload)
        self._max_payload = max_payload
        self._max_pending = max_pending
        self._next_id = first_stream_id
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._cause: BaseException | None = None  # why the connection ended, once it has
        self._write_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed: asyncio.Future[None] = self._loop.create_future()

    # --- state ------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once the connection has failed or been closed: calls fail fast."""
        return self._cause is not None

    @property
    def exhausted(self) -> bool:
        """True once the stream ids are used up: new calls are refused, pending ones finish."""
        return self._next_id > MAX_STREAM_ID

    @property
    def cause(self) -> BaseException | None:
        """Why the connection ended (``None`` while it is open)."""
        return self._cause

    @property
    def writing_paused(self) -> bool:
        """True while the transport's write buffer is over its high-water mark."""
        return self._write_paused

    @property
    def pending(self) -> int:
        """Calls awaiting their answer."""
        return len(self._pending)

    @property
    def buffered(self) -> int:
        """Received bytes held for an incomplete frame (never more than one frame's worth)."""
        return self._decoder.buffered

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio calls this once)."""
        # duck-typed: uvloop's and our own (yamux) transports do not subclass asyncio's
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Decode frames and resolve the calls they answer."""
        events = self._decoder.feed(data)
        pending = self._pending
        for event in events:
            if isinstance(event, OversizedFrame):
                self._oversized(event)
                continue
            if event.type != TYPE_RESPONSE:
                logger.debug("ignoring ttrpc frame of type %d on stream %d",
                             event.type, event.stream_id)
                continue
            future = pending.pop(event.stream_id, None)
            if future is None or future.done():
                logger.debug("ignoring ttrpc response for unknown stream %d", event.stream_id)
                continue
            try:
                response = decode_response(event.payload)
            except ProtocolError as exc:
                self._fail(exc)
                future.set_exception(self._closed_error())  # already out of _pending
                return
            future.set_result(response)

    def _oversized(self, event: OversizedFrame) -> None:
        if event.type != TYPE_RESPONSE:
            return
        future = self._pending.pop(event.stream_id, None)
        if future is not None and not future.done():
            # framing is intact (the decoder skips the payload), so only this call fails
            future.set_exception(ResourceExhausted(
                f"response length {event.length} exceeds maximum message size of "
                f"{self._max_payload}"
            ))

    def eof_received(self) -> bool:
        """The peer closed its side: the connection is over (returning False closes it)."""
        self._fail(ConnectionClosed("connection closed by the peer"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every pending call with the first cause recorded."""
        self._fail(exc if exc is not None else ConnectionClosed("connection closed"))
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        """The transport's write buffer is full: hold new requests (responses keep flowing)."""
        self._write_paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        """The write buffer drained: let held requests go."""
        self._write_paused = False
        self._writable.set()

    # --- failure ---------------------------------------------------------------------------

    def _fail(self, cause: BaseException) -> None:
        """Record the first cause, fail all pending calls with it and drop the transport."""
        if self._cause is None:
            self._cause = cause
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(self._closed_error())
            self._writable.set()  # wake writers held by flow control; they see the cause
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def _closed_error(self, method: str | None = None) -> ConnectionClosed:
        cause = self._cause
        if isinstance(cause, ConnectionClosed):
            error = ConnectionClosed(cause.message, operation=method)
        else:
            error = ConnectionClosed(f"connection lost: {cause!r}", operation=method)
        error.__cause__ = cause
        return error

    # --- calls -----------------------------------------------------------------------------

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        send_timeout: bool = True,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """Send one request and return the response payload.

        ``timeout`` bounds the whole call on this side (``None``: unbounded; cancel the task to
        give up) and raises :class:`DeadlineExceeded`. With ``send_timeout`` it also travels as
        ``timeout_nano`` so the agent cancels the handler; long polls pass ``False`` (the
        agent would otherwise end them early) and stay bounded here. A non-OK status raises
        the matching :class:`agentio.errors.RpcError`.
        """
        if self._cause is not None:
            raise self._closed_error(method)
        if len(self._pending) >= self._max_pending:
            raise ResourceExhausted(
                f"{len(self._pending)} calls already pending on this connection",
                operation=method,
            )
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        if self._write_paused:
            await self._wait_writable(deadline, method)
        timeout_nano = 0
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(f"no answer within {timeout:.3g}s", operation=method)
            if send_timeout:
                timeout_nano = max(1, int(remaining * 1e9))
        body = encode_request(service, method, payload, timeout_nano, metadata)
        if len(body) > self._max_payload:
            raise FrameTooLarge(
                f"request of {len(body)} bytes exceeds maximum message size of "
                f"{self._max_payload}",
                operation=method,
            )
        stream_id = self._take_stream_id(method)
        frame = encode_header(stream_id, TYPE_REQUEST, len(body)) + body
        future: asyncio.Future[Response] = loop.create_future()
        self._pending[stream_id] = future
        assert self._transport is not None
        self._transport.write(frame)
        timer = None
        if deadline is not None:
            timer = loop.call_at(deadline, _expire, future, method, timeout)
        try:
            response = await future
        except ConnectionClosed as exc:
            exc.add_context(operation=method)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            pending = self._pending
            pending.pop(stream_id, None)
            if not pending and self._next_id > MAX_STREAM_ID:
                self.close()  # ids used up and the last call is done: let the owner redial
        if response.code:
            raise rpc_error(response.code, response.message, operation=method)
        return response.payload

    def _take_stream_id(self, method: str) -> int:
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            # never wrap: a late answer to a forgotten call would be taken for a new call's
            raise ConnectionClosed("stream ids exhausted on this connection", operation=method)
        self._next_id = stream_id + 2
        return stream_id

    async def _wait_writable(self, deadline: float | None, method: str) -> None:
        while self._write_paused and self._cause is None:
            if deadline is None:
                await self._writable.wait()
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    await self._writable.wait()
            except TimeoutError:
                raise DeadlineExceeded(
                    "transport stayed full until the deadline", operation=method
                ) from None
        if self._cause is not None:
            raise self._closed_error(method)

    # --- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; pending calls fail with :class:`ConnectionClosed`."""
        self._fail(ConnectionClosed("connection closed locally"))

    async def wait_closed(self) -> None:
        """Wait until the transport has reported the connection lost."""
        if self._transport is None:
            return
        await asyncio.shield(self._closed)


def _expire(future: asyncio.Future[Response], method: str, timeout: float | None) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"no answer within {timeout:.3g}s", operation=method))


class TtrpcClient(Closing):
    """Calls to one agent endpoint over a lazily dialled :class:`TtrpcConnection`.

    ``connector(protocol_factory)`` opens the transport (for example
    ``lambda f: loop.create_unix_connection(f, path)``). Concurrent first calls share one
    dial. After the connection is lost, calls fail fast with :class:`ConnectionClosed` until
    :meth:`reconnect`; :meth:`close` ends the client for good.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if max_pending <= 0:
            raise ConfigError("max_pending must be positive")
        FrameDecoder(max_payload)  # validates the limit now rather than on first dial
        self._connector = connector
        self._max_payload = max_payload
        self._max_pending = max_pending
        self._conn: TtrpcConnection | None = None
        self._dialing: asyncio.Task[TtrpcConnection] | None = None
        self._closed = False

    @property
    def connection(self) -> TtrpcConnection | None:
        """The current connection, if one has been made."""
        return self._conn

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        send_timeout: bool = True,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """Like :meth:`TtrpcConnection.call`, dialling first if needed (within ``timeout``)."""
        conn = self._conn
        if conn is None or conn.exhausted or self._closed:
            loop = asyncio.get_running_loop()
            start = loop.time()
            conn = await self._connection(timeout, method)
            if timeout is not None:
                timeout = max(0.0, timeout - (loop.time() - start))
        return await conn.call(
            service, method, payload,
            timeout=timeout, send_timeout=send_timeout, metadata=metadata,
        )

    async def connect(self) -> TtrpcConnection:
        """Dial now if not connected (no-op when connected; raises when failed or closed)."""
        return await self._connection(None, None)

    async def _connection(self, bound: float | None, method: str | None) -> TtrpcConnection:
        if self._closed:
            raise ConnectionClosed("client closed", operation=method)
        conn = self._conn
        if conn is not None and not conn.exhausted:
            return conn  # a failed connection answers with its cause
        dialing = self._dialing
        if dialing is None:
            dialing = self._dialing = asyncio.get_running_loop().create_task(self._dial())
            dialing.add_done_callback(_retrieve)
        # shield: one caller giving up must not abort the dial the others wait on. Not
        # asyncio.wait_for: on 3.11 it swallows a cancel that lands as the dial completes.
        limit = asyncio.timeout(bound)
        try:
            async with limit:
                return await asyncio.shield(dialing)
        except TimeoutError:
            if not limit.expired():
                raise  # the dial's own timeout error
            raise DeadlineExceeded(f"not connected within {bound}s", operation=method) from None

    async def _dial(self) -> TtrpcConnection:
        try:
            transport, protocol = await self._connector(self._new_connection)
            if not isinstance(protocol, TtrpcConnection):
                transport.close()
                raise ConfigError("connector returned a protocol it did not get from the factory")
            if self._closed:
                protocol.close()
                raise ConnectionClosed("client closed while connecting")
            self._conn = protocol
            return protocol
        finally:
            self._dialing = None

    def _new_connection(self) -> TtrpcConnection:
        return TtrpcConnection(max_payload=self._max_payload, max_pending=self._max_pending)

    async def reconnect(self) -> None:
        """Drop the current connection (failing its pending calls) and dial a new one."""
        if self._closed:
            raise ConnectionClosed("client closed")
        old, self._conn = self._conn, None
        if old is not None:
            old.close()
            await old.wait_closed()
        await self._connection(None, None)

    async def close(self) -> None:
        """Close the connection and refuse further calls."""
        self._closed = True
        dialing = self._dialing
        if dialing is not None:
            dialing.cancel()
            await asyncio.gather(dialing, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()


def _retrieve(task: asyncio.Task[TtrpcConnection]) -> None:
    # every waiter may have given up; the dial's error is theirs, not the loop's to log
    if not task.cancelled():
        task.exception()
