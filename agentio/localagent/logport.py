"""A guest log port for the local agent: JSON log lines on a unix socket, as a Kata guest writes.

Layer: local agent. :class:`LocalLogPort` listens on a private unix socket and writes every
line it is given to each connected reader, shaped like the Rust agent's log (``msg``,
``level`` as ``INFO``/``DEBG``/…, ``ts``, ``source``, ``name``, ``subsystem``, ``pid``).
:meth:`LocalLogPort.handler` turns the local agent's own :mod:`logging` records into such
lines, so following the port shows what the "guest" does. Tests can also write raw bytes
(:meth:`LocalLogPort.write_raw`) and close the port mid-line.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..lifecycle import Serving

log = logging.getLogger(__name__)

_RUST_LEVELS = {logging.DEBUG: "DEBG", logging.INFO: "INFO", logging.WARNING: "WARN",
                logging.ERROR: "ERRO", logging.CRITICAL: "CRIT"}
MAX_QUEUED = 1 << 20
"""Bytes queued for one slow reader before it is dropped (a guest never blocks on its log)."""


class LocalLogPort(Serving):
    """Serves log lines to every reader connected to a unix socket."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.address = f"unix://{self.path}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connected = asyncio.Condition()

    async def start(self) -> str:
        """Listen (socket mode 0600); the address readers connect to."""
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))
        os.chmod(self.path, 0o600)
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_line(logging.INFO, "log reader connected"))  # tells the reader it is on
        self._writers.add(writer)
        async with self._connected:
            self._connected.notify_all()
        try:
            while await reader.read(4096):  # readers send nothing; wait for them to go
                pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def wait_readers(self, count: int = 1) -> None:
        """Wait until at least ``count`` readers are connected."""
        async with self._connected:
            await self._connected.wait_for(lambda: len(self._writers) >= count)

    @property
    def readers(self) -> int:
        """Readers connected now."""
        return len(self._writers)

    def write_raw(self, data: bytes) -> None:
        """Send ``data`` as is to every reader (a slow reader is dropped, not waited for)."""
        for writer in list(self._writers):
            if writer.transport.get_write_buffer_size() > MAX_QUEUED:
                log.warning("dropping a log reader that does not keep up")
                self._writers.discard(writer)
                writer.transport.abort()
                continue
            writer.write(data)

    def emit(self, level: int, message: str, **fields: Any) -> None:
        """Send one log line in the Rust agent's shape."""
        self.write_raw(_line(level, message, **fields))

    def handler(self, level: int = logging.DEBUG) -> logging.Handler:
        """A logging handler sending records to the port (add it to the agent's loggers)."""
        return _PortHandler(self, level)

    async def close(self) -> None:
        """Close every reader's connection (they see the guest close the port), stop listening."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def _line(level: int, message: str, **fields: Any) -> bytes:
    line = {"msg": message, "level": _RUST_LEVELS.get(level, "INFO"),
            "ts": datetime.datetime.now(datetime.UTC).isoformat(),
            "source": "agent", "name": "kata-agent", "pid": str(os.getpid()),
            "subsystem": "root", **fields}
    return json.dumps(line).encode() + b"\n"


class _PortHandler(logging.Handler):
    def __init__(self, port: LocalLogPort, level: int) -> None:
        super().__init__(level)
        self._port = port

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._port.emit(record.levelno, record.getMessage(),
                            subsystem=record.name.rpartition(".")[2])
        except Exception:
            self.handleError(record)
