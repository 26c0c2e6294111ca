"""The host side of hyperstart's ctl channel as a sans-I/O state machine.

Layer: protocols. Bytes in, events out; no sockets, awaits or clocks.

Rules it enforces (from the real agent's behaviour):

* The guest sends READY once at boot. Until then (when ``wait_ready``) nothing may be sent. A
  host reconnecting to a running guest never sees READY and starts with ``wait_ready=False``.
* One command at a time: each gets exactly one ACK or ERROR, matched to it. An ACK or ERROR
  with nothing outstanding is a protocol violation.
* The guest reports consumed bytes with NEXT (a u32 count). They are checked against what was
  sent and otherwise just consumed; the host never sends NEXT (the agent answers it ERROR).
* PROCESSASYNCEVENT arrives at any time and is reported as a :class:`ProcessEvent`.
* After DESTROYPOD the guest powers off: its ACK, or the channel closing, ends the session.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agentio.errors import ConfigError, ProtocolError

from .codec import (
    HOST_COMMANDS,
    MAX_CTL_PAYLOAD,
    Code,
    CtlDecoder,
    code_name,
    decode_u32,
    encode_command,
)
from .messages import ProcessEvent, parse_process_event


class CtlState(enum.Enum):
    """Where the ctl session is."""

    WAIT_READY = "wait-ready"
    IDLE = "idle"
    BUSY = "busy"
    DESTROYED = "destroyed"
    """DESTROYPOD was answered: the guest is powering off."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The guest announced it is up."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the outstanding ``command``: ACK (``ok``) or ERROR, with its payload."""

    command: Code
    ok: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class Consumed:
    """The guest read ``count`` more bytes of what the host sent."""

    count: int


CtlEvent = Ready | Reply | Consumed | ProcessEvent


class CtlClient:
    """State of one ctl connection, host side.

    Args:
        wait_ready: start by waiting for READY (a fresh guest); ``False`` for a reconnect.
        max_payload: bound on any payload either way.
    """

    def __init__(self, *, wait_ready: bool = True, max_payload: int = MAX_CTL_PAYLOAD) -> None:
        self.state = CtlState.WAIT_READY if wait_ready else CtlState.IDLE
        self.ready_seen = False
        self._decoder = CtlDecoder(max_payload)
        self._max_payload = max_payload
        self._pending: Code | None = None
        self._unconsumed = 0
        self._broken: ProtocolError | None = None

    @property
    def pending(self) -> Code | None:
        """The command waiting for its ACK/ERROR, if any."""
        return self._pending

    @property
    def unconsumed(self) -> int:
        """Bytes sent that the guest has not yet reported with NEXT."""
        return self._unconsumed

    def send(self, code: Code, payload: bytes = b"") -> bytes:
        """Frame a command; raises :class:`ConfigError` unless the session can take one now."""
        if code not in HOST_COMMANDS:
            raise ConfigError(f"ctl code {code_name(code)} is not a host command")
        if self.state is not CtlState.IDLE:
            raise ConfigError(f"cannot send {code_name(code)}: ctl session is {self.state.value}")
        frame = encode_command(code, payload, max_payload=self._max_payload)
        self.state = CtlState.BUSY
        self._pending = Code(code)
        self._unconsumed += len(frame)
        return frame

    def receive(self, data: bytes | bytearray | memoryview) -> list[CtlEvent]:
        """Feed bytes from the guest; the events they complete, in order.

        Raises :class:`ProtocolError` (the session is unusable afterwards) on malformed frames,
        unknown or host-only codes, unsolicited replies, and NEXT counts beyond what was sent.
        """
        if self._broken is not None:
            raise self._broken
        try:
            return [self._frame(code, payload) for code, payload in self._decoder.feed(data)]
        except ProtocolError as exc:
            self._broken = exc
            raise

    def _frame(self, code: int, payload: bytes) -> CtlEvent:
        if code == Code.NEXT:
            count = decode_u32(payload, "NEXT")
            if count > self._unconsumed:
                raise ProtocolError(f"NEXT reports {count} bytes consumed, only "
                                    f"{self._unconsumed} were sent")
            self._unconsumed -= count
            return Consumed(count)
        if code == Code.PROCESSASYNCEVENT:
            return parse_process_event(payload)
        if code == Code.READY:
            self.ready_seen = True
            if self.state is CtlState.WAIT_READY:
                self.state = CtlState.IDLE
            return Ready()
        if code in (Code.ACK, Code.ERROR):
            command = self._pending
            if command is None:
                raise ProtocolError(f"{code_name(code)} with no command outstanding")
            self._pending = None
            ok = code == Code.ACK
            if command is Code.VERSION and ok:
                decode_u32(payload, "VERSION reply")
            self.state = (CtlState.DESTROYED if command is Code.DESTROYPOD and ok
                          else CtlState.IDLE)
            return Reply(command, ok, payload)
        if code in Code._value2member_map_:
            raise ProtocolError(f"guest sent {code_name(code)}, which only a host may send")
        raise ProtocolError(f"guest sent unknown ctl code {code}")
