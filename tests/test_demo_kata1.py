"""The demo on the Kata 1.x generation: gRPC over yamux against the local agent child."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import agentio
from agentio import AgentType
from agentio.demo import PROFILES, Options, local_agents, parse_args, run_demo

from .test_demo import BYTES_PER_SANDBOX, OPS_PER_SANDBOX, _children


async def test_kata1_sandboxes_on_a_yamux_local_agent_child_verify_every_byte() -> None:
    before = _children()
    summary = await run_demo(Options(quiet=True, sandboxes=4, concurrency=4,
                                     agent=AgentType.KATA1))
    assert summary.failures == []
    assert summary.ok and summary.done == 4 and summary.agent == "kata1"
    assert summary.operations == 4 * OPS_PER_SANDBOX
    assert summary.bytes_verified == 4 * BYTES_PER_SANDBOX
    assert _children() <= before


def _modes(socket_path: Path) -> tuple[int, int]:
    info = os.stat(socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    return stat.S_IMODE(info.st_mode), stat.S_IMODE(os.stat(socket_path.parent).st_mode)


async def test_the_kata1_child_serves_yamux_on_private_sockets() -> None:
    child_args = PROFILES[AgentType.KATA1].child_args or ()
    async with local_agents(1, child_args=child_args) as [address]:
        assert _modes(Path(address.removeprefix("unix://"))) == (0o600, 0o700)
        # a yamux client is answered: the socket speaks yamux, not bare HTTP/2
        async with await agentio.Sandbox.create(address, agent_type="kata1",
                                                config={"yamux": True}) as sandbox:
            await sandbox.check()


def test_kata1_needs_no_address_and_the_program_runs() -> None:
    assert AgentType.KATA1 in PROFILES
    assert parse_args(["--agent", "kata1"]).agent is AgentType.KATA1
    done = subprocess.run([sys.executable, "-m", "agentio.demo", "--agent", "kata1",
                           "--sandboxes", "2", "--json"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["succeeded"] == summary["sandboxes"] == 2 and summary["failures"] == 0
    assert summary["agent"] == "kata1"
