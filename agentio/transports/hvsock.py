"""Hybrid vsock handshake (Firecracker, Cloud Hypervisor), sans-I/O.

Layer: transports. Imports only :mod:`agentio.errors`. No sockets, no awaits, no clocks.

The host connects to the VMM's unix socket, sends ``CONNECT <port>\\n`` and reads one line
``OK <host_port>\\n``; from then on the socket carries the guest connection. Bytes that arrive
after the newline already belong to the protocol spoken over it (:attr:`leftover`).

The VMM closes the socket when nothing listens on the guest port yet (the guest is booting):
that is :class:`HandshakeClosed`, worth retrying. Any other reply is :class:`HandshakeError`,
which retrying will not fix.
"""

from __future__ import annotations

import re

from agentio.errors import ConfigError, HandshakeError

DEFAULT_MAX_LINE = 64
_U32_MAX = 2**32 - 1
_REPLY = re.compile(rb"OK ([0-9]{1,10})\n")
# Every proper prefix of a valid reply (without its newline); anything else is garbage already.
_REPLY_PREFIX = re.compile(rb"(?:O(?:K(?: [0-9]{0,10})?)?)?")
_QUOTE_MAX = 32


class HandshakeClosed(HandshakeError):
    """The VMM closed the socket before a complete reply: the guest port is not listening yet."""


class HybridVsockHandshake:
    """State of one ``CONNECT``/``OK`` exchange.

    Send :meth:`request`, then pass every received chunk to :meth:`receive` (``b""`` for end of
    file) until it returns the host port. At most ``max_line`` bytes of reply are ever buffered;
    a reply that cannot become a valid line is rejected as soon as that is certain.
    """

    def __init__(self, port: int, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _U32_MAX:
            raise ConfigError(f"port must be in 0..{_U32_MAX}, not {port!r}")
        if max_line < len(b"OK 0\n"):
            raise ConfigError(f"max_line {max_line} is too small for any reply")
        self.port = port
        self.max_line = max_line
        self._buffer = b""
        self._finished = False
        self.host_port: int | None = None
        self.leftover = b""

    @property
    def done(self) -> bool:
        """True once :meth:`receive` has returned the host port."""
        return self.host_port is not None

    def request(self) -> bytes:
        """The bytes to send to the VMM."""
        return b"CONNECT %d\n" % self.port

    def receive(self, data: bytes) -> int | None:
        """Consume received bytes; return the host port once the reply is complete, else None.

        ``b""`` means the peer closed the connection. Raises :class:`HandshakeClosed` on an early
        close and :class:`HandshakeError` on a malformed or over-long reply, or when called again
        after the handshake finished.
        """
        if self._finished:
            raise HandshakeError(f"hybrid vsock handshake for port {self.port} already finished")
        if not data:
            self._finished = True
            raise HandshakeClosed(
                f"VMM closed the connection after CONNECT {self.port}"
                + (f" having sent only {_quote(self._buffer)}" if self._buffer else "")
            )
        room = self.max_line - len(self._buffer)
        newline = data.find(b"\n", 0, room)
        if newline < 0:
            self._receive_partial(data, room)
            return None
        line = self._buffer + data[: newline + 1]
        self._buffer = b""
        self._finished = True
        match = _REPLY.fullmatch(line)
        if match is None or int(match[1]) > _U32_MAX:
            raise HandshakeError(f"bad reply to CONNECT {self.port}: {_quote(line)}")
        self.host_port = int(match[1])
        self.leftover = data[newline + 1 :]
        return self.host_port

    def _receive_partial(self, data: bytes, room: int) -> None:
        # Keep no more than max_line bytes: what does not fit is proof enough of a bad reply.
        partial = self._buffer + data[:room]
        if len(data) >= room:
            self._finished = True
            raise HandshakeError(
                f"reply to CONNECT {self.port} longer than {self.max_line} bytes: {_quote(partial)}"
            )
        if not _REPLY_PREFIX.fullmatch(partial):
            self._finished = True
            raise HandshakeError(f"bad reply to CONNECT {self.port}: {_quote(partial)}")
        self._buffer = partial


def _quote(data: bytes) -> str:
    """Escaped, truncated text of untrusted bytes, safe to put in a log line."""
    if len(data) > _QUOTE_MAX:
        return repr(data[:_QUOTE_MAX]) + f"... ({len(data)} bytes)"
    return repr(data)
