"""gRPC client over our own transports (layer: protocols): raw-bytes unary calls with grpclib.

Layer: protocols. Imports :mod:`agentio.errors` and grpclib; the byte stream comes from an
injected connector (in the library, :func:`agentio.transports.connect`, or later a yamux
stream), never from grpclib's own host/port dialling.

grpclib has no public way to run over a connection someone else made, so
:class:`_ConnectorChannel` overrides ``Channel._create_connection()`` (guarded by
``tests/test_grpclib_hook.py``). Messages cross this layer as bytes (a passthrough codec):
the agent adapter encodes and decodes with the message classes of its own generation, exactly
as it does over ttrpc, so :class:`GrpcClient` satisfies the same ``RpcChannel`` shape as
:class:`~agentio.protocols.ttrpc.TtrpcClient`.

Wire behaviour, chosen for the Kata 1.x agent:

- No HTTP/2 keepalive pings (grpclib's client default; the agent answers more than three
  pings in ~400 ms without a call in flight with GOAWAY ``too_many_pings``).
- Ordinary calls carry ``grpc-timeout``; long polls (``send_timeout=False``) carry none, so the
  agent never ends them early, and are bounded here. A call given up sends RST_STREAM.
- A response message larger than ``max_message`` fails the call with
  :class:`~agentio.errors.FrameTooLarge` before its body is buffered.
- A non-OK ``grpc-status`` becomes the matching :class:`~agentio.errors.RpcError` through
  :func:`agentio.errors.rpc_error`.
- Once a connection is lost the client stays failed (like the ttrpc client) until
  :meth:`GrpcClient.reconnect`: a dead agent connection usually means a dead VM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, cast

import h2.exceptions
from grpclib.client import Channel, Handler, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.exceptions import ProtocolError as GrpclibProtocolError
from grpclib.metadata import Deadline
from grpclib.protocol import H2Protocol

from agentio.errors import (
    AgentError,
    ConfigError,
    ConnectionClosed,
    DeadlineExceeded,
    FrameTooLarge,
    ProtocolError,
    ResourceExhausted,
    rpc_error,
)

from ...lifecycle import Closing

logger = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.Protocol]
Connector = Callable[
    [ProtocolFactory], Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]
]
"""``connector(protocol_factory)`` opens a byte stream and runs the protocol on it."""

DEFAULT_MAX_MESSAGE: Final = 4 * 1024 * 1024
DEFAULT_MAX_PENDING: Final = 10_000
_PREFIX = 5  # gRPC message prefix: compressed flag u8, length u32 BE
_CLOSE_WAIT = 5.0  # seconds close() waits for the transport to report the connection lost


class RawCodec(CodecBase):
    """Passes message bytes through unchanged (``application/grpc``, protobuf on the wire)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        """``message`` is already the protobuf encoding."""
        if not isinstance(message, bytes | bytearray | memoryview):
            raise TypeError(f"expected bytes, got {type(message).__name__}")
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        """Hand the protobuf encoding to the caller as is."""
        return bytes(data)


class _TrackedH2Protocol(H2Protocol):
    """grpclib's HTTP/2 protocol, telling its owner when the transport is gone."""

    def __init__(self, *args: Any, on_lost: Callable[[_TrackedH2Protocol], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost
        self._transport: asyncio.BaseTransport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        # Bytes that are not HTTP/2 (a ttrpc agent, a wrong port) make grpclib's handler
        # raise; the loop would only log it while every call waited for its deadline.
        # Drop the connection instead: pending calls fail at once as connection lost.
        try:
            super().data_received(data)
        except Exception as exc:
            logger.warning("not an HTTP/2 peer (%s: %s); closing the connection",
                           type(exc).__name__, exc)
            if isinstance(self._transport, asyncio.Transport):
                self._transport.abort()
            elif self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)


class _BoundedStream(Stream[bytes, bytes]):
    """A grpclib client stream whose message reads are bounded by ``max_message``.

    grpclib reads a message by trusting its length prefix (up to 4 GiB) and buffering that
    much; this check runs on the 5-byte prefix instead, before any of the body is read.
    """

    max_message: int = DEFAULT_MAX_MESSAGE

    async def recv_message(self) -> bytes | None:
        if not self._recv_initial_metadata_done:
            await self.recv_initial_metadata()
        with self._wrapper:
            prefix = await self._read(_PREFIX)
            if not prefix:
                return None
            if len(prefix) != _PREFIX or prefix[0] not in (0, 1):
                raise ProtocolError(f"malformed gRPC message prefix {prefix.hex()}")
            if prefix[0]:
                raise ProtocolError("compressed message, but no encoding was negotiated")
            length = int.from_bytes(prefix[1:], "big")
            if length > self.max_message:
                raise FrameTooLarge(f"response message of {length} bytes exceeds maximum "
                                    f"message size of {self.max_message}")
            data = await self._read(length)
            if len(data) != length:
                raise ProtocolError(f"stream ended {length - len(data)} bytes into a message")
            return data

    async def _read(self, size: int) -> bytes:
        try:
            return await self._stream.recv_data(size)
        except AssertionError as exc:  # grpclib asserts where the stream ends mid-message
            raise ProtocolError(f"stream ended inside a gRPC message ({exc})") from None


class _ConnectorChannel(Channel):
    """A grpclib channel whose HTTP/2 connection runs on whatever the connector opens."""

    def __init__(self, connector: Connector, max_message: int) -> None:
        # path=: grpclib then skips its TCP defaults; it is never dialled (see below).
        super().__init__(path="agent", codec=RawCodec(),
                         config=Configuration(_keepalive_time=None))
        self._connector = connector
        self._max_message = max_message
        self.current: _TrackedH2Protocol | None = None
        self.lost: BaseException | None = None  # set once a connection has gone
        self.closing = False

    async def _create_connection(self) -> H2Protocol:
        if self.closing:
            raise ConnectionClosed("client closed")
        if self.lost is not None:
            error = ConnectionClosed("connection lost; reconnect() to dial again")
            error.__cause__ = self.lost
            raise error

        def factory() -> asyncio.Protocol:
            return _TrackedH2Protocol(Handler(), self._config, self._h2_config,
                                      on_lost=self._connection_lost)

        transport, protocol = await self._connector(factory)
        if not isinstance(protocol, _TrackedH2Protocol):
            transport.close()
            raise ConfigError("connector returned a protocol it did not get from the factory")
        if self.closing:
            transport.close()
            raise ConnectionClosed("client closed while connecting")
        self.current = protocol
        return protocol

    def _connection_lost(self, protocol: _TrackedH2Protocol) -> None:
        if protocol is self.current and not self.closing and self.lost is None:
            logger.debug("gRPC connection lost")
            self.lost = ConnectionClosed("connection lost")

    def request(self, name: str, cardinality: Cardinality, request_type: Any,
                reply_type: Any, **kwargs: Any) -> Any:
        """Like grpclib's, with message reads bounded by ``max_message``."""
        stream = super().request(name, cardinality, request_type, reply_type, **kwargs)
        stream.__class__ = _BoundedStream
        cast(_BoundedStream, stream).max_message = self._max_message
        return stream

    async def drop(self) -> None:
        """Close the current connection and wait (bounded) until its transport is gone."""
        protocol, self.current = self.current, None
        self.close()
        if protocol is not None:
            try:
                async with asyncio.timeout(_CLOSE_WAIT):
                    await asyncio.shield(protocol.lost)
            except TimeoutError:
                logger.warning("transport did not report the connection closed in time")


class GrpcClient(Closing):
    """Unary gRPC calls with raw protobuf payloads over a lazily opened connection.

    ``connector(protocol_factory)`` opens the byte stream (for example
    ``lambda f: agentio.transports.connect(address, f, policy)``, or a
    :class:`~agentio.transports.yamux.dialer.YamuxDialer`'s ``connect_stream``); it is first
    called by the first call. ``on_close`` runs once at the end of :meth:`close` (to close
    what the connector holds, such as the yamux session). Concurrent calls share one HTTP/2
    connection. After the connection is lost, calls fail fast with
    :class:`~agentio.errors.ConnectionClosed` until :meth:`reconnect`; :meth:`close` ends the
    client for good.

    The channel is created on first use, inside the running loop (grpclib requires one), so a
    client can be built anywhere.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_pending: int = DEFAULT_MAX_PENDING,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if max_message <= 0:
            raise ConfigError("max_message must be positive")
        if max_pending <= 0:
            raise ConfigError("max_pending must be positive")
        self._connector = connector
        self._max_message = max_message
        self._max_pending = max_pending
        self._pending = 0
        self._channel: _ConnectorChannel | None = None
        self._closed = False
        self._on_close = on_close

    @property
    def pending(self) -> int:
        """Calls in flight."""
        return self._pending

    def _get_channel(self, method: str | None) -> _ConnectorChannel:
        if self._closed:
            raise ConnectionClosed("client closed", operation=method)
        if self._channel is None:
            self._channel = _ConnectorChannel(self._connector, self._max_message)
        return self._channel

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
        """Send one request message to ``/service/method`` and return the response message.

        ``timeout`` bounds the whole call here, dialling included (``None``: unbounded; cancel
        the task to give up) and raises :class:`~agentio.errors.DeadlineExceeded`. With
        ``send_timeout`` it also travels as ``grpc-timeout``; long polls pass ``False``.
        ``metadata`` goes out as request headers (the trace context, for instance).
        """
        channel = self._get_channel(method)
        if len(payload) > self._max_message:
            raise FrameTooLarge(f"request of {len(payload)} bytes exceeds maximum message size "
                                f"of {self._max_message}", operation=method)
        if self._pending >= self._max_pending:
            raise ResourceExhausted(f"{self._pending} calls already pending on this connection",
                                    operation=method)
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(f"no answer within {timeout:.3g}s", operation=method)
        self._pending += 1
        try:
            async with asyncio.timeout(timeout):
                return await self._unary(channel, f"/{service}/{method}", payload,
                                         timeout if send_timeout else None, metadata)
        except AgentError as exc:
            exc.add_context(operation=method)
            raise
        except GRPCError as exc:
            raise rpc_error(int(exc.status.value), exc.message or "",
                            operation=method) from None
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout:.3g}s", operation=method) from None
        except (StreamTerminatedError, OSError, h2.exceptions.H2Error) as exc:
            raise _connection_error(exc, method) from exc
        except GrpclibProtocolError as exc:
            raise ProtocolError(str(exc), operation=method) from exc
        finally:
            self._pending -= 1

    @staticmethod
    async def _unary(channel: _ConnectorChannel, path: str, payload: bytes,
                     wire_timeout: float | None, metadata: Sequence[tuple[str, str]]) -> bytes:
        deadline = None if wire_timeout is None else Deadline.from_timeout(wire_timeout)
        stream = channel.request(path, Cardinality.UNARY_UNARY, bytes, bytes, deadline=deadline,
                                 metadata=list(metadata) or None)
        async with stream:
            await stream.send_message(payload, end=True)
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
        if reply is None:
            raise ProtocolError("OK status without a response message")
        return cast(bytes, reply)

    async def connect(self) -> None:
        """Dial now if not connected (no-op when connected; raises when failed or closed)."""
        channel = self._get_channel(None)
        await channel.__connect__()

    async def reconnect(self) -> None:
        """Drop the current connection (failing its pending calls) and dial a new one."""
        channel = self._get_channel(None)
        await channel.drop()
        channel.lost = None
        await channel.__connect__()

    async def close(self) -> None:
        """Close the connection and refuse further calls."""
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.closing = True
            await channel.drop()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            await on_close()


def _connection_error(exc: BaseException, method: str) -> AgentError:
    if isinstance(exc, StreamTerminatedError) and "reset by remote" in str(exc):
        # the agent gave up on this call alone; the connection is fine
        return rpc_error(1, str(exc), operation=method)
    return ConnectionClosed(f"connection lost: {exc}", operation=method)
