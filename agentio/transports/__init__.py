"""Transports: agent addresses, dialing (unix, vsock, hybrid vsock) and byte streams.

Layer: transports. Imports only :mod:`agentio.errors`.

Typical use::

    transport, protocol = await connect("hvsock:///run/vc/vm/root/kata.hvsock:1024", MyProtocol)
"""

from agentio.transports.address import Address, parse_address
from agentio.transports.connect import connect, loop_accepts_vsock
from agentio.transports.dial import Dialed, DialPolicy, SocketFactory, default_socket_factory, dial
from agentio.transports.hvsock import HandshakeClosed, HybridVsockHandshake
from agentio.transports.selector import SelectorTransport

__all__ = [
    "Address",
    "DialPolicy",
    "Dialed",
    "HandshakeClosed",
    "HybridVsockHandshake",
    "SelectorTransport",
    "SocketFactory",
    "connect",
    "default_socket_factory",
    "dial",
    "loop_accepts_vsock",
    "parse_address",
]
