"""Drive many sandboxes at once: one exec in each, concurrently, then a table of results.

Usage::

    python examples/many_sandboxes.py                    # 20 embedded local agents
    python examples/many_sandboxes.py --count 100
    python examples/many_sandboxes.py --address unix:///run/vm1/agent.sock \\
                                      --address unix:///run/vm2/agent.sock

An agent holds one sandbox (it is one VM), so each sandbox needs its own agent address:
the embedded :class:`~agentio.localagent.LocalAgent` serves one socket per sandbox, and
``--address`` may be repeated, one per VM.

Concurrency uses an anyio task group: if one sandbox fails, the others are cancelled and
cleaned up (every ``async with`` below unwinds) before the error reaches the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio

import agentio
from agentio.localagent import LocalAgent


@dataclass(frozen=True)
class Result:
    """What one sandbox reported."""

    sandbox_id: str
    output: str
    status: int
    seconds: float


@contextlib.asynccontextmanager
async def agent_addresses(addresses: Sequence[str] | None, count: int) -> AsyncIterator[list[str]]:
    """Yield ``addresses``, or ``count`` embedded local agents' addresses when ``None``."""
    if addresses:
        yield list(addresses)
        return
    async with LocalAgent() as local:
        yield await local.serve_many(count)


async def one_sandbox(index: int, address: str) -> Result:
    """Set a sandbox up at ``address``, run one command in it, tear it down."""
    started = time.perf_counter()
    async with (
        await agentio.Sandbox.create(address, sandbox_id=f"demo-{index:03d}") as sandbox,
        await sandbox.create_container() as container,  # its init process: sleep infinity
    ):
        await container.start()
        proc = await container.exec(["sh", "-c", f'echo "hello from sandbox {index}, pid $$"'])
        out, _ = await proc.communicate()
        status = await proc.wait()
    return Result(sandbox.id, out.decode(errors="replace").strip(), status,
                  time.perf_counter() - started)


async def run(addresses: Sequence[str] | None = None, count: int = 20) -> list[Result]:
    """One exec in each of ``count`` sandboxes (or one per address given), concurrently."""
    async with agent_addresses(addresses, count) as urls:
        results: list[Result | None] = [None] * len(urls)

        async def worker(i: int, url: str) -> None:
            results[i] = await one_sandbox(i, url)

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for i, url in enumerate(urls):
                group.start_soon(worker, i, url)
        elapsed = time.perf_counter() - started

    done = [r for r in results if r is not None]  # every worker finished: the group waited
    print(f"{'sandbox':<10} {'status':>6} {'ms':>7}  output")
    for r in done:
        print(f"{r.sandbox_id:<10} {r.status:>6} {r.seconds * 1000:>7.1f}  {r.output}")
    print(f"{len(done)} sandboxes in {elapsed:.2f} s, "
          f"{sum(r.status == 0 for r in done)} exited 0")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One exec in each of many sandboxes.")
    parser.add_argument("--address", action="append",
                        help="agent URL, once per sandbox (default: embedded local agents)")
    parser.add_argument("--count", type=int, default=20,
                        help="sandboxes to run on embedded local agents (default: 20)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    results = asyncio.run(run(args.address, args.count))
    return 0 if all(r.status == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
