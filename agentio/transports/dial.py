"""Dial an agent address: connect (and hybrid-vsock handshake) with bounded retries.

Layer: transports. Imports only :mod:`agentio.errors` and its own package.

A VM's agent is not listening the moment the VM starts, so one dial is a series of attempts
within a total *budget*. Retried: the socket file not there yet, connection refused / reset /
aborted / timed out, a full unix backlog, the VMM closing the socket after ``CONNECT`` (guest
port not listening yet) and a connect or handshake that outlives its timeout. Not retried
(fails at once): permission denied and other OS errors, a socket the factory cannot create, and
a hybrid-vsock reply that is malformed or too long — a VMM that speaks garbage will not get
better by asking again.

Every failure is a :class:`~agentio.errors.DialError` chained to the last cause. A cancelled or
failed dial closes the socket it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from agentio.errors import AgentError, AgentTimeout, ConfigError, DialError, HandshakeError
from agentio.transports.address import Address, parse_address
from agentio.transports.hvsock import DEFAULT_MAX_LINE, HandshakeClosed, HybridVsockHandshake

log = logging.getLogger(__name__)

SocketFactory = Callable[[Address], socket.socket]
"""Makes the socket for one attempt: non-blocking, and either unconnected (dial connects it to
the address) or already connected (dial uses it as is — e.g. an fd handed over by a VMM, or a
socketpair in tests)."""

_RETRYABLE_ERRNOS = frozenset(
    {
        errno.ENOENT,  # the VMM / agent has not created its socket file yet
        errno.ECONNREFUSED,  # file there, nobody listening (yet)
        errno.ECONNRESET,  # vsock: no listener on the guest port yet
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EAGAIN,  # unix listener's backlog is full
        errno.EPIPE,  # VMM closed before we could send CONNECT
    }
)


@dataclass(frozen=True, slots=True)
class DialPolicy:
    """How hard to try reaching an agent. All times in seconds.

    ``budget`` bounds the whole dial (Kata's own dial timeout is of the same order); each
    connect is bounded by ``attempt_timeout`` and each hybrid-vsock reply wait by
    ``handshake_timeout``, both also by what is left of the budget. Between attempts the delay
    starts at ``backoff_initial`` and doubles up to ``backoff_max``, shortened by up to
    ``backoff_jitter`` (a fraction) so many sandboxes dialing at once spread out. The first
    attempt is always made; a later one only if its backoff ends before the budget does.
    """

    budget: float = 30.0
    attempt_timeout: float = 5.0
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    backoff_jitter: float = 0.1
    handshake_max_line: int = DEFAULT_MAX_LINE
    handshake_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("budget", "attempt_timeout", "backoff_initial", "handshake_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"DialPolicy.{name} must be a finite number > 0, not {value!r}")
        if not (math.isfinite(self.backoff_max) and self.backoff_max >= self.backoff_initial):
            raise ConfigError("DialPolicy.backoff_max must be finite and >= backoff_initial")
        if not 0 <= self.backoff_jitter < 1:
            raise ConfigError("DialPolicy.backoff_jitter must be in [0, 1)")
        if self.handshake_max_line < len(b"OK 0\n"):
            raise ConfigError("DialPolicy.handshake_max_line is too small for any reply")

    def backoff(self, attempt: int, rand: float) -> float:
        """Delay after failed attempt number ``attempt`` (1-based); ``rand`` is in [0, 1)."""
        base = min(self.backoff_initial * 2.0 ** min(attempt - 1, 64), self.backoff_max)
        return base * (1.0 - self.backoff_jitter * rand)


@dataclass(frozen=True, slots=True)
class Dialed:
    """A connected non-blocking socket, and the bytes already read from it.

    ``initial_data`` is what followed the hybrid-vsock ``OK`` line in the same read: it belongs
    to the protocol and must be processed before anything read later. The caller owns ``sock``.
    """

    sock: socket.socket
    initial_data: bytes = b""
    host_port: int | None = None
    attempts: int = 1


def default_socket_factory(address: Address) -> socket.socket:
    """A fresh non-blocking unconnected socket of the address's family."""
    family = socket.AF_VSOCK if address.scheme == "vsock" else socket.AF_UNIX
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def dial(
    address: Address | str,
    policy: DialPolicy = DialPolicy(),
    *,
    socket_factory: SocketFactory | None = None,
) -> Dialed:
    """Connect to ``address`` (handshaking for ``hvsock``), retrying within ``policy.budget``.

    Raises :class:`~agentio.errors.ConfigError` for a bad address string and
    :class:`~agentio.errors.DialError` (chained to the last cause) when no attempt succeeded.
    """
    address = parse_address(address) if isinstance(address, str) else address
    loop = asyncio.get_running_loop()
    factory = socket_factory or default_socket_factory
    start = loop.time()
    deadline = start + policy.budget
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _attempt(loop, address, policy, factory, deadline, attempt)
        except (OSError, AgentError) as exc:
            if not _retryable(exc):
                raise _dial_error(address, attempt, loop.time() - start, exc, final=True) from exc
            last = exc
        delay = policy.backoff(attempt, random.random())
        if loop.time() + delay >= deadline:
            raise _dial_error(address, attempt, loop.time() - start, last, final=False) from last
        log.debug("dial %s: attempt %d failed (%s); retry in %.3fs", address, attempt, last, delay)
        await asyncio.sleep(delay)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, HandshakeClosed | AgentTimeout):
        return True
    if isinstance(exc, HandshakeError):
        return False
    return isinstance(exc, OSError) and exc.errno in _RETRYABLE_ERRNOS


def _dial_error(
    address: Address, attempts: int, elapsed: float, cause: BaseException, *, final: bool
) -> DialError:
    why = "not retryable" if final else "budget spent"
    return DialError(
        f"cannot reach {address}: {attempts} attempt(s) in {elapsed:.3f}s, {why};"
        f" last error: {_reason(cause)}"
    )


def _reason(exc: BaseException) -> str:
    # An OSError's str() repeats the address as if it were a file name; the message has it.
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


async def _attempt(
    loop: asyncio.AbstractEventLoop,
    address: Address,
    policy: DialPolicy,
    factory: SocketFactory,
    deadline: float,
    attempt: int,
) -> Dialed:
    sock = factory(address)
    try:
        timeout = min(policy.attempt_timeout, deadline - loop.time())
        async with _bounded(timeout, f"connect to {address}"):
            await _connect(loop, sock, address)
        if address.scheme != "hvsock":
            return Dialed(sock, attempts=attempt)
        host_port, leftover = await _handshake(loop, sock, address, policy, deadline)
        return Dialed(sock, leftover, host_port, attempt)
    except BaseException:
        sock.close()
        raise


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Address) -> None:
    # Our own non-blocking connect rather than loop.sock_connect: uvloop's cannot resolve a
    # vsock address, and one code path for every family is easier to reason about.
    if _is_connected(sock):
        return
    target: str | tuple[int, int]
    if address.scheme == "vsock":
        assert address.cid is not None and address.port is not None
        target = (address.cid, address.port)
    else:
        target = address.unix_sockaddr()
    err = sock.connect_ex(target)
    if err == errno.EINPROGRESS:
        await _wait_ready(loop, sock, write=True)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err not in (0, errno.EISCONN):
        raise OSError(err, os.strerror(err), str(address))


def _is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


async def _wait_ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, *,
                      write: bool) -> None:
    # The watch is removed before we return, even when cancelled: the socket may be closed
    # right after, and its fd number reused by the next attempt. (uvloop's sock_recv and
    # sock_sendall drop their watch a loop turn later, in a done-callback: a closed and
    # reused fd then fails the next attempt with EBADF.)
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    if write:
        loop.add_writer(fd, _set_done, ready)
    else:
        loop.add_reader(fd, _set_done, ready)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _send_all(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except (BlockingIOError, InterruptedError):
            await _wait_ready(loop, sock, write=True)


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    while True:
        try:
            return sock.recv(size)
        except (BlockingIOError, InterruptedError):
            await _wait_ready(loop, sock, write=False)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _handshake(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    address: Address,
    policy: DialPolicy,
    deadline: float,
) -> tuple[int, bytes]:
    assert address.port is not None
    handshake = HybridVsockHandshake(address.port, max_line=policy.handshake_max_line)
    timeout = min(policy.handshake_timeout, deadline - loop.time())
    async with _bounded(timeout, f"reply to CONNECT {address.port} from {address}"):
        await _send_all(loop, sock, handshake.request())
        host_port = None
        while host_port is None:
            # Never read more than one line's worth: memory stays bounded whatever the VMM does.
            host_port = handshake.receive(await _receive(loop, sock, handshake.max_line))
    return host_port, handshake.leftover


@contextlib.asynccontextmanager
async def _bounded(seconds: float, what: str) -> AsyncIterator[None]:
    """``asyncio.timeout`` that turns its own expiry (only) into :class:`AgentTimeout`."""
    timeout = asyncio.timeout(max(seconds, 0.0))
    try:
        async with timeout:
            yield
    except TimeoutError:
        if timeout.expired():
            raise AgentTimeout(f"no {what} within {max(seconds, 0.0):.3f}s") from None
        raise
