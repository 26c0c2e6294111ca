"""The local agent: a real Kata agent server (ttrpc on unix sockets) running host processes.

Layer: local agent. It lets the demo, the examples, the tests — and users' own tests — run
without VMs. Start it in-process::

    async with LocalAgent() as local:
        address = await local.serve()

or as a program: ``python -m agentio.localagent --count 4``.
"""

from .server import LocalAgent, private_directory
from .service import KataService

__all__ = ["KataService", "LocalAgent", "private_directory"]
