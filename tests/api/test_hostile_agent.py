"""What a hostile or buggy agent can do to a process, sandbox or teardown, and must not.

Each test drives the public API against a fake agent (a :class:`NoopAgent` with one misbehaving
operation) and checks that the caller gets a typed error or the bounded wait it was promised.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentio.agents.noop import NoopAgent
from agentio.errors import ProtocolError
from agentio.limits import Limits
from agentio.process import Process


def _process(agent: NoopAgent, limits: Limits | None = None) -> Process:
    proc = Process(agent, "c", "e", terminal=False, limits=limits or Limits(drain_timeout=0.5))
    proc._start()
    return proc


class _Broken(NoopAgent):
    """Every stream operation returns a value of the wrong type (as a decoder slip would)."""

    async def read_stdout(self, *args: Any, **kwargs: Any) -> Any:
        return 5  # an int where bytes belong

    async def write_stdin(self, *args: Any, **kwargs: Any) -> Any:
        return [5]  # a list where the count belongs

    async def wait_process(self, *args: Any, **kwargs: Any) -> Any:
        return [104, 105]


async def test_unexpected_failures_of_background_tasks_reach_the_caller() -> None:
    proc = _process(_Broken())
    try:
        async with asyncio.timeout(5):
            with pytest.raises(ProtocolError, match="read_stdout"):
                await proc.stdout.read()
            proc.stdin.write(b"hello")
            proc.stdin.close()
            with pytest.raises(ProtocolError, match="write_stdin"):
                await proc.stdin.wait_closed()
            with pytest.raises(ProtocolError, match="wait"):
                await proc.wait()
    finally:
        await proc.close(kill=False)
