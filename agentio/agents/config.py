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
from ..transports import DialPolicy

C = TypeVar("C")


@dataclasses.dataclass(frozen=True, slots=True)
class KataConfig:
    """Settings of a Kata agent connection.

    Attributes:
        call_timeout: default deadline of ordinary calls, seconds (long polls have none).
        dial_timeout: total time to reach the agent, retries included, seconds.
        dial_attempt_timeout: bound on one connection attempt, seconds.
        handshake_timeout: bound on the hybrid-vsock ``OK`` reply, seconds.
    """

    call_timeout: float = 60.0
    dial_timeout: float = 30.0
    dial_attempt_timeout: float = 5.0
    handshake_timeout: float = 5.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"kata config: {field.name} must be a positive number")

    def dial_policy(self) -> DialPolicy:
        """The transport's dial policy for these settings."""
        return DialPolicy(budget=self.dial_timeout,
                          attempt_timeout=min(self.dial_attempt_timeout, self.dial_timeout),
                          handshake_timeout=self.handshake_timeout)


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
            raise ConfigError(f"{what} config: unknown field {key!r} "
                              f"(known: {', '.join(sorted(fields))})")
        kwargs[key] = _check_type(f"{what} config: {key}", hints[key], value)
    return cls(**kwargs)


def _check_type(where: str, expected: Any, value: Any) -> Any:
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected in (str, bool) and isinstance(value, expected):
        return value
    name = getattr(expected, "__name__", str(expected))
    raise ConfigError(f"{where} must be {name}, not {type(value).__name__} {value!r:.40}")
