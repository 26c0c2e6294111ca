"""Local agents served by ``agentio localagent`` in a child process, and a way to run the CLI.

The agents live for the whole module (starting Python is the slow part); each test takes
sockets of its own, so every test starts from an agent without a sandbox.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

AGENTS = 12
TIMEOUT = 30


@dataclass
class LocalAgents:
    """The child serving the agents, the directory holding them, addresses not yet handed out."""

    directory: Path
    addresses: list[str]

    def take(self) -> str:
        assert self.addresses, "raise AGENTS in tests/cli/conftest.py"
        return self.addresses.pop(0)

    def guest_root(self, address: str) -> Path:
        """Where the agent at ``address`` keeps the guest's files (see KataService)."""
        name = Path(address.removeprefix("unix://")).stem
        return self.directory / f"{name}.guest" / "rootfs"


def cli(*args: str) -> list[str]:
    """The command line running ``agentio ARGS`` with this interpreter."""
    return [sys.executable, "-m", "agentio.cli", *args]


@pytest.fixture(scope="module")
def local_agents() -> Iterator[LocalAgents]:
    with tempfile.TemporaryDirectory(prefix="aio-cli-") as name:
        directory = Path(name) / "agents"
        child = subprocess.Popen(cli("localagent", "--dir", str(directory), "--count",
                                     str(AGENTS)),
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            assert child.stdout is not None
            addresses = [child.stdout.readline().strip() for _ in range(AGENTS)]
            assert all(a.startswith("unix://") for a in addresses), addresses
            yield LocalAgents(directory, addresses)
        finally:
            child.terminate()
            child.wait(timeout=TIMEOUT)


@pytest.fixture
def address(local_agents: LocalAgents) -> str:
    return local_agents.take()


def run(address: str, *args: str, input: str | None = None, sandbox: str = "sb-cli",
        check: bool = False) -> subprocess.CompletedProcess[str]:
    """``agentio --address ADDRESS -s SANDBOX ARGS`` as a child; its result."""
    env = {**os.environ, "AGENTIO_ADDRESS": "", "AGENTIO_SANDBOX": ""}
    done = subprocess.run(cli("--address", address, "--sandbox-id", sandbox, *args),
                          input=input, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if check:
        assert done.returncode == 0, f"{args} exited {done.returncode}: {done.stderr}"
    return done


def start_container(address: str, container: str = "c1", *options: str) -> None:
    """A sandbox with a started container ``container``, set up over one connection."""
    run(address, "run-script", "-", check=True, input=(
        f"create-sandbox\ncreate-container {' '.join(options)} {container}\n"
        f"start-container {container}\n"))
