"""Guest logs: follow the log the agent writes to its log port, as Python logging records.

Layer: public API. The Kata agent writes its log, one JSON object per line, to a vsock port
(1025 by default: ``vsock://CID:1025``, or ``hvsock:///run/…/kata.hvsock:1025``) when asked
to. :class:`GuestLog` connects to it with the same transports as the agent connection,
parses the lines (:class:`LogLineParser`, sans-I/O), maps the agent's levels onto
:mod:`logging` levels and logs each line under a per-sandbox logger
(``agentio.guest.<sandbox id>``), and stops cleanly when the guest closes the port.

The guest is untrusted: a line is at most ``max_line`` bytes (longer ones are cut and marked
``truncated``), a line that is not a JSON object is passed on as text, and field values are
made plain strings before they reach a log handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import AgentConnectionError
from .lifecycle import Serving
from .transports import Address, DialPolicy, connect, parse_address

log = logging.getLogger(__name__)

KATA_LOG_PORT = 1025
"""The vsock port the Kata agent writes its log to by default."""

DEFAULT_MAX_LINE = 64 * 1024
TRACE = 5
"""The level of the agent's trace lines (below ``logging.DEBUG``)."""

LEVELS: Mapping[str, int] = {
    # Rust agent (slog) abbreviations, Go agent (logrus) names, and the usual spellings
    "trce": TRACE, "trace": TRACE,
    "debg": logging.DEBUG, "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING, "warning": logging.WARNING,
    "erro": logging.ERROR, "error": logging.ERROR,
    "crit": logging.CRITICAL, "critical": logging.CRITICAL, "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}

_MAX_FIELDS = 64
_MAX_VALUE = 4096


@dataclass(frozen=True, slots=True)
class GuestLogRecord:
    """One line of the guest's log."""

    level: int
    message: str
    fields: Mapping[str, str] = field(default_factory=dict)
    """Every other key of the JSON object (``ts``, ``subsystem``, ``pid``, …), as text."""
    raw: bool = False
    """The line was not a JSON object: ``message`` is its text."""
    truncated: bool = False
    """The line was longer than the limit, or cut off by the guest closing the port."""


def level_of(name: object) -> int:
    """The :mod:`logging` level of an agent level name (``INFO``, ``DEBG``, ``warning``, …)."""
    if isinstance(name, str):
        return LEVELS.get(name.strip().lower(), logging.INFO)
    return logging.INFO


def parse_line(line: bytes, *, truncated: bool = False) -> GuestLogRecord:
    """One log line (without its newline) as a record; never raises."""
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return GuestLogRecord(logging.INFO, text, raw=True, truncated=truncated)
    message = value.pop("msg", value.pop("message", ""))
    level = level_of(value.pop("level", value.pop("lvl", None)))
    fields = {str(k)[:_MAX_VALUE]: _text(v) for k, v in list(value.items())[:_MAX_FIELDS]}
    return GuestLogRecord(level, _text(message), fields, truncated=truncated)


def _text(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:_MAX_VALUE]


class LogLineParser:
    """Bytes of the log stream in, records out (sans-I/O: no sockets, no clocks).

    Lines longer than ``max_line`` bytes are cut: the first ``max_line`` bytes are parsed as
    a truncated line and the rest is skipped up to the next newline, so a guest can never
    make us hold more than ``max_line`` bytes.
    """

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[GuestLogRecord]:
        """The records completed by ``data``."""
        records: list[GuestLogRecord] = []
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            if self._skipping:
                if newline >= 0:
                    self._skipping = False
            else:
                room = self.max_line - len(self._buffer)
                piece = data[start:end]
                if len(piece) > room:
                    self._buffer += piece[:room]
                    records.append(parse_line(bytes(self._buffer), truncated=True))
                    self._buffer.clear()
                    self._skipping = newline < 0
                else:
                    self._buffer += piece
                    if newline >= 0:
                        if self._buffer.strip():
                            records.append(parse_line(bytes(self._buffer)))
                        self._buffer.clear()
            if newline < 0:
                break
            start = newline + 1
        return records

    def finish(self) -> list[GuestLogRecord]:
        """The stream ended: a partial last line, if any, as a truncated record."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        self._skipping = False
        return [parse_line(rest, truncated=True)] if rest.strip() else []


RecordCallback = Callable[[GuestLogRecord], None]


class _LogProtocol(asyncio.Protocol):
    def __init__(self, parser: LogLineParser, deliver: RecordCallback,
                 closed: asyncio.Future[None]) -> None:
        self._parser = parser
        self._deliver = deliver
        self._closed = closed

    def data_received(self, data: bytes) -> None:
        for record in self._parser.feed(data):
            self._deliver(record)

    def eof_received(self) -> bool:
        for record in self._parser.finish():
            self._deliver(record)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


class GuestLog(Serving):
    """Follows one sandbox's guest log and logs each line under ``agentio.guest.<id>``.

    Args:
        address: the log port's address URL (``vsock://CID:1025``, ``hvsock://…:1025``,
            ``unix://…``).
        sandbox_id: names the logger (``agentio.guest.<sandbox_id>``).
        logger: log there instead.
        on_record: also (or, with ``log_records=False``, only) hand each record to this.
        policy: dial policy (the guest may not be listening yet).
        max_line: longest line kept, bytes.
    """

    def __init__(
        self,
        address: str | Address,
        *,
        sandbox_id: str = "",
        logger: logging.Logger | None = None,
        on_record: RecordCallback | None = None,
        log_records: bool = True,
        policy: DialPolicy = DialPolicy(),  # noqa: B008 - frozen
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.sandbox_id = sandbox_id
        self.logger = logger or logging.getLogger(
            f"agentio.guest.{sandbox_id}" if sandbox_id else "agentio.guest")
        self.on_record = on_record
        self.log_records = log_records
        self.policy = policy
        self.max_line = max_line
        self.lines = 0
        self._transport: asyncio.BaseTransport | None = None
        self._closed: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<GuestLog {self.sandbox_id or '?'} {self.address} lines={self.lines}>"

    async def start(self) -> None:
        """Connect to the log port (raises :class:`~agentio.errors.DialError` if it cannot)."""
        if self._closed is not None:
            return
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        parser = LogLineParser(max_line=self.max_line)
        self._transport, _ = await connect(
            self.address, lambda: _LogProtocol(parser, self._deliver, closed), self.policy)
        self._closed = closed

    def _deliver(self, record: GuestLogRecord) -> None:
        self.lines += 1
        if self.log_records and self.logger.isEnabledFor(record.level):
            self.logger.log(record.level, "%s", record.message,
                            extra={"guest": dict(record.fields), "sandbox": self.sandbox_id,
                                   "guest_truncated": record.truncated})
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:
                log.exception("guest log callback failed")

    async def wait_closed(self) -> None:
        """Wait until the guest closes the log port (or :meth:`close` is called)."""
        if self._closed is None:
            raise AgentConnectionError("guest log not started", operation="guest_log")
        await asyncio.shield(self._closed)

    async def close(self) -> None:
        """Stop following (lines already received have been logged). Idempotent."""
        if self._transport is not None:
            self._transport.close()
        if self._closed is not None:
            await asyncio.shield(self._closed)


__all__ = ["KATA_LOG_PORT", "TRACE", "GuestLog", "GuestLogRecord", "LogLineParser",
           "level_of", "parse_line"]
