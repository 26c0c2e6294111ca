"""Run one command in a sandbox and print what it wrote and how it exited.

Usage::

    python examples/one_exec.py                          # against an embedded local agent
    python examples/one_exec.py --address unix:///run/vm/agent.sock

With no ``--address`` the example starts :class:`~agentio.localagent.LocalAgent` in the same
event loop: a real Kata agent server (ttrpc on a private unix socket) that runs the
"container" processes on this host, so nothing here needs a VM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import agentio
from agentio.localagent import LocalAgent


@contextlib.asynccontextmanager
async def agent_address(address: str | None) -> AsyncIterator[str]:
    """Yield ``address``, or the address of an embedded local agent when it is ``None``."""
    if address is not None:
        yield address
        return
    async with LocalAgent() as local:  # removes its sockets and kills its processes on exit
        yield await local.serve()


async def run(address: str | None = None) -> int:
    """Exec ``uname -a`` in a fresh container; the command's exit status."""
    async with (
        agent_address(address) as url,
        # One Sandbox is one VM's agent. `create` connects and sets the sandbox up;
        # leaving the `async with` stops it (and every container in it) and disconnects.
        await agentio.Sandbox.create(url) as sandbox,
        # A container needs an init process; a sleeper keeps it alive while we exec.
        await sandbox.create_container(args=["sleep", "infinity"]) as container,
    ):
        await container.start()
        proc = await container.exec(["uname", "-a"])
        # Like asyncio.subprocess: read stdout and stderr to their ends, then wait.
        out, err = await proc.communicate()
        status = proc.returncode
        assert status is not None  # communicate() waited for the exit

    print(f"stdout: {out.decode(errors='replace').rstrip()}")
    if err:
        print(f"stderr: {err.decode(errors='replace').rstrip()}")
    print(f"exit status: {status}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exec `uname -a` in a sandbox.")
    parser.add_argument("--address", help="agent URL (unix://, vsock://, hvsock://); "
                                          "default: an embedded local agent")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.address))


if __name__ == "__main__":
    raise SystemExit(main())
