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
from ..protocols.grpc import GrpcClient
from ..protocols.hyperstart.client import HyperstartClient
from ..protocols.ttrpc import TtrpcClient
from ..transports import Address, connect, parse_address
from ..transports.yamux.dialer import YamuxDialer
from .agent_type import AgentType
from .base import Agent
from .config import HyperstartConfig, Kata1Config, KataConfig, decode_config
from .hyperstart import HyperstartAgent
from .kata import KataAgent
from .kata1 import Kata1Agent
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
    "HyperstartAgent",
    "HyperstartConfig",
    "Kata1Agent",
    "Kata1Config",
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

    ``config`` is the agent type's settings as a plain mapping (:class:`KataConfig` for
    ``kata`` and ``kata1``, :class:`HyperstartConfig` for ``hyperstart``, nothing for
    ``noop``, which ignores ``address``); unknown keys and wrong types raise
    :class:`~agentio.errors.ConfigError` naming the field.
    """
    kind = AgentType.parse(agent_type)
    if kind is AgentType.NOOP:
        decode_config(_NoConfig, config, what="noop")
        return NoopAgent(limits=limits)
    if address is None:
        raise ConfigError(f"the {kind} agent needs an address")
    target = parse_address(address) if isinstance(address, str) else address
    if kind is AgentType.KATA1:
        return _open_kata1(target, sandbox_id, config, limits)
    if kind is AgentType.KATA:
        settings = decode_config(KataConfig, config, what=str(kind))
        policy = settings.dial_policy(limits)

        def connector(factory: Any) -> Any:
            return connect(target, factory, policy)

        channel = TtrpcClient(connector, max_payload=limits.max_message,
                              max_pending=limits.max_pending_calls)
        agent: Agent = KataAgent(channel, sandbox_id=sandbox_id,
                                 call_timeout=settings.call_timeout, limits=limits)
        agent.health_check_interval = settings.health_check_interval
        return agent
    if kind is AgentType.HYPERSTART:
        return _open_hyperstart(target, sandbox_id, config, limits)
    raise ConfigError(f"the {kind} agent is not available in this version")


@dataclasses.dataclass(frozen=True)
class _NoConfig:
    """The noop agent takes no settings."""


def _open_kata1(target: Address, sandbox_id: str, config: Mapping[str, Any] | None,
                limits: Limits) -> Agent:
    """Kata 1.x: gRPC (HTTP/2), straight on the connection or on a yamux stream."""
    settings = decode_config(Kata1Config, config, what=str(AgentType.KATA1))
    policy = settings.dial_policy(limits)

    def dial(factory: Any) -> Any:
        return connect(target, factory, policy)

    if settings.uses_yamux(target):
        dialer = YamuxDialer(dial)
        grpc = GrpcClient(dialer.connect_stream, max_message=limits.max_message,
                          max_pending=limits.max_pending_calls, on_close=dialer.close)
    else:
        grpc = GrpcClient(dial, max_message=limits.max_message,
                          max_pending=limits.max_pending_calls)
    agent = Kata1Agent(grpc, sandbox_id=sandbox_id, call_timeout=settings.call_timeout,
                       limits=limits)
    agent.health_check_interval = settings.health_check_interval
    return agent


def _open_hyperstart(target: Address, sandbox_id: str, config: Mapping[str, Any] | None,
                     limits: Limits) -> Agent:
    """hyperstart: ``target`` is the ctl channel, the config names (or implies) the tty one."""
    settings = decode_config(HyperstartConfig, config, what="hyperstart")
    tty, policy = settings.tty_for(target), settings.dial_policy(limits)

    def dial(address: Address) -> Any:
        return lambda factory: connect(address, factory, policy)

    client = HyperstartClient(dial(target), dial(tty), wait_ready=settings.wait_ready,
                              ready_timeout=settings.ready_timeout,
                              max_payload=limits.max_message,
                              output_buffer=limits.stdout_buffer)
    return HyperstartAgent(client, sandbox_id=sandbox_id, call_timeout=settings.call_timeout,
                           share_dir=settings.share_dir, limits=limits)
