"""An in-memory asyncio transport: drive any :class:`asyncio.Protocol` with bytes from a test.

Layer: testing. Standard library only.

Connect a protocol with :meth:`MemoryTransport.attach`, feed it what a (malicious) peer
would send with ``protocol.data_received(...)``, look at what it wrote in
:attr:`MemoryTransport.written`. Closing or aborting reports ``connection_lost`` on the next
loop turn, as real transports do. Nothing is buffered but what the protocol writes, and that
only up to ``max_written`` bytes (older bytes are dropped and counted).
"""

from __future__ import annotations

import asyncio
from typing import Any


class MemoryTransport(asyncio.Transport):
    """A transport whose peer is the test: writes are recorded, reads are fed by hand."""

    def __init__(self, *, max_written: int = 1 << 20) -> None:
        super().__init__()
        self.written = bytearray()
        self.dropped = 0
        """Bytes written but discarded to keep :attr:`written` within ``max_written``."""
        self.max_written = max_written
        self.closed = False
        self.aborted = False
        self.reading = True
        self._protocol: asyncio.BaseProtocol | None = None
        self._lost_reported = False

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Make ``protocol`` this transport's protocol and call its ``connection_made``."""
        self._protocol = protocol
        protocol.connection_made(self)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            return
        self.written += data
        excess = len(self.written) - self.max_written
        if excess > 0:
            del self.written[:excess]
            self.dropped += excess

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self.aborted = True
        self._lose(None)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def _lose(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        protocol = self._protocol
        if protocol is not None:
            asyncio.get_running_loop().call_soon(self._report_lost, protocol, exc)

    def _report_lost(self, protocol: asyncio.BaseProtocol, exc: Exception | None) -> None:
        if not self._lost_reported:
            self._lost_reported = True
            protocol.connection_lost(exc)
