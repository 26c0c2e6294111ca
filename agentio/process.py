"""A process running in a container: the object ``container.exec()`` returns.

Layer: public API. Shaped like :class:`asyncio.subprocess.Process`: ``stdin``/``stdout``/
``stderr`` streams, ``await wait()``, ``communicate()``, ``send_signal()``; plus ``resize()``
for terminals. Every method is a coroutine where it talks to the agent.

Three kinds of background task serve one process, all owned here and cancelled by
:meth:`Process.close`: one pump per output stream (ReadStdout/ReadStderr long polls into a
bounded :class:`~agentio.streams.OutputStream`), one exit watcher (WaitProcess), and a stdin
writer started on first write. The exit watcher reports the status only after both outputs
ended — the agent forgets the process once WaitProcess returns — or wait for the caller to
read a full buffer. After the exit the agent gets ``Limits.drain_timeout`` in all to deliver
the rest (time spent waiting for the caller does not count); a stream still waiting for the
agent then is cut off with :class:`~agentio.errors.OutputIncomplete`, because a background
child can hold stdout open forever. Any unexpected failure of these tasks reaches the stream
or waiter as a :class:`~agentio.errors.ProtocolError`; none dies silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signals
from collections.abc import Awaitable, Callable

from .agents.base import Agent
from .errors import AgentError, OutputIncomplete, ProtocolError
from .lifecycle import Closing
from .limits import Limits
from .streams import InputStream, OutputStream
from .teardown import shielded_teardown

log = logging.getLogger(__name__)

_Reader = Callable[..., Awaitable[bytes]]


class Process(Closing):
    """A process started in a container (or a container's init process).

    Made by :meth:`Container.exec` and :meth:`Container.start`, not directly.

    Attributes:
        stdout: its output, an :class:`~agentio.streams.OutputStream` (``read``, ``readline``,
            ``readexactly``, ``async for``); a terminal's whole output when ``terminal``.
        stderr: its error output, or ``None`` for a terminal process (one stream).
        stdin: an :class:`~agentio.streams.InputStream` (``write``, ``await drain()``,
            ``close()``).
        returncode: the exit status once :meth:`wait` returned (128+N after signal N), else
            ``None``.
        container_id, exec_id: the process's names in the guest (the agent knows no host pid,
            and the guest's pid is not part of the agent API).
        terminal: whether it runs on a pseudo-terminal.
    """

    def __init__(
        self, agent: Agent, container_id: str, exec_id: str, *, terminal: bool, limits: Limits
    ) -> None:
        self._agent = agent
        self.container_id = container_id
        self.exec_id = exec_id
        self.terminal = terminal
        self._limits = limits
        self.stdout = OutputStream("stdout", limit=limits.stdout_buffer)
        self.stderr: OutputStream | None = (
            None if terminal else OutputStream("stderr", limit=limits.stdout_buffer))
        self.stdin = InputStream(limit=limits.stdin_buffer, ensure_writer=self._ensure_writer)
        self.returncode: int | None = None
        self._exited = asyncio.Event()
        self._wait_error: BaseException | None = None
        self._pumps: dict[OutputStream, asyncio.Task[None]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (f"<Process container={self.container_id} exec={self.exec_id} "
                f"returncode={self.returncode}>")

    def _start(self) -> None:
        """Start pumping output and watching for the exit (called once the agent started it)."""
        self._pumps[self.stdout] = asyncio.create_task(
            self._pump(self.stdout, self._agent.read_stdout), name=f"stdout:{self.exec_id}")
        if self.stderr is not None:
            self._pumps[self.stderr] = asyncio.create_task(
                self._pump(self.stderr, self._agent.read_stderr), name=f"stderr:{self.exec_id}")
        self._watcher = asyncio.create_task(self._watch_exit(), name=f"wait:{self.exec_id}")

    # -- output ------------------------------------------------------------------------------

    async def _pump(self, stream: OutputStream, read: _Reader) -> None:
        try:
            while True:
                await stream.wait_for_space()
                data = await read(self.container_id, self.exec_id, self._limits.read_chunk)
                if not data:
                    stream.feed_eof()
                    return
                stream.feed_data(data)
        except asyncio.CancelledError:
            stream.set_exception(OutputIncomplete(
                f"{stream.name} was not read to its end", operation=f"read_{stream.name}",
                container=self.container_id, exec=self.exec_id))
            raise
        except AgentError as exc:
            stream.set_exception(exc)
        except Exception as exc:  # a bug or a value no check caught: still end the stream
            stream.set_exception(self._unexpected(exc, f"read_{stream.name}"))

    async def _watch_exit(self) -> None:
        try:
            status = await self._agent.wait_process(self.container_id, self.exec_id)
            if type(status) is not int:
                raise ProtocolError(f"exit status {status!r} is not an integer",
                                    operation="wait", container=self.container_id,
                                    exec=self.exec_id)
            budget = await self._drain_output(self._limits.drain_timeout)
        except AgentError as exc:
            self._wait_error = exc
        except Exception as exc:  # a bug or a value no check caught: still wake the waiters
            self._wait_error = self._unexpected(exc, "wait")
        else:
            self.returncode = status
            self._exited.set()
            await self._finish_output(budget)
            return
        self._exited.set()  # not when cancelled: close() then says why nobody saw the exit

    def _unexpected(self, exc: Exception, operation: str) -> ProtocolError:
        """A background task's unexpected failure, as the error its stream or waiter gets."""
        log.error("process %s/%s: %s failed unexpectedly", self.container_id, self.exec_id,
                  operation, exc_info=exc)
        error = ProtocolError(f"unexpected {type(exc).__name__}: {exc}", operation=operation,
                              container=self.container_id, exec=self.exec_id)
        error.__cause__ = exc
        return error

    async def _drain_output(self, budget: float) -> float:
        """Wait until every output stream ended or waits for the caller to read it.

        ``budget`` is the agent's time left to deliver output after the exit; what is left of
        it is returned. A stream still waiting for the agent when it runs out is cut off.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = [s for s in self._pumps if not s.is_settled()]
        if waiting and budget > 0:
            settling = [asyncio.ensure_future(stream.settled()) for stream in waiting]
            try:
                _, pending = await asyncio.wait(settling, timeout=budget)
            finally:
                for waiter in settling:
                    waiter.cancel()
            budget = 0.0 if pending else budget - (loop.time() - started)
        stuck = [s for s, t in self._pumps.items() if not t.done() and not s.is_settled()]
        if stuck and budget <= 0:
            log.warning("process %s/%s exited but %s stayed open %.1f s; not reading further",
                        self.container_id, self.exec_id, ", ".join(s.name for s in stuck),
                        self._limits.drain_timeout)
            for stream in stuck:
                await _cancel(self._pumps[stream])
        return max(budget, 0.0)

    async def _finish_output(self, budget: float) -> None:
        """After the exit was reported: output still held back by a full buffer resumes as the
        caller reads, but waiting for the agent keeps drawing on the same ``budget``."""
        while True:
            full = [s for s, t in self._pumps.items() if not t.done() and not s.ended()]
            if not full:
                return
            resumed = [asyncio.ensure_future(stream.wait_for_space()) for stream in full]
            try:
                await asyncio.wait(resumed, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in resumed:
                    waiter.cancel()
            budget = await self._drain_output(budget)

    # -- stdin -------------------------------------------------------------------------------

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_stdin(), name=f"stdin:{self.exec_id}")

    async def _write_stdin(self) -> None:
        agent, cid, eid = self._agent, self.container_id, self.exec_id
        try:
            while (chunk := await self.stdin.next_chunk(self._limits.stdin_chunk)) is not None:
                if not chunk:
                    await agent.close_stdin(cid, eid)
                    self.stdin.finished()
                    return
                taken = await agent.write_stdin(cid, eid, chunk)
                if not 0 < taken <= len(chunk):
                    raise ProtocolError(f"agent took {taken} of {len(chunk)} bytes",
                                        operation="WriteStdin", container=cid, exec=eid)
                self.stdin.consumed(taken)
        except asyncio.CancelledError:
            self.stdin.finished(AgentError("process closed before stdin was written",
                                           operation="write_stdin", container=cid, exec=eid))
            raise
        except AgentError as exc:
            self.stdin.finished(exc)
        except Exception as exc:  # a bug or a value no check caught: still fail the writes
            self.stdin.finished(self._unexpected(exc, "write_stdin"))

    # -- lifecycle ---------------------------------------------------------------------------

    async def wait(self) -> int:
        """Wait for the process to exit and its output to be received; its exit status.

        Cancelling the wait (a timeout, an anyio cancel scope) leaves the process alone.
        """
        await self._exited.wait()
        if self._wait_error is not None:
            raise self._wait_error
        assert self.returncode is not None
        return self.returncode

    async def communicate(self, input: bytes | None = None) -> tuple[bytes, bytes]:
        """Send ``input`` and close stdin, read stdout and stderr to their ends, wait.

        Returns ``(stdout, stderr)``; stderr is ``b""`` for a terminal process.
        """
        if input:
            self.stdin.write(input)
        self.stdin.close()

        async def read_err() -> bytes:
            return await self.stderr.read() if self.stderr is not None else b""

        out, err = await asyncio.gather(self.stdout.read(), read_err())
        try:
            await self.stdin.wait_closed()
        except AgentError:
            if self.returncode is None and not self._exited.is_set():
                raise
            # like asyncio: input the process exited without reading is not an error
        await self.wait()
        return out, err

    async def send_signal(self, sig: int) -> None:
        """Send signal ``sig`` to the process."""
        await self._agent.signal_process(self.container_id, self.exec_id, int(sig))

    async def terminate(self) -> None:
        """Send SIGTERM."""
        await self.send_signal(signals.SIGTERM)

    async def kill(self) -> None:
        """Send SIGKILL."""
        await self.send_signal(signals.SIGKILL)

    async def resize(self, rows: int, cols: int) -> None:
        """Set the size of the process's terminal."""
        await self._agent.resize_tty(self.container_id, self.exec_id, rows, cols)

    async def close(self, *, kill: bool = True) -> None:
        """Stop every task serving the process. Idempotent.

        With ``kill`` (the default) a process that still runs is killed first; either way its
        exit is awaited for at most ``Limits.drain_timeout``. Runs to its end even inside an
        expired cancel scope (bounded by ``Limits.teardown_timeout``).
        """
        async with shielded_teardown(self._limits.teardown_timeout, "close",
                                     container=self.container_id, exec=self.exec_id):
            await self._close(kill)

    async def _close(self, kill: bool) -> None:
        if not self._exited.is_set() and self._watcher is not None:
            if kill:
                with contextlib.suppress(AgentError):
                    await self.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._limits.drain_timeout):
                    await self._exited.wait()
        for task in (*self._pumps.values(), self._watcher, self._writer):
            if task is not None:
                await _cancel(task)
        if not self._exited.is_set():
            self._wait_error = AgentError("closed before the process was seen to exit",
                                          operation="wait", container=self.container_id,
                                          exec=self.exec_id)
            self._exited.set()


async def close_all(processes: list[Process], *, kill: bool) -> None:
    """Close ``processes`` concurrently (each may wait ``Limits.drain_timeout`` for its exit).

    Every process is closed even if some fail; the first failure is raised afterwards.
    """
    results = await asyncio.gather(*(p.close(kill=kill) for p in processes),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to finish, without swallowing our own cancellation."""
    if task.done():
        return
    task.cancel()
    await asyncio.wait([task])  # returns when it is done; our own cancellation still propagates
