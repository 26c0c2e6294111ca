"""Bounds on what a peer can make us hold or wait for.

Layer: shared configuration (imports nothing from agentio). Passed down as values; the
defaults are safe for an untrusted guest.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection and per-process bounds.

    Attributes:
        max_message: largest frame payload sent or accepted (ttrpc's own cap is 4 MiB).
        max_pending_calls: calls in flight on one connection before new ones are refused.
        stdout_buffer: bytes of one output stream held for the caller before reading from
            the agent pauses (backpressure reaches the guest process instead of our memory).
        read_chunk: bytes asked for per ReadStdout/ReadStderr (the Kata shim uses 32 KiB).
        stdin_chunk: largest single WriteStdin; bigger writes are split, in order.
        stdin_buffer: bytes ``stdin.write()`` queues before ``drain()`` blocks.
        drain_timeout: after the exit status arrives, how long output may still take to
            reach end of stream (a background child can hold stdout open forever).
        teardown_timeout: bound on one teardown (closing a process, removing a container,
            destroying a sandbox), which runs to its end even if the caller was cancelled.
        handshake_line: longest hybrid-vsock ``OK <port>`` reply read from the VMM; a longer
            or endless line is a :class:`~agentio.errors.HandshakeError`.
    """

    max_message: int = 4 * MIB
    max_pending_calls: int = 10_000
    stdout_buffer: int = 1 * MIB
    read_chunk: int = 32 * 1024
    stdin_chunk: int = 1 * MIB
    stdin_buffer: int = 1 * MIB
    drain_timeout: float = 5.0
    teardown_timeout: float = 30.0
    handshake_line: int = 64  # agentio.transports.hvsock.DEFAULT_MAX_LINE

    def __post_init__(self) -> None:
        for name in ("max_message", "max_pending_calls", "stdout_buffer", "read_chunk",
                     "stdin_chunk", "stdin_buffer"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Limits.{name} must be positive")
        if self.stdin_chunk > self.max_message - 1024:
            raise ConfigError("Limits.stdin_chunk must leave room for the envelope in max_message")
        if self.drain_timeout < 0:
            raise ConfigError("Limits.drain_timeout must not be negative")
        if not self.teardown_timeout > 0:
            raise ConfigError("Limits.teardown_timeout must be positive")
        if self.handshake_line < len(b"OK 0\n"):
            raise ConfigError("Limits.handshake_line is too small for any hybrid-vsock reply")


DEFAULT_LIMITS = Limits()
