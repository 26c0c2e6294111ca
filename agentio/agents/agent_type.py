"""The kinds of guest agent agentio can drive.

Layer: agents.
"""

from __future__ import annotations

import enum

from ..errors import ConfigError


class AgentType(enum.Enum):
    """An agent type, parsed from and printed as its name (``noop``, ``hyperstart``, ``kata``)."""

    NOOP = "noop"
    HYPERSTART = "hyperstart"
    KATA = "kata"
    KATA1 = "kata1"

    @classmethod
    def parse(cls, value: str | AgentType) -> AgentType:
        """The type named ``value``; anything else is a :class:`ConfigError` listing the names."""
        if isinstance(value, AgentType):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise ConfigError(f"unknown agent type {value!r} (expected one of: {names})") from None

    def __str__(self) -> str:
        return self.value
