"""Process stdio as streams: what ``proc.stdout``, ``proc.stderr`` and ``proc.stdin`` are.

Layer: public API. Pure buffering and waiting: the tasks that move bytes to and from the
agent live in :mod:`agentio.process`. Reading feels like :class:`asyncio.StreamReader`,
writing like :class:`asyncio.StreamWriter`.

Output is bounded: once ``limit`` bytes wait unread, the pump stops asking the agent for
more, so a flood stalls the guest process instead of growing our memory. Bytes arrive
complete and in order; if the rest of a stream is lost, reading past what did arrive raises
the error instead of a silent end of file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from .errors import AgentError


class OutputStream:
    """One output stream of a process (stdout or stderr)."""

    def __init__(self, name: str, *, limit: int) -> None:
        self.name = name
        self._limit = limit
        self._buffer = bytearray()
        self._eof = False
        self._exception: BaseException | None = None
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._settled = asyncio.Event()

    @property
    def buffered(self) -> int:
        """Bytes received from the agent and not read yet (at most ``limit`` + one read)."""
        return len(self._buffer)

    def __repr__(self) -> str:
        state = "eof" if self._eof else "error" if self._exception else "open"
        return f"<OutputStream {self.name} {state} buffered={len(self._buffer)}>"

    # -- producer side (the pump) ------------------------------------------------------------

    def feed_data(self, data: bytes) -> None:
        """Append bytes that arrived from the agent."""
        if not data:
            return
        self._buffer += data
        self._readable.set()
        if len(self._buffer) >= self._limit:
            self._space.clear()
            self._settled.set()

    def feed_eof(self) -> None:
        """The stream ended normally."""
        self._eof = True
        self._readable.set()
        self._settled.set()

    def set_exception(self, exc: BaseException) -> None:
        """The rest of the stream is lost: readers get ``exc`` after the bytes that did arrive."""
        if not self._eof:
            self._exception = exc
            self._eof = True
            self._readable.set()
            self._settled.set()

    async def wait_for_space(self) -> None:
        """Block the producer while ``limit`` bytes wait unread."""
        await self._space.wait()

    def is_settled(self) -> bool:
        """True while the stream needs nothing from the agent: it ended, or it is full and
        waits for the caller to read (reading makes it unsettled again)."""
        return self._settled.is_set()

    def ended(self) -> bool:
        """True once the agent's side of the stream ended (bytes may still wait unread)."""
        return self._eof

    async def settled(self) -> None:
        """Wait until :meth:`is_settled`."""
        await self._settled.wait()

    # -- consumer side -----------------------------------------------------------------------

    def at_eof(self) -> bool:
        """True once the stream ended and every byte was read."""
        return self._eof and not self._buffer

    def exception(self) -> BaseException | None:
        """The error that cut the stream short, if any."""
        return self._exception

    async def _wait_readable(self) -> None:
        while not self._buffer and not self._eof:
            self._readable.clear()
            await self._readable.wait()

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if len(self._buffer) < self._limit:
            self._space.set()
            if not self._eof:
                self._settled.clear()  # the pump asks the agent again
        return data

    def _raise_if_failed(self) -> None:
        if self._exception is not None and not self._buffer:
            raise self._exception

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: everything until end of stream); ``b""`` at the end."""
        if n < 0:
            chunks = []
            while chunk := await self.read(self._limit):
                chunks.append(chunk)
            return b"".join(chunks)
        if n == 0:
            return b""
        await self._wait_readable()
        if not self._buffer:
            self._raise_if_failed()
            return b""
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or :class:`asyncio.IncompleteReadError` at an early end."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = await self.read(n - got)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``.

        Raises :class:`asyncio.IncompleteReadError` if the stream ends first, and
        :class:`asyncio.LimitOverrunError` if ``limit`` bytes arrive without one.
        """
        if not separator:
            raise ValueError("separator must not be empty")
        start = 0
        while True:
            found = self._buffer.find(separator, start)
            if found >= 0:
                return self._take(found + len(separator))
            start = max(0, len(self._buffer) - len(separator) + 1)
            if len(self._buffer) >= self._limit:
                raise asyncio.LimitOverrunError(
                    f"{self.name}: no separator within {self._limit} bytes", len(self._buffer))
            if self._eof:
                self._raise_if_failed()
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), None)
            self._readable.clear()
            await self._readable.wait()

    async def readline(self) -> bytes:
        """One line including its ``\\n``; the last line may lack it; ``b""`` at the end."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        while line := await self.readline():
            yield line


class InputStream:
    """A process's stdin: ``write()`` queues, ``await drain()`` waits for the agent to take it.

    Bytes are sent in order by one writer task (started on first use); a failure to send is
    raised by the next ``write``, ``drain`` or ``wait_closed`` — never dropped silently.
    """

    def __init__(self, *, limit: int, ensure_writer: Callable[[], None]) -> None:
        self._limit = limit
        self._ensure_writer = ensure_writer
        self._buffer = bytearray()
        self._closing = False
        self._closed = asyncio.Event()
        self._exception: BaseException | None = None
        self._pending = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()

    def __repr__(self) -> str:
        return f"<InputStream closing={self._closing} buffered={len(self._buffer)}>"

    def _check(self) -> None:
        if self._exception is not None:
            raise self._exception
        if self._closing:
            raise AgentError("stdin is closed", operation="write_stdin")

    def write(self, data: bytes) -> None:
        """Queue ``data``; follow with ``await drain()`` to wait for the agent."""
        self._check()
        if not data:
            return  # a zero-length WriteStdin would close stdin on current agents
        self._buffer += data
        self._drained.clear()
        self._pending.set()
        self._ensure_writer()

    def writelines(self, lines: list[bytes]) -> None:
        """Queue every chunk of ``lines``, in order."""
        for line in lines:
            self.write(line)

    async def drain(self) -> None:
        """Wait until at most ``limit`` bytes are queued (all of them after ``close()``)."""
        while len(self._buffer) > self._limit and self._exception is None:
            self._drained.clear()
            await self._drained.wait()
        if self._exception is not None:
            raise self._exception

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Close stdin once queued bytes are sent (stdout and stderr stay open)."""
        self.close()

    def close(self) -> None:
        """Same as :meth:`write_eof`."""
        if self._closing:
            return
        self._closing = True
        self._pending.set()
        self._ensure_writer()

    def is_closing(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        """Wait until every byte was taken and stdin closed; raise if that failed."""
        await self._closed.wait()
        if self._exception is not None:
            raise self._exception

    # -- the writer task's side -------------------------------------------------------------

    async def next_chunk(self, size: int) -> bytes | None:
        """Bytes to send next; ``b""`` when it is time to close; ``None`` once done."""
        while not self._buffer and not self._closing:
            self._pending.clear()
            await self._pending.wait()
        if self._buffer:
            return bytes(self._buffer[:size])
        return b"" if not self._closed.is_set() else None

    def consumed(self, n: int) -> None:
        """The agent took ``n`` bytes."""
        del self._buffer[:n]
        if len(self._buffer) <= self._limit:
            self._drained.set()

    def finished(self, exc: BaseException | None = None) -> None:
        """Stdin is closed (``exc`` is None) or broken."""
        if exc is not None and self._exception is None:
            self._exception = exc
        self._closing = True
        self._buffer.clear()
        self._drained.set()
        self._closed.set()
