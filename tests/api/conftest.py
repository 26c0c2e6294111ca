"""A local agent per test, served in the test's own event loop, in every generation.

``local_agent`` is parametrised: the current API over ttrpc (``kata``), and the 1.x API over
gRPC on a yamux session (``kata1-yamux``) and straight on the socket (``kata1-unix``), so each
test using it runs the same public-API calls against both generations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agentio.localagent import LocalAgent

GENERATIONS: Mapping[str, dict[str, Any]] = {
    "kata": {"agent": "kata"},
    "kata1-yamux": {"agent": "kata1", "yamux": True},
    "kata1-unix": {"agent": "kata1", "yamux": False},
}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a test's sandbox goes: the address, agent type and config to create it with."""

    address: str
    agent_type: str
    config: Mapping[str, Any] | None

    @property
    def kata1(self) -> bool:
        return self.agent_type == "kata1"

    def create_kwargs(self) -> dict[str, Any]:
        return {"agent_type": self.agent_type, "config": self.config}


@pytest.fixture(params=list(GENERATIONS))
async def local_agent(request: pytest.FixtureRequest,
                      sock_dir: Path) -> AsyncIterator[LocalAgent]:
    async with LocalAgent(sock_dir / "agents", drain_timeout=1.0,
                          **GENERATIONS[request.param]) as local:
        yield local


@pytest.fixture
async def target(local_agent: LocalAgent) -> Target:
    address = await local_agent.serve()
    agent_type, config = local_agent.client_settings()
    return Target(address, agent_type, config)
