"""Bound a wait with a timeout, then stop the process with a signal.

Usage::

    python examples/timeout_and_signal.py
    python examples/timeout_and_signal.py --address unix:///run/vm/agent.sock

Two things to keep apart:

* Cancelling *your wait* (``asyncio.timeout``, ``asyncio.wait_for``, an anyio cancel scope)
  stops your coroutine only. The process in the guest keeps running, and the connection
  stays usable.
* Stopping *the guest's work* takes a signal: ``await proc.send_signal(SIGTERM)`` (or
  ``proc.terminate()`` / ``proc.kill()``). The exit status is then ``128 + signal``, 143 for
  SIGTERM, as a shell reports it.

Part 1 uses asyncio's ``timeout``, part 2 anyio's ``move_on_after`` around a reading loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import anyio

import agentio
from agentio.localagent import LocalAgent

# Counts forever, one line every 50 ms.
TICKER = 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.05; done'


@contextlib.asynccontextmanager
async def agent_address(address: str | None) -> AsyncIterator[str]:
    """Yield ``address``, or the address of an embedded local agent when it is ``None``."""
    if address is not None:
        yield address
        return
    async with LocalAgent() as local:
        yield await local.serve()


async def stop(proc: agentio.Process) -> int:
    """SIGTERM the process, wait for its exit, and check its output really ended."""
    await proc.send_signal(signal.SIGTERM)
    status = await proc.wait()  # returns once the exit and all output were received
    rest = await proc.stdout.read()  # whatever was still buffered, then end of stream
    # End of stream means no process holds stdout any more: nothing will ever add a tick.
    print(f"  exit status {status} (128 + SIGTERM = {128 + signal.SIGTERM}); "
          f"{rest.count(b'tick')} more ticks were buffered; stdout ended: "
          f"{proc.stdout.at_eof()}")
    return status


async def with_asyncio_timeout(container: agentio.Container) -> int:
    """Part 1: ``asyncio.timeout`` around ``wait()``, then SIGTERM."""
    print("part 1: asyncio.timeout")
    proc = await container.exec(["sh", "-c", TICKER])
    try:
        async with asyncio.timeout(0.3):
            await proc.wait()
    except TimeoutError:
        # Only our wait was cancelled: the ticker is still running in the guest.
        print(f"  timed out after 0.3 s; still running: {proc.returncode is None}")
    return await stop(proc)


async def with_anyio_cancel_scope(container: agentio.Container) -> int:
    """Part 2: anyio ``move_on_after`` around a loop reading output, then SIGTERM."""
    print("part 2: anyio.move_on_after")
    proc = await container.exec(["sh", "-c", TICKER])
    seen = 0
    with anyio.move_on_after(0.3) as scope:
        async for _line in proc.stdout:
            seen += 1
    # Signal *after* leaving the scope: inside an expired anyio scope every await is
    # cancelled again, so cleanup that talks to the agent belongs out here.
    print(f"  read {seen} ticks before the deadline; cancelled: {scope.cancelled_caught}")
    return await stop(proc)


async def run(address: str | None = None) -> list[int]:
    """Run both parts; the exit statuses (143 each)."""
    async with (
        agent_address(address) as url,
        await agentio.Sandbox.create(url) as sandbox,
        await sandbox.create_container() as container,
    ):
        await container.start()
        statuses = [await with_asyncio_timeout(container),
                    await with_anyio_cancel_scope(container)]
        await sandbox.check()  # the cancelled waits left the connection healthy
        print("agent still answers after the cancelled waits")
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time out a wait, then SIGTERM the process.")
    parser.add_argument("--address", help="agent URL (unix://, vsock://, hvsock://); "
                                          "default: an embedded local agent")
    args = parser.parse_args(argv)
    statuses = asyncio.run(run(args.address))
    return 0 if statuses == [128 + signal.SIGTERM] * 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
