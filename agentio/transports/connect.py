"""Dial an address and run an asyncio protocol on the connection.

Layer: transports. Imports only :mod:`agentio.errors` and its own package.

Ordering guarantee: bytes that arrived with the hybrid-vsock ``OK`` line reach the protocol
right after ``connection_made`` and before anything the loop reads later. To get that without
a per-read forwarding layer, the loop first sees a one-shot starter protocol; in its
``connection_made`` (which the loop calls before it starts reading) the starter builds the real
protocol, installs it with ``transport.set_protocol``, calls its ``connection_made`` and feeds
it the leftover bytes. From then on the loop talks to the real protocol directly.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Generic, TypeVar

from agentio.errors import AgentConnectionError
from agentio.transports.address import Address, parse_address
from agentio.transports.dial import DialPolicy, SocketFactory, dial
from agentio.transports.selector import create_selector_connection, deliver

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def connect(
    address: Address | str,
    protocol_factory: Callable[[], P],
    policy: DialPolicy = DialPolicy(),  # noqa: B008 - frozen, so sharing it is safe
    *,
    socket_factory: SocketFactory | None = None,
) -> tuple[asyncio.Transport, P]:
    """Dial ``address`` (see :func:`~agentio.transports.dial.dial`) and attach a protocol.

    Returns the transport and the protocol built by ``protocol_factory``. Raises
    :class:`~agentio.errors.ConfigError` for a bad address and
    :class:`~agentio.errors.DialError` when the agent cannot be reached.
    """
    address = parse_address(address) if isinstance(address, str) else address
    dialed = await dial(address, policy, socket_factory=socket_factory)
    loop = asyncio.get_running_loop()
    try:
        if address.scheme == "vsock" and not loop_accepts_vsock(loop):
            return create_selector_connection(
                loop, dialed.sock, protocol_factory, dialed.initial_data
            )
        return await _loop_connection(loop, dialed.sock, protocol_factory, dialed.initial_data)
    except BaseException:
        # Closing twice is harmless: a transport that took the socket closes this same object.
        dialed.sock.close()
        raise


def loop_accepts_vsock(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop.create_connection(sock=...)`` takes an AF_VSOCK socket.

    The stdlib selector loops do; uvloop does not (it handles every non-unix socket as TCP), and
    an unknown loop gets the portable reader/writer transport rather than a gamble.
    """
    return isinstance(loop, asyncio.BaseEventLoop)


async def _loop_connection(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol_factory: Callable[[], P],
    initial_data: bytes,
) -> tuple[asyncio.Transport, P]:
    starter = _Starter(protocol_factory, initial_data)
    # The loop gets a descriptor of its own and ours is closed whatever happens. uvloop pins
    # a socket it was given (an io ref) and closes the fd through libuv: our close of that
    # same object, after a cancel or error inside it, would close the fd a second time when
    # uvloop let go, by then perhaps another socket's.
    theirs = sock.dup()
    try:
        if sock.family == socket.AF_UNIX:
            transport, _ = await loop.create_unix_connection(lambda: starter, sock=theirs)
        else:
            transport, _ = await loop.create_connection(lambda: starter, sock=theirs)
    except BaseException:
        _let_go(theirs)
        raise
    finally:
        sock.close()
    if starter.error is not None or starter.protocol is None:
        transport.abort()
        _let_go(theirs)
        raise starter.error or AgentConnectionError(
            f"event loop returned before connection_made on {sock!r}")
    return transport, starter.protocol


def _let_go(theirs: socket.socket) -> None:
    """Drop our hold on a socket the loop was given, after a failure, closing it only once."""
    if getattr(theirs, "_io_refs", 0):
        # uvloop pinned it and closes the fd through libuv (at the latest when the loop
        # closes): this object closing it too, when collected, would close a number that
        # may by then belong to another socket
        theirs.detach()
    else:
        theirs.close()


class _Starter(asyncio.Protocol, Generic[P]):
    """Stands in for the real protocol until ``connection_made``, then steps aside."""

    def __init__(self, factory: Callable[[], P], initial_data: bytes) -> None:
        self._factory = factory
        self._initial_data = initial_data
        self.protocol: P | None = None
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The loop would only log an exception raised here; keep it for connect() to raise.
        try:
            self._start(transport)
        except Exception as exc:
            self.error = exc
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            else:
                transport.close()

    def _start(self, transport: asyncio.BaseTransport) -> None:
        protocol = self._factory()
        transport.set_protocol(protocol)
        self.protocol = protocol
        protocol.connection_made(transport)
        data, self._initial_data = self._initial_data, b""
        if data and not transport.is_closing():
            deliver(protocol, data)
