"""Stream a process's output line by line as it is produced, while feeding its stdin.

Usage::

    python examples/stream_output.py
    python examples/stream_output.py --address unix:///run/vm/agent.sock

``proc.stdout`` and ``proc.stderr`` read like :class:`asyncio.StreamReader` (``read(n)``,
``readline()``, ``readuntil()``, and ``async for line in proc.stdout``); ``proc.stdin``
writes like :class:`asyncio.StreamWriter` (``write()``, ``await drain()``, ``close()``,
``await wait_closed()``). Output is buffered up to ``Limits.stdout_buffer`` bytes; past that
agentio stops asking the agent for more until you read, so a chatty process is slowed down
rather than filling memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import agentio
from agentio.localagent import LocalAgent

# Prints a few ticks over ~0.3 s, asks for input, then echoes stdin back line by line until
# stdin closes. It only finishes if we answer "ready" while it runs: output must reach us
# as it is written, not when the process exits.
SCRIPT = """
for i in 1 2 3; do echo "tick $i"; sleep 0.1; done
echo "ready"
while IFS= read -r line; do echo "you said: $line"; done
echo "stdin closed, bye"
"""

ANSWER = [b"hello\n", b"from the host\n"]


@contextlib.asynccontextmanager
async def agent_address(address: str | None) -> AsyncIterator[str]:
    """Yield ``address``, or the address of an embedded local agent when it is ``None``."""
    if address is not None:
        yield address
        return
    async with LocalAgent() as local:
        yield await local.serve()


async def answer(proc: agentio.Process) -> None:
    """Write a few lines to the process, then close its stdin (its EOF ends the read loop)."""
    for line in ANSWER:
        proc.stdin.write(line)  # queued; a background task sends it to the agent
        await proc.stdin.drain()  # waits only while too much is queued
    proc.stdin.close()  # after the queued bytes: the process reads end of file


async def run(address: str | None = None) -> list[str]:
    """Run :data:`SCRIPT`, printing each output line when it arrives; the lines."""
    received: list[str] = []
    async with (
        agent_address(address) as url,
        await agentio.Sandbox.create(url) as sandbox,
        await sandbox.create_container() as container,
    ):
        await container.start()
        proc = await container.exec(["sh", "-c", SCRIPT])
        started = time.perf_counter()
        # Lines come out as the process writes them: `async for` yields each one (with its
        # "\n") as soon as it is complete. proc.stdout.read(n) gives raw chunks instead.
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            received.append(line)
            print(f"[{(time.perf_counter() - started) * 1000:6.1f} ms] {line}")
            if line == "ready":
                await answer(proc)
        await proc.stdin.wait_closed()  # every byte taken and stdin closed, or the error
        status = await proc.wait()
    print(f"exit status: {status}")
    return received


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stream a process's output as it comes.")
    parser.add_argument("--address", help="agent URL (unix://, vsock://, hvsock://); "
                                          "default: an embedded local agent")
    args = parser.parse_args(argv)
    asyncio.run(run(args.address))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
