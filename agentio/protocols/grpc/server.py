"""gRPC server (layer: protocols): grpclib serving raw-bytes unary handlers, for the local agent.

Layer: protocols. Imports :mod:`agentio.errors`, grpclib and the transports (the private unix
socket, the yamux session).

Handlers have the ttrpc server's shape (:data:`~agentio.protocols.ttrpc.Handler`: a
:class:`~agentio.protocols.ttrpc.ServerCall` in, the response payload out, an
:class:`~agentio.errors.RpcError` for a status), so one service implementation registers on
either server. Errors go out trailers-only with the error's code and message, as the Kata 1.x
agent sends them; a request's ``grpc-timeout`` cancels its handler (``DEADLINE_EXCEEDED``).

:meth:`GrpcServer.start_unix` serves HTTP/2 straight on each accepted connection, or — with a
:class:`~agentio.transports.yamux.session.YamuxConfig` — runs a server-role yamux session on
it and serves one HTTP/2 connection on every stream the client opens (the 1.x agent on its
serial port). Request messages are read by grpclib as their length prefix says (no size
bound of ours, unlike the client): serve only private sockets, as the local agent does.
grpclib builds each connection's protocol in ``Server._protocol_factory()``
(guarded by ``tests/test_grpclib_hook.py``); we only keep track of the connections to close.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from typing import Any

from grpclib.const import Cardinality, Status
from grpclib.const import Handler as GrpclibHandler
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream

from agentio.errors import ConfigError, RpcError
from agentio.protocols.grpc.client import RawCodec
from agentio.protocols.ttrpc.server import Handler, ServerCall
from agentio.transports.listen import bind_private_unix, unlink_own_socket
from agentio.transports.yamux.session import YamuxConfig, YamuxSession

logger = logging.getLogger(__name__)


class _Servable:
    """What grpclib's Server wants: ``__mapping__()`` of paths to handlers."""

    def __init__(self, mapping: dict[str, GrpclibHandler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, GrpclibHandler]:
        return self._mapping


class GrpcServer:
    """Unary gRPC services over unix sockets (plain, or a yamux session per connection).

    Register every service before :meth:`start_unix` or :meth:`make_protocol`.
    """

    def __init__(self) -> None:
        self._mapping: dict[str, GrpclibHandler] = {}
        self._server: Server | None = None
        self._listeners: list[tuple[asyncio.Server, str, int]] = []
        # every HTTP/2 connection and yamux session we serve, to close them on close()
        self._live: weakref.WeakSet[asyncio.BaseProtocol] = weakref.WeakSet()
        self._closing = False

    @property
    def yamux_sessions(self) -> list[YamuxSession]:
        """The yamux sessions being served (one per accepted connection, with yamux)."""
        return [p for p in self._live if isinstance(p, YamuxSession) and not p.is_closing()]

    def register(self, service: str, methods: Mapping[str, Handler]) -> None:
        """Serve ``methods`` (bare method name → handler) as ``/service/method``."""
        if self._server is not None:
            raise ConfigError("register every service before serving")
        for method, handler in methods.items():
            self._mapping[f"/{service}/{method}"] = GrpclibHandler(
                _unary(service, method, handler), Cardinality.UNARY_UNARY, bytes, bytes)

    def make_protocol(self) -> asyncio.Protocol:
        """A protocol serving one HTTP/2 connection: pass to any ``create_*`` call or yamux."""
        if self._closing:
            raise ConfigError("server is closed")
        if self._server is None:
            self._server = Server([_Servable(self._mapping)], codec=RawCodec())
        protocol: H2Protocol = self._server._protocol_factory()
        self._live.add(protocol)
        return protocol

    def make_yamux_session(self, config: YamuxConfig | None = None) -> YamuxSession:
        """A server-role yamux session serving HTTP/2 on every stream the peer opens."""
        if self._closing:
            raise ConfigError("server is closed")
        session = YamuxSession("server", config, stream_protocol_factory=self.make_protocol)
        self._live.add(session)
        return session

    async def start_unix(self, path: str, *, yamux: YamuxConfig | None = None) -> None:
        """Listen on a unix socket at ``path`` with mode 0600 (never a network port).

        With ``yamux``, every accepted connection runs a yamux session (server role) and each
        stream carries its own HTTP/2 connection. The privacy of the parent directory is the
        caller's job.
        """
        factory: Any = (self.make_protocol if yamux is None
                        else lambda: self.make_yamux_session(yamux))
        sock, inode = bind_private_unix(path)
        try:
            listener = await asyncio.get_running_loop().create_unix_server(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._listeners.append((listener, path, inode))

    async def close(self) -> None:
        """Stop listening, close every connection; their handlers are cancelled."""
        self._closing = True
        listeners, self._listeners = self._listeners, []
        for listener, path, inode in listeners:
            listener.close()
            unlink_own_socket(path, inode)
        for protocol in list(self._live):
            if isinstance(protocol, YamuxSession):
                protocol.abort()
            elif isinstance(protocol, H2Protocol):
                connection = getattr(protocol, "connection", None)
                if connection is not None:
                    connection.close()
        if self._server is not None:
            pending = [h.wait_closed() for h in self._server._handlers]
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        for listener, _, _ in listeners:
            await listener.wait_closed()


def _unary(service: str, method: str, handler: Handler) -> Any:
    """A grpclib method function running ``handler`` on the request's bytes."""

    async def serve(stream: Stream[bytes, bytes]) -> None:
        payload = await stream.recv_message()
        if payload is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
        remaining = stream.deadline.time_remaining() if stream.deadline else 0.0
        call = ServerCall(service=service, method=method, payload=payload,
                          metadata=tuple((k, str(v)) for k, v in (stream.metadata or {}).items()),
                          timeout_nano=int(max(remaining, 0.0) * 1e9), stream_id=0)
        try:
            reply = await handler(call)
        except RpcError as exc:
            raise GRPCError(Status(exc.code) if exc.code in _CODES else Status.UNKNOWN,
                            exc.message) from None
        except GRPCError:
            raise
        except Exception as exc:
            logger.exception("%s/%s failed", service, method)
            raise GRPCError(Status.INTERNAL, str(exc)) from None
        await stream.send_message(reply)

    return serve


_CODES = frozenset(status.value for status in Status)
