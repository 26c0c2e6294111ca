"""Create a container from an OCI runtime spec (what a bundle's ``config.json`` holds).

Usage::

    python examples/oci_spec.py
    python examples/oci_spec.py --config bundle/config.json --address vsock://3:1024

Specs are plain mappings in the OCI JSON shape (camelCase keys as in ``config.json``);
agentio maps them onto the agent's own message types and drops fields the agent does not
know. ``agentio.default_container_spec()`` builds a minimal spec if you only have a command.
Against a real Kata agent, ``root.path`` must name a root filesystem the guest can see.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import agentio
from agentio.localagent import LocalAgent

CONTAINER_ID = "oci-example"

# A trimmed config.json. The init process prints one line, then keeps the container alive.
CONFIG: dict[str, Any] = {
    "ociVersion": "1.1.0",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", 'echo "init: $GREETING in $(pwd)"; exec sleep infinity'],
        "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello from config.json"],
        "cwd": "/tmp",
        "noNewPrivileges": True,
    },
    # Where Kata's runtime shares a container's rootfs into the guest.
    "root": {"path": f"/run/kata-containers/shared/containers/{CONTAINER_ID}/rootfs"},
    "hostname": "oci-example",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
    ],
    "annotations": {"io.example/owner": "agentio examples"},
    "linux": {"namespaces": [{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
}

# An OCI `process` object, as in `runc exec --process process.json`.
EXEC_PROCESS: dict[str, Any] = {
    "args": ["sh", "-c", 'echo "exec: $WHO sees ${GREETING:-no GREETING}"'],
    "env": ["PATH=/usr/bin:/bin", "WHO=an exec'd process"],
    "cwd": "/",
    "terminal": False,
}


@contextlib.asynccontextmanager
async def agent_address(address: str | None) -> AsyncIterator[str]:
    """Yield ``address``, or the address of an embedded local agent when it is ``None``."""
    if address is not None:
        yield address
        return
    async with LocalAgent() as local:
        yield await local.serve()


async def run(address: str | None = None, config: dict[str, Any] | None = None) -> list[str]:
    """Create a container from ``config`` (default :data:`CONFIG`), exec in it; lines seen."""
    spec = CONFIG if config is None else config
    lines: list[str] = []
    async with (
        agent_address(address) as url,
        await agentio.Sandbox.create(url) as sandbox,
        await sandbox.create_container(CONTAINER_ID, spec=spec) as container,
    ):
        init = await container.start()  # runs spec["process"]
        first = await init.stdout.readline()  # the init process keeps running
        lines.append(first.decode(errors="replace").rstrip("\n"))

        # Exec takes an OCI process mapping too (or an agentio.ProcessSpec).
        proc = await container.exec_spec(EXEC_PROCESS)
        out, _ = await proc.communicate()
        lines.append(out.decode(errors="replace").rstrip("\n"))
        lines.append(f"exec exit status: {proc.returncode}")
    for line in lines:
        print(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create a container from an OCI spec.")
    parser.add_argument("--address", help="agent URL (unix://, vsock://, hvsock://); "
                                          "default: an embedded local agent")
    parser.add_argument("--config", type=Path, help="an OCI config.json to use instead of "
                                                    "the built-in one")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text()) if args.config else None
    asyncio.run(run(args.address, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
