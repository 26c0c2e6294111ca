"""Host processes driven through pulled stdio, the way a Kata agent drives container processes.

Layer: local agent. Pure asyncio; knows nothing of ttrpc or protobuf.

:class:`HostProcess` spawns a real process in its own session (so signals reach its whole
process group), optionally on a pseudo-terminal, and exposes the agent's stdio model: callers
*pull* output with :meth:`HostProcess.read_stdout` / :meth:`HostProcess.read_stderr`, which
return what one ``read(2)`` gives. Nothing is read from the child until someone asks, so the
kernel pipe is the only buffer and a fast writer is throttled by a slow reader.

Engine errors (the service layer maps them onto wire statuses):

* :class:`SpawnFailed` — the process could not be started (message carries the OS text).
* :class:`InvalidSpec` — empty argv, NUL bytes, malformed env entry, bad window size.
* :class:`ProcessExited` — signal to a process that has already exited and been reaped.
* :class:`StdinClosed` — write after stdin was closed (or the child closed its end).
* :class:`NotATerminal` — resize on a process without a pty.
* :class:`StreamError` — an unexpected I/O error reading a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal as signal_mod
import struct
import subprocess
import termios
import threading
from collections.abc import Sequence

from agentio import errors

__all__ = [
    "EngineError",
    "HostProcess",
    "InvalidSpec",
    "NotATerminal",
    "ProcessExited",
    "SpawnFailed",
    "StdinClosed",
    "StreamError",
    "exit_status",
]

logger = logging.getLogger(__name__)

#: A read never allocates more than this, whatever length the (untrusted) caller asks for.
MAX_READ = 1 << 20


# --- errors -------------------------------------------------------------------------------


class EngineError(errors.AgentError):
    """Base class of the local agent engine's errors (mapped to wire statuses by the service)."""


class SpawnFailed(EngineError):
    """The process could not be started; ``errno`` is the OS error number when there is one."""

    def __init__(self, message: str, *, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class InvalidSpec(EngineError, ValueError):
    """The process description itself is unusable (empty args, NUL bytes, bad env entry)."""


class ProcessExited(EngineError, ProcessLookupError):
    """The process has already exited: it can no longer be signalled."""


class StdinClosed(EngineError, BrokenPipeError):
    """Stdin was closed (by us or by the child): nothing more can be written."""


class NotATerminal(EngineError):
    """A terminal-only operation (resize) on a process that has no pty."""


class StreamError(EngineError):
    """Reading a stream failed with an unexpected OS error."""


def exit_status(returncode: int) -> int:
    """Map a ``Popen``-style return code to the agent's status: killed by signal N → 128+N."""
    return 128 - returncode if returncode < 0 else returncode


# --- fd helpers ---------------------------------------------------------------------------


def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    if not (0 <= rows <= 0xFFFF and 0 <= cols <= 0xFFFF):
        raise InvalidSpec(f"window size out of range: {rows}x{cols}")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_tty() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Popen already called setsid(); make the pty on fd 0 our controlling terminal so job
    # control, ^C and SIGWINCH reach the foreground group as they would under a real agent.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _Fd:
    """An owned non-blocking fd plus at most one parked waiter; closing wakes the waiter."""

    def __init__(self, fd: int, *, write: bool) -> None:
        self.fd = fd
        self._write = write
        self._waiter: asyncio.Future[None] | None = None

    async def ready(self) -> None:
        """Wait until the fd is readable (writable), or closed. One waiter at a time."""
        if self.fd < 0:
            return
        loop = asyncio.get_running_loop()
        fd, self._waiter = self.fd, loop.create_future()
        (loop.add_writer if self._write else loop.add_reader)(fd, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if self.fd == fd:  # still ours: the number cannot have been reused
                self._unwatch(loop, fd)

    def _unwatch(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        (loop.remove_writer if self._write else loop.remove_reader)(fd)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        """Close the fd (idempotent); a parked waiter returns and sees ``fd == -1``."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        if self._waiter is not None:
            self._unwatch(asyncio.get_running_loop(), fd)
            self._wake()
        _close_quietly(fd)


# --- output streams -----------------------------------------------------------------------


class _OutputStream:
    """One readable end (pipe or pty master); reads are serialised and return one read(2)."""

    def __init__(self, fd: int, *, pty: bool) -> None:
        self._fd = _Fd(fd, write=False)
        self._pty = pty
        self._lock = asyncio.Lock()
        self._eof = asyncio.Event()
        self._close_when_idle = False
        if fd < 0:
            self._eof.set()

    @property
    def at_eof(self) -> bool:
        return self._eof.is_set()

    def fileno(self) -> int:
        return self._fd.fd

    async def wait_eof(self) -> None:
        await self._eof.wait()

    async def read(self, n: int) -> bytes:
        if n <= 0:
            raise errors.ConfigError(f"read length must be positive, got {n}")
        n = min(n, MAX_READ)
        async with self._lock:
            try:
                return await self._read_locked(n)
            finally:
                if self._close_when_idle:
                    self._fd.close()

    async def _read_locked(self, n: int) -> bytes:
        while self._fd.fd >= 0:
            try:
                data = os.read(self._fd.fd, n)
            except BlockingIOError:
                await self._fd.ready()
                continue
            except OSError as exc:
                # On Linux a pty master reads EIO once every slave fd is closed: end of stream.
                if not (self._pty and exc.errno == errno.EIO):
                    raise StreamError(f"read failed: {exc.strerror}") from exc
                data = b""
            if not data:
                self._eof.set()
                self._fd.close()  # nothing more will come: give the fd back now
            return data
        return b""

    def release(self) -> None:
        """Close now if no read is in flight, else right after the read in flight returns."""
        if self._lock.locked():
            self._close_when_idle = True
        else:
            self._fd.close()

    def close(self) -> None:
        """Close the fd; a parked reader wakes up and returns b""."""
        self._fd.close()


# --- stdin --------------------------------------------------------------------------------


class _InputStream:
    """The writable end of the child's stdin (a pipe, or a dup of the pty master)."""

    def __init__(self, fd: int, *, pty: bool) -> None:
        self._fd = _Fd(fd, write=True)
        self._pty = pty
        self._eof_sent = False  # pty only: input ended by VEOF, fd kept until release
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._eof_sent or self._fd.fd < 0

    async def write(self, data: bytes) -> int:
        if not data:
            self.close()
            return 0
        view = memoryview(data)
        async with self._lock:
            while view:
                view = view[self._write_some(view) :]
                if view:
                    await self._fd.ready()
        return len(data)

    def _write_some(self, view: memoryview) -> int:
        if self.closed:
            raise StdinClosed("stdin is closed")
        try:
            return os.write(self._fd.fd, view)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EIO):
                raise StdinClosed(f"stdin is closed: {exc.strerror}") from exc
            raise StreamError(f"write failed: {exc.strerror}") from exc

    def close(self) -> None:
        """Close stdin. On a pty the child sees end of input through the VEOF character.

        The pty master fd itself stays open until :meth:`release`: closing it right after
        the VEOF sometimes got the child a SIGHUP before it had read the VEOF.
        """
        if not self._pty:
            self._fd.close()
        elif not self.closed:
            self._send_veof(self._fd.fd)
            self._eof_sent = True

    def release(self) -> None:
        """Close the fd for good."""
        self._fd.close()

    @staticmethod
    def _send_veof(fd: int) -> None:
        # A pty master cannot be half-closed; a terminal user ends input with ^D (VEOF).
        # Best effort: if the pty's input queue is full the child is not reading anyway.
        try:
            veof = termios.tcgetattr(fd)[6][termios.VEOF]
            os.write(fd, veof if isinstance(veof, bytes) else bytes([veof]))
        except (OSError, termios.error) as exc:
            logger.debug("could not send VEOF on close_stdin: %s", exc)


# --- the process --------------------------------------------------------------------------


class HostProcess:
    """A real host process with pulled stdio, in its own session and process group.

    Create with :meth:`spawn` (it is a plain call: fork+exec is quick). All fds and the child
    are released by :meth:`kill_and_reap`; after a normal exit, :meth:`release` gives back the
    fds not needed by reads in flight.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        stdin_fd: int,
        stdout_fd: int,
        stderr_fd: int,
        terminal: bool,
    ) -> None:
        self._popen = popen
        self._terminal = terminal
        self._stdin = _InputStream(stdin_fd, pty=terminal)
        self._stdout = _OutputStream(stdout_fd, pty=terminal)
        self._stderr = _OutputStream(stderr_fd, pty=False)
        self._exited = asyncio.Event()
        self._status: int | None = None
        self._pidfd = -1
        self._watch_exit()

    # -- creation --

    @classmethod
    def spawn(
        cls,
        args: Sequence[str],
        *,
        env: Sequence[str] = (),
        cwd: str | None = None,
        terminal: bool = False,
        window: tuple[int, int] | None = None,
    ) -> HostProcess:
        """Start ``args`` with ``env`` ("K=V" strings, as OCI gives them) in ``cwd``.

        ``terminal=True`` puts stdin/stdout/stderr on one pty (stderr then reads as empty);
        ``window`` is its initial (rows, cols). Must be called from a running event loop.
        Raises :class:`SpawnFailed` (OS message included) or :class:`InvalidSpec`.
        """
        argv = _check_args(args)
        environ = _parse_env(env)
        if terminal:
            return cls._spawn_pty(argv, environ, cwd, window)
        return cls._spawn_pipes(argv, environ, cwd)

    @classmethod
    def _spawn_pipes(cls, argv: list[str], environ: dict[str, str], cwd: str | None) -> HostProcess:
        fds: list[int] = []
        try:
            for _ in range(3):
                fds.extend(os.pipe2(os.O_CLOEXEC))
            in_r, in_w, out_r, out_w, err_r, err_w = fds
            popen = _popen(argv, environ, cwd, stdin=in_r, stdout=out_w, stderr=err_w, tty=False)
        except BaseException:
            for fd in fds:
                _close_quietly(fd)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        for fd in (in_w, out_r, err_r):
            _set_nonblocking(fd)
        return cls(popen, stdin_fd=in_w, stdout_fd=out_r, stderr_fd=err_r, terminal=False)

    @classmethod
    def _spawn_pty(
        cls,
        argv: list[str],
        environ: dict[str, str],
        cwd: str | None,
        window: tuple[int, int] | None,
    ) -> HostProcess:
        master, slave = os.openpty()
        try:
            if window is not None:
                _set_winsize(master, *window)
            popen = _popen(argv, environ, cwd, stdin=slave, stdout=slave, stderr=slave, tty=True)
            # Separate fd for writing so closing stdin never closes the output side.
            stdin_fd = os.dup(master)
        except BaseException:
            _close_quietly(master)
            _close_quietly(slave)
            raise
        # Our copy of the slave must go, or the master would never read EIO at the end.
        os.close(slave)
        _set_nonblocking(master)
        return cls(popen, stdin_fd=stdin_fd, stdout_fd=master, stderr_fd=-1, terminal=True)

    def _watch_exit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self._popen.pid)
        except OSError:
            # Kernels before 5.3: a waiter thread per process, like asyncio's threaded watcher.
            self._pidfd = -1
            threading.Thread(target=self._wait_thread, args=(loop,), daemon=True).start()
            return
        loop.add_reader(self._pidfd, self._on_pidfd)

    def _wait_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        self._popen.wait()
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody is waiting
            loop.call_soon_threadsafe(self._on_exit)

    def _on_pidfd(self) -> None:
        if self._popen.poll() is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        _close_quietly(self._pidfd)
        self._pidfd = -1
        self._on_exit()

    def _on_exit(self) -> None:
        rc = self._popen.returncode
        if rc is not None and self._status is None:
            self._status = exit_status(rc)
            self._exited.set()

    # -- properties --

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group and session id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (128+N when killed by signal N), or None while it runs."""
        return self._status

    @property
    def terminal(self) -> bool:
        """True when the process runs on a pty."""
        return self._terminal

    @property
    def stdin_closed(self) -> bool:
        """True once stdin has been closed by us."""
        return self._stdin.closed

    @property
    def output_drained(self) -> bool:
        """True once stdout and stderr were read to end of stream."""
        return self._stdout.at_eof and self._stderr.at_eof

    # -- stdio --

    async def read_stdout(self, n: int) -> bytes:
        """Wait for output and return at most ``n`` bytes from one read; b"" at end of stream."""
        return await self._stdout.read(n)

    async def read_stderr(self, n: int) -> bytes:
        """Like :meth:`read_stdout` for stderr; on a pty stderr is merged, so this reads b""."""
        return await self._stderr.read(n)

    async def write_stdin(self, data: bytes) -> int:
        """Write all of ``data`` (waiting for room) and return its length.

        A zero-length write closes stdin, as current Kata agents do. Raises
        :class:`StdinClosed` when stdin is closed or the child has closed its end.
        """
        return await self._stdin.write(data)

    def close_stdin(self) -> None:
        """Close stdin (idempotent). On a pty the child is sent VEOF (^D) instead."""
        self._stdin.close()

    async def wait_drained(self) -> None:
        """Return once stdout and stderr have been read to end of stream (no bound: wrap it)."""
        await self._stdout.wait_eof()
        await self._stderr.wait_eof()

    # -- control --

    async def wait(self) -> int:
        """Wait for exit; return the status (128+N when killed by signal N)."""
        await self._exited.wait()
        assert self._status is not None
        return self._status

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group. :class:`ProcessExited` once it has exited."""
        if self._status is not None:
            raise ProcessExited(f"process {self.pid} has already exited")
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError as exc:  # exited but not reaped yet, and no group left
            raise ProcessExited(f"process {self.pid} has already exited") from exc

    def resize(self, rows: int, cols: int) -> None:
        """Set the pty window size (the foreground group gets SIGWINCH)."""
        fd = self._stdout.fileno() if self._terminal else -1
        if fd < 0:
            raise NotATerminal(f"process {self.pid} has no (open) terminal")
        try:
            _set_winsize(fd, rows, cols)
        except OSError as exc:
            raise NotATerminal(f"cannot resize terminal: {exc.strerror}") from exc

    def release(self) -> None:
        """Give back stdin and every output fd not used by a read in flight.

        Reads in flight complete normally and close their fd when they return; later reads
        return b"". The process itself is not touched.
        """
        self._stdin.release()
        self._stdout.release()
        self._stderr.release()

    async def kill_and_reap(self, reap_timeout: float = 5.0) -> int:
        """SIGKILL the whole group, wait (bounded) for the exit, close every fd; return status.

        Raises :class:`agentio.errors.AgentTimeout` if the child is not gone within
        ``reap_timeout`` (e.g. stuck in uninterruptible sleep); fds are closed regardless.
        """
        # After the leader is reaped its group id stays reserved only while members remain,
        # so killpg cannot reach a stranger unless the pid space wrapped in between.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal_mod.SIGKILL)
        try:
            async with asyncio.timeout(reap_timeout):
                status = await self.wait()
        except TimeoutError as exc:
            raise errors.AgentTimeout(f"process {self.pid} not reaped after SIGKILL") from exc
        finally:
            self._close_all()
        return status

    def _close_all(self) -> None:
        self._stdin.release()
        self._stdout.close()
        self._stderr.close()


# --- spawn helpers ------------------------------------------------------------------------


def _check_args(args: Sequence[str]) -> list[str]:
    argv = list(args)
    if not argv or not argv[0]:
        raise InvalidSpec("process args are empty")
    if any("\0" in a for a in argv):
        raise InvalidSpec("process args contain a NUL byte")
    return argv


def _parse_env(env: Sequence[str]) -> dict[str, str]:
    environ: dict[str, str] = {}
    for entry in env:
        key, sep, value = entry.partition("=")
        if not sep or not key or "\0" in entry:
            raise InvalidSpec(f"bad environment entry {entry!r}")
        environ[key] = value
    return environ


def _popen(
    argv: list[str],
    environ: dict[str, str],
    cwd: str | None,
    *,
    stdin: int,
    stdout: int,
    stderr: int,
    tty: bool,
) -> subprocess.Popen[bytes]:
    if cwd is not None and "\0" in cwd:
        raise InvalidSpec("cwd contains a NUL byte")
    try:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=environ,
            close_fds=True,
            start_new_session=True,
            # preexec_fn forces fork instead of vfork; only pay for it when a ctty is needed.
            preexec_fn=_take_controlling_tty if tty else None,
        )
    except OSError as exc:
        where = f": {exc.filename!r}" if exc.filename else ""
        raise SpawnFailed(f"{exc.strerror or exc}{where}", errno_=exc.errno) from exc
    except subprocess.SubprocessError as exc:  # preexec_fn failed in the child
        raise SpawnFailed(str(exc)) from exc
