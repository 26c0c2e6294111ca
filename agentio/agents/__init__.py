"""Agents: the operation set of a guest agent and one adapter per agent type.

Layer: agents. :func:`open_agent` is the factory: an address and a type in, an
:class:`Agent` out (connecting lazily, on the first call).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..limits import DEFAULT_LIMITS, Limits
from ..protocols.ttrpc import TtrpcClient
from ..transports import Address, connect, parse_address
from .agent_type import AgentType
from .base import Agent
from .config import KataConfig, decode_config
from .kata import KataAgent
from .noop import NoopAgent
from .specs import (
    AgentVersion,
    ContainerStats,
    ProcessSpec,
    SandboxSpec,
    default_container_spec,
)

__all__ = [
    "Agent",
    "AgentType",
    "AgentVersion",
    "ContainerStats",
    "KataAgent",
    "KataConfig",
    "NoopAgent",
    "ProcessSpec",
    "SandboxSpec",
    "default_container_spec",
    "open_agent",
]


def open_agent(
    address: str | Address | None,
    agent_type: AgentType | str = AgentType.KATA,
    *,
    sandbox_id: str = "",
    config: Mapping[str, Any] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Agent:
    """The agent of ``agent_type`` at ``address``; nothing is dialled until the first call.

    ``config`` is the agent type's settings as a plain mapping (see :class:`KataConfig`);
    unknown keys and wrong types raise :class:`~agentio.errors.ConfigError`.
    """
    kind = AgentType.parse(agent_type)
    if kind is AgentType.NOOP:
        decode_config(_NoConfig, config, what="noop")
        return NoopAgent(limits=limits)
    if address is None:
        raise ConfigError(f"the {kind} agent needs an address")
    target = parse_address(address) if isinstance(address, str) else address
    if kind is AgentType.KATA:
        settings = decode_config(KataConfig, config, what="kata")
        policy = settings.dial_policy()

        def connector(factory: Any) -> Any:
            return connect(target, factory, policy)

        channel = TtrpcClient(connector, max_payload=limits.max_message,
                              max_pending=limits.max_pending_calls)
        return KataAgent(channel, sandbox_id=sandbox_id, call_timeout=settings.call_timeout,
                         limits=limits)
    raise ConfigError(f"the {kind} agent is not available in this version")


@dataclasses.dataclass(frozen=True)
class _NoConfig:
    """The noop agent takes no settings."""
