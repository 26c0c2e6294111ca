"""``agentio exec``: a process in the guest wired to the local terminal, like ``docker exec``.

Layer: tools (the ``agentio`` command). Built on the public API
(:class:`~agentio.sandbox.Container`, :class:`~agentio.process.Process`): output is
written out as it arrives, local stdin is forwarded with ``-i``, ``-t`` gives the process
a terminal, puts ours in raw mode and turns window-size changes (SIGWINCH) into resizes.
Ctrl-C reaches the process: as the ``^C`` byte through the terminal in raw mode, as a
forwarded SIGINT otherwise (SIGTERM, SIGHUP and SIGQUIT are forwarded too). The command's
exit status is the process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import stat
import termios
import tty
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..agents.specs import ProcessSpec, is_terminal
from ..errors import AgentError, OutputIncomplete
from ..process import Process
from ..sandbox import Container, Sandbox
from ..streams import OutputStream

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""Signals the command passes on to the process instead of dying of them."""

_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExecOptions:
    """What ``agentio exec`` was asked to run and how."""

    container_id: str
    process: ProcessSpec | Mapping[str, Any]
    interactive: bool = False
    exec_id: str | None = None
    detach: bool = False


@dataclass(frozen=True, slots=True)
class LocalStdio:
    """The local file descriptors the process is wired to."""

    stdin: int = 0
    stdout: int = 1
    stderr: int = 2


def terminal_size(*fds: int) -> tuple[int, int] | None:
    """(rows, cols) of the first terminal among ``fds``; ``None`` if none is one."""
    for fd in fds:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        return size.lines, size.columns
    return None


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode for the block; restore it however it ends."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield  # not a terminal: nothing to do
        return
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_exec(sandbox: Sandbox, options: ExecOptions, stdio: LocalStdio, *,
                   timeout: float | None = None) -> tuple[int, str]:
    """Start the process; unless detached, wire it to ``stdio`` until it exits.

    Returns its exit status (0 when detached) and its exec id.
    """
    terminal = is_terminal(options.process)
    process = options.process
    if isinstance(process, ProcessSpec) and terminal and process.console_size is None:
        process = dataclasses.replace(
            process, console_size=terminal_size(stdio.stdin, stdio.stdout))
    container = Container(sandbox, options.container_id, terminal=terminal)
    if options.detach:
        exec_id = options.exec_id or f"exec-{os.urandom(8).hex()}"
        await sandbox.agent.exec_process(container.id, exec_id, process, timeout=timeout)
        return 0, exec_id
    started = await container.exec_spec(process, exec_id=options.exec_id, timeout=timeout)
    raw = options.interactive and terminal and os.isatty(stdio.stdin)
    try:
        with raw_terminal(stdio.stdin) if raw else contextlib.nullcontext():
            status = await _Wiring(started, stdio, interactive=options.interactive).run()
    finally:
        await started.close(kill=False)
    return status, started.exec_id


class _Wiring:
    """The tasks and signal handlers joining one guest process to the local stdio."""

    def __init__(self, process: Process, stdio: LocalStdio, *, interactive: bool) -> None:
        self.process = process
        self.stdio = stdio
        self.interactive = interactive
        self.loop = asyncio.get_running_loop()
        self._side_tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        proc = self.process
        outputs = [asyncio.create_task(self._copy_out(proc.stdout, self.stdio.stdout))]
        if proc.stderr is not None:
            outputs.append(asyncio.create_task(self._copy_out(proc.stderr, self.stdio.stderr)))
        feeder = asyncio.create_task(self._feed_stdin())
        installed = self._install_signals()
        try:
            status = await proc.wait()
            for result in await asyncio.gather(*outputs, return_exceptions=True):
                if isinstance(result, OutputIncomplete):
                    # e.g. a background child kept stdout open past the drain window: the
                    # status is known, so report it, and say what was cut short
                    log.warning("%s", result)
                elif isinstance(result, BaseException):
                    raise result
            return status
        finally:
            for sig in installed:
                self.loop.remove_signal_handler(sig)
            tasks = (feeder, *outputs, *self._side_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- signals -----------------------------------------------------------------------------

    def _install_signals(self) -> list[int]:
        wanted = list(FORWARDED_SIGNALS)
        if self.process.terminal:
            wanted.append(signal.SIGWINCH)
        installed: list[int] = []
        for sig in wanted:
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig)
            except (RuntimeError, ValueError):  # not the main thread: leave signals alone
                log.debug("cannot handle %s here; not forwarding it", signal.Signals(sig).name)
                continue
            installed.append(sig)
        return installed

    def _on_signal(self, sig: int) -> None:
        action = self._resize() if sig == signal.SIGWINCH else self._forward(sig)
        task = self.loop.create_task(action)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _forward(self, sig: int) -> None:
        log.debug("forwarding %s to %s", signal.Signals(sig).name, self.process.exec_id)
        try:
            await self.process.send_signal(sig)
        except AgentError as exc:  # it may have exited meanwhile
            log.debug("forwarding %s failed: %s", signal.Signals(sig).name, exc)

    async def _resize(self) -> None:
        size = terminal_size(self.stdio.stdin, self.stdio.stdout)
        if size is None:
            return
        try:
            await self.process.resize(*size)
        except AgentError as exc:
            log.debug("resize failed: %s", exc)

    # -- output and stdin --------------------------------------------------------------------

    async def _copy_out(self, stream: OutputStream, fd: int) -> None:
        try:
            while chunk := await stream.read(_CHUNK):
                await write_all(fd, chunk)
        except BrokenPipeError:
            # Nobody reads our output any more (`agentio exec … | head`): what a local
            # pipeline would do to the writer, SIGPIPE, then let the rest drain unseen.
            await self._forward(signal.SIGPIPE)
            while await stream.read(_CHUNK):
                pass


    async def _feed_stdin(self) -> None:
        stdin = self.process.stdin
        if self.interactive:
            async for chunk in read_local(self.stdio.stdin):
                stdin.write(chunk)
                await stdin.drain()
        stdin.close()
        with contextlib.suppress(AgentError):  # the process need not read its input
            await stdin.wait_closed()


async def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, waiting for room if the descriptor is non-blocking.

    A terminal shares one file description between stdin and stdout, so reading stdin
    without blocking makes stdout non-blocking too.
    """
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await _writable(fd)
            continue
        view = view[written:]


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def read_local(fd: int) -> AsyncIterator[bytes]:
    """Chunks read from the local ``fd`` until its end, without blocking the loop.

    Pipes, sockets and terminals are read by the loop (on a duplicate, so closing our reader
    leaves ``fd`` open; its blocking mode is restored afterwards); a regular file, which the
    loop cannot watch, is read in a thread.
    """
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return
    if regular:
        while chunk := await asyncio.to_thread(os.read, fd, _CHUNK):
            yield chunk
        return
    loop = asyncio.get_running_loop()
    was_blocking = os.get_blocking(fd)
    reader = asyncio.StreamReader(limit=_CHUNK)
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except BaseException:
        pipe.close()
        os.set_blocking(fd, was_blocking)
        raise
    try:
        while chunk := await reader.read(_CHUNK):
            yield chunk
    finally:
        transport.close()
        os.set_blocking(fd, was_blocking)
