"""``python -m agentio.localagent --socket PATH``: one agent on a path the user chose."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import agentio


async def _run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentio.localagent", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_serves_one_agent_on_the_given_socket(tmp_path: Path) -> None:
    directory = tmp_path / "vm"
    directory.mkdir(mode=0o700)
    socket_path = directory / "agent.sock"
    child = await _run("--socket", str(socket_path))
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            line = (await child.stdout.readline()).decode().strip()
        assert line == f"unix://{socket_path}"
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        async with await agentio.Sandbox.create(line) as sandbox:
            await sandbox.check()
    finally:
        child.terminate()
        await child.wait()
    assert child.returncode == 0


async def test_refuses_a_directory_others_can_enter(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o755)
    child = await _run("--socket", str(directory / "agent.sock"))
    _, err = await child.communicate()
    assert child.returncode == 2
    assert b"mode 0700" in err and b"Traceback" not in err
    assert not (directory / "agent.sock").exists()


async def test_kata1_is_served_behind_yamux_as_the_client_expects(tmp_path: Path) -> None:
    child = await _run("--agent", "kata1", "--dir", str(tmp_path / "agents"))
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            address = (await child.stdout.readline()).decode().strip()
            # the client's default for unix:// is yamux: no setting needed
            async with await agentio.Sandbox.create(address, agent_type="kata1") as sandbox:
                await sandbox.check()
    finally:
        child.terminate()
        await child.wait()


async def test_yamux_flags_need_kata1(tmp_path: Path) -> None:
    child = await _run("--no-yamux", "--dir", str(tmp_path / "agents"))
    _, err = await child.communicate()
    assert child.returncode == 2 and b"needs --agent kata1" in err
