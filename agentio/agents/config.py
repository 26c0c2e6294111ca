"""Per-agent configuration, decoded from plain mappings (as read from TOML or JSON).

Layer: agents. Each agent type has a frozen dataclass; :func:`decode_config` checks every
key and type against it, so a typo or a wrong type is an error naming the field rather than a
setting silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from ..errors import ConfigError
from ..limits import DEFAULT_LIMITS, Limits
from ..transports import Address, DialPolicy, parse_address

C = TypeVar("C")


@dataclasses.dataclass(frozen=True, slots=True)
class KataConfig:
    """Settings of a Kata agent connection.

    Attributes:
        call_timeout: default deadline of ordinary calls, seconds (long polls have none).
        dial_timeout: total time to reach the agent, retries included, seconds.
        dial_attempt_timeout: bound on one connection attempt, seconds.
        handshake_timeout: bound on the hybrid-vsock ``OK`` reply, seconds.
        health_check_interval: seconds between health checks of a sandbox made by
            :meth:`agentio.Sandbox.create` (a :class:`~agentio.monitor.HealthMonitor` that
            marks the sandbox failed when its agent is gone); ``None`` (default): no checks.
    """

    call_timeout: float = 60.0
    dial_timeout: float = 30.0
    dial_attempt_timeout: float = 5.0
    handshake_timeout: float = 5.0
    health_check_interval: float | None = None

    def __post_init__(self) -> None:
        for name in ("call_timeout", "dial_timeout", "dial_attempt_timeout",
                     "handshake_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"kata config: {name} must be a positive number")
        interval = self.health_check_interval
        if interval is not None and not (math.isfinite(interval) and interval > 0):
            raise ConfigError("kata config: health_check_interval must be a positive number "
                              "or null")

    def dial_policy(self, limits: Limits = DEFAULT_LIMITS) -> DialPolicy:
        """The transport's dial policy for these settings (and the handshake line limit)."""
        return DialPolicy(budget=self.dial_timeout,
                          attempt_timeout=min(self.dial_attempt_timeout, self.dial_timeout),
                          handshake_timeout=self.handshake_timeout,
                          handshake_max_line=limits.handshake_line)


@dataclasses.dataclass(frozen=True, slots=True)
class Kata1Config(KataConfig):
    """Settings of a Kata 1.x agent connection (gRPC): :class:`KataConfig`'s, and

    Attributes:
        yamux: run a yamux session on the connection and one HTTP/2 connection per yamux
            stream (the 1.x agent on a serial port, or behind a proxy), or speak HTTP/2
            directly (``False``; the 1.x agent on vsock). ``None`` (the default) chooses by
            address: yamux on ``unix://``, direct on ``vsock://`` and ``hvsock://``.
    """

    yamux: bool | None = None

    def uses_yamux(self, address: Address) -> bool:
        """Whether connections to ``address`` run through a yamux session."""
        if self.yamux is None:
            return address.scheme == "unix"
        return self.yamux


HYPERSTART_CTL_PORT = 2718
HYPERSTART_TTY_PORT = 2719


@dataclasses.dataclass(frozen=True, slots=True)
class HyperstartConfig:
    """Settings of a hyperstart agent connection.

    The address given to :func:`~agentio.agents.open_agent` (or ``Sandbox.create``) is the
    **ctl** channel; ``tty_address`` is the tty channel. Left empty, it is derived from a
    ``vsock://CID:PORT`` or ``hvsock://PATH:PORT`` ctl address as the same CID / VMM socket on
    port 2719 (hyperstart's vsock ports are 2718 for ctl and 2719 for tty); a ``unix://`` ctl
    address needs it set.

    Attributes:
        tty_address: the tty channel's address URL.
        wait_ready: expect the READY the guest sends once at boot; ``False`` to reconnect to a
            running guest (which sends none).
        ready_timeout: bound on the READY wait, seconds.
        call_timeout: default deadline of ordinary commands, seconds.
        dial_timeout, dial_attempt_timeout, handshake_timeout: as for :class:`KataConfig`.
        share_dir: the 9p tag STARTPOD names as ``shareDir`` (empty: none). A tag the guest
            cannot mount makes the real agent power the VM off.
    """

    tty_address: str = ""
    wait_ready: bool = True
    ready_timeout: float = 30.0
    call_timeout: float = 60.0
    dial_timeout: float = 30.0
    dial_attempt_timeout: float = 5.0
    handshake_timeout: float = 5.0
    share_dir: str = ""

    def __post_init__(self) -> None:
        for name in ("ready_timeout", "call_timeout", "dial_timeout", "dial_attempt_timeout",
                     "handshake_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"hyperstart config: {name} must be a positive number")
        if self.tty_address:
            parse_address(self.tty_address)
        if "\0" in self.share_dir:
            raise ConfigError("hyperstart config: share_dir contains a NUL character")

    def tty_for(self, ctl: Address) -> Address:
        """The tty channel's address for this ``ctl`` address."""
        if self.tty_address:
            return parse_address(self.tty_address)
        if ctl.scheme == "vsock":
            assert ctl.cid is not None
            return Address.vsock(ctl.cid, HYPERSTART_TTY_PORT)
        if ctl.scheme == "hvsock":
            assert ctl.path is not None
            return Address.hvsock(ctl.path, HYPERSTART_TTY_PORT)
        raise ConfigError("hyperstart config: tty_address is required with a unix ctl address")

    def dial_policy(self, limits: Limits = DEFAULT_LIMITS) -> DialPolicy:
        """The transport's dial policy for these settings (and the handshake line limit)."""
        return DialPolicy(budget=self.dial_timeout,
                          attempt_timeout=min(self.dial_attempt_timeout, self.dial_timeout),
                          handshake_timeout=self.handshake_timeout,
                          handshake_max_line=limits.handshake_line)


def decode_config(cls: type[C], values: Mapping[str, Any] | None, *, what: str) -> C:
    """Build the config dataclass ``cls`` from ``values``, refusing unknown keys and bad types."""
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise ConfigError(f"{what} config must be a mapping, not {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            known = f"known: {', '.join(sorted(fields))}" if fields else "it takes none"
            raise ConfigError(f"{what} config: unknown field {key!r} ({known})")
        kwargs[key] = _check_type(f"{what} config: {key}", hints[key], value)
    return cls(**kwargs)


def _check_type(where: str, expected: Any, value: Any) -> Any:
    options = typing.get_args(expected)
    if type(None) in options:  # X | None
        if value is None:
            return None
        (expected,) = (option for option in options if option is not type(None))
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected in (str, bool) and isinstance(value, expected):
        return value
    name = getattr(expected, "__name__", str(expected))
    raise ConfigError(f"{where} must be {name}, not {type(value).__name__} {value!r:.40}")
