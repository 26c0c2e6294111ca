"""Every exception agentio raises.

Layer: shared by all layers (transports, protocols, agents, public API); imports nothing
from agentio.

Each error can carry *context* — the operation (RPC method or public call) and the
sandbox / container / exec it concerned — so a failure deep in a protocol reads like
``NotFound: WaitProcess (sandbox=sb-1 container=c1 exec=e7): InvalidExecId``. Lower layers
set what they know (the method); the agent layer adds the ids with :meth:`AgentError.add_context`.
"""

from __future__ import annotations

from typing import ClassVar

_CONTEXT_KEYS = ("sandbox", "container", "exec")

MAX_MESSAGE_TEXT = 1024
"""Characters of an error's message kept: the text often comes from the agent (a status
message, a guest's error text), and the wire allows megabytes of it."""


def truncate_text(text: str, limit: int = MAX_MESSAGE_TEXT) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how much was dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


class AgentError(Exception):
    """Base class of all agentio errors."""

    def __init__(self, message: str = "", *, operation: str | None = None, **context: str) -> None:
        message = truncate_text(message)  # the one place every error's text passes
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.context: dict[str, str] = {k: v for k, v in context.items() if v}

    def add_context(self, *, operation: str | None = None, **context: str | None) -> AgentError:
        """Fill in the operation and ids this error concerns, keeping any already set."""
        if operation and not self.operation:
            self.operation = operation
        for key, value in context.items():
            if value and key not in self.context:
                self.context[key] = value
        return self

    def _where(self) -> str:
        ids = " ".join(f"{k}={self.context[k]}" for k in sorted(self.context, key=_context_order))
        op = self.operation or ""
        if op and ids:
            return f"{op} ({ids})"
        return op or ids

    def __str__(self) -> str:
        where = self._where()
        if where and self.message:
            return f"{where}: {self.message}"
        return where or self.message


def _context_order(key: str) -> tuple[int, str]:
    return (_CONTEXT_KEYS.index(key) if key in _CONTEXT_KEYS else len(_CONTEXT_KEYS), key)


# --- configuration and usage -------------------------------------------------------------


class ConfigError(AgentError, ValueError):
    """A bad address, agent type, configuration field or argument."""


class UnsupportedOperation(AgentError, NotImplementedError):
    """The agent type cannot do this operation (e.g. ListProcesses on a Kata 2+ agent)."""


# --- transports ---------------------------------------------------------------------------


class AgentConnectionError(AgentError, ConnectionError):
    """The connection to the agent could not be made, or was lost."""


class DialError(AgentConnectionError):
    """Every attempt to reach the agent within the dial budget failed."""


class HandshakeError(AgentConnectionError):
    """The hybrid-vsock ``CONNECT``/``OK`` handshake failed (refused, malformed, too long)."""


class ConnectionClosed(AgentConnectionError):
    """The connection closed (or failed) while the call was pending or before it was sent."""


class SandboxFailed(AgentConnectionError):
    """The sandbox was marked failed (by its health monitor): calls fail fast with the cause.

    ``__cause__`` is what the monitor saw (a lost connection, checks left unanswered).
    """


# --- protocol violations from the peer ----------------------------------------------------


class ProtocolError(AgentError):
    """The peer sent bytes that break the protocol. The connection is unusable afterwards."""


class FrameTooLarge(ProtocolError):
    """A frame or message is larger than the configured limit."""


class YamuxError(ProtocolError):
    """The yamux peer broke the protocol (bad header, window exceeded, unknown stream, …).

    ``go_away_code`` is the yamux GoAway code to send before tearing the session down.
    """

    go_away_code: ClassVar[int] = 1


# --- time ---------------------------------------------------------------------------------


class AgentTimeout(AgentError, TimeoutError):
    """A client-side bound ran out (call deadline, dial attempt, drain window)."""


# --- stdio --------------------------------------------------------------------------------


class OutputIncomplete(AgentError):
    """Output could not be read to its end: the rest of the stream is lost, not silently dropped."""


# --- RPC status from the agent ------------------------------------------------------------


class RpcError(AgentError):
    """The agent answered a call with a non-OK status (gRPC status codes, shared by ttrpc)."""

    code: ClassVar[int] = 2
    code_name: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str = "", *, operation: str | None = None, **context: str) -> None:
        super().__init__(message, operation=operation, **context)

    def __str__(self) -> str:
        return f"[{self.code_name}] {super().__str__()}"


class Cancelled(RpcError):
    code, code_name = 1, "CANCELLED"


class Unknown(RpcError):
    code, code_name = 2, "UNKNOWN"


class InvalidArgument(RpcError):
    code, code_name = 3, "INVALID_ARGUMENT"


class DeadlineExceeded(RpcError, TimeoutError):
    code, code_name = 4, "DEADLINE_EXCEEDED"


class NotFound(RpcError):
    code, code_name = 5, "NOT_FOUND"


class AlreadyExists(RpcError):
    code, code_name = 6, "ALREADY_EXISTS"


class PermissionDenied(RpcError):
    code, code_name = 7, "PERMISSION_DENIED"


class ResourceExhausted(RpcError):
    code, code_name = 8, "RESOURCE_EXHAUSTED"


class FailedPrecondition(RpcError):
    code, code_name = 9, "FAILED_PRECONDITION"


class Aborted(RpcError):
    code, code_name = 10, "ABORTED"


class OutOfRange(RpcError):
    code, code_name = 11, "OUT_OF_RANGE"


class Unimplemented(RpcError):
    code, code_name = 12, "UNIMPLEMENTED"


class Internal(RpcError):
    code, code_name = 13, "INTERNAL"


class Unavailable(RpcError):
    code, code_name = 14, "UNAVAILABLE"


class DataLoss(RpcError):
    code, code_name = 15, "DATA_LOSS"


class Unauthenticated(RpcError):
    code, code_name = 16, "UNAUTHENTICATED"


_BY_CODE: dict[int, type[RpcError]] = {
    cls.code: cls
    for cls in (
        Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
        PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
        Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated,
    )
}


def rpc_error(code: int, message: str, *, operation: str | None = None) -> RpcError:
    """The one place a wire status (ttrpc or gRPC) becomes an exception."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err: RpcError = RpcError(f"(status {code}) {message}", operation=operation)
        return err
    return cls(message, operation=operation)


_END_OF_STREAM: frozenset[tuple[int, str]] = frozenset({
    (13, "read meet eof"),  # the Rust agent before Kata 3.27: INTERNAL "read meet eof"
    (2, "EOF"),             # the Go agent of Kata 1.x: gRPC UNKNOWN "EOF" (io.EOF's text)
})


def is_end_of_stream(error: RpcError) -> bool:
    """True for the agent answers that mean "this output stream has ended".

    Agents say it three ways: an OK reply with no data (handled by the caller), INTERNAL
    "read meet eof" (older Rust agents) and gRPC UNKNOWN "EOF" (Kata 1.x). Only those exact
    forms count: any other error that merely mentions "eof" is an error, not an end.
    """
    return (error.code, error.message) in _END_OF_STREAM
