"""A local agent per test, served in the test's own event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentio.localagent import LocalAgent


@pytest.fixture
async def local_agent(sock_dir: Path) -> AsyncIterator[LocalAgent]:
    async with LocalAgent(sock_dir / "agents", drain_timeout=1.0) as local:
        yield local


@pytest.fixture
async def address(local_agent: LocalAgent) -> str:
    return await local_agent.serve()
