"""``python -m bench``: throughput, latency and memory figures against the local agent.

Layer: tools (command line). Starts the local agent (``python -m agentio.localagent``) and the
echo baseline (``python -m bench.echo``) as child processes, measures from this process on
each requested event loop, prints a table (or JSON with ``--json -``) and always stops the
children (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .children import Child, ChildError
from .loops import loop_factories
from .measure import MemoryResult, rpc_rates, stdio_and_exec
from .memory import parse as parse_memory
from .report import LoopRun, machine_info, render


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("concurrencies must be positive")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds counted per measurement point (default 2)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of warmup before each point (default: min(0.5, duration))")
    parser.add_argument("--concurrency", type=_positive_ints, default=[1, 16, 64],
                        help="comma-separated calls in flight on the one connection "
                             "(default 1,16,64)")
    parser.add_argument("--loop", default="asyncio",
                        help="client event loop(s), comma-separated: asyncio, uvloop, or all "
                             "(every installed one); default asyncio")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke run: 100 memory clients over 2 sockets, "
                             "1 MiB cat rounds")
    parser.add_argument("--sockets", type=int, default=None,
                        help="local agent sockets for the memory figure (default 10)")
    parser.add_argument("--clients-per-socket", type=int, default=None,
                        help="idle clients per socket for the memory figure (default 50)")
    parser.add_argument("--stdio-mib", type=int, default=None,
                        help="MiB pushed through cat per round (default 8)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the figures as JSON to PATH ('-': JSON on stdout "
                             "instead of the table)")
    return parser


async def _suite(args: argparse.Namespace, name: str, version: str, addresses: Sequence[str],
                 echo_path: str, agent: Child, echo: Child, memory: MemoryResult,
                 kata1: tuple[str, Child]) -> LoopRun:
    timing: dict[str, Any] = {"duration": args.duration, "warmup": args.warmup}
    rates = await rpc_rates(addresses[0], echo_path, args.concurrency, agent_server=agent,
                            echo_server=echo, kata1_address=kata1[0], kata1_server=kata1[1],
                            **timing)
    stdio, exe = await stdio_and_exec(addresses[-1], mib=args.stdio_mib, **timing)
    return LoopRun(name, version, rates, stdio, exe, memory)


def _memory(loop: str, per_socket: int, addresses: Sequence[str]) -> MemoryResult:
    """Run :mod:`bench.memory` in a fresh child (a clean heap) and read its figure."""
    with Child("bench.memory", ["--loop", loop, "--per-socket", str(per_socket),
                                *addresses]) as child:
        (line,) = child.read_lines(1, timeout=120.0)
        if child.proc.wait(30.0) != 0:
            raise ChildError(f"bench.memory exited with {child.proc.returncode}")
    return parse_memory(line)


def _settle(args: argparse.Namespace) -> None:
    if args.duration <= 0:
        raise SystemExit("--duration must be positive")
    if args.warmup is None:
        args.warmup = min(0.5, args.duration)
    if args.warmup < 0:
        raise SystemExit("--warmup must not be negative")
    if args.sockets is None:
        args.sockets = 2 if args.quick else 10
    if args.clients_per_socket is None:
        args.clients_per_socket = 50
    if args.stdio_mib is None:
        args.stdio_mib = 1 if args.quick else 8
    if min(args.sockets, args.clients_per_socket, args.stdio_mib) < 1:
        raise SystemExit("--sockets, --clients-per-socket and --stdio-mib must be positive")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success."""
    args = _parser().parse_args(argv)
    _settle(args)
    loops = loop_factories(args.loop)
    logging.basicConfig(level=logging.WARNING)
    machine = machine_info()
    signal.signal(signal.SIGTERM, _interrupted)  # unwind through the finally that stops children
    runs: list[LoopRun] = []
    workdir = Path(tempfile.mkdtemp(prefix="agentio-bench-"))
    children: list[Child] = []
    try:
        os.chmod(workdir, 0o700)
        agent = Child("agentio.localagent",
                      ["--count", str(args.sockets), "--dir", str(workdir / "agents")])
        children.append(agent)
        # the 1.x generation: gRPC on a yamux session, as on a VM's serial port
        kata1 = Child("agentio.localagent", ["--count", "1", "--dir", str(workdir / "kata1"),
                                             "--agent", "kata1", "--yamux"])
        children.append(kata1)
        echo_path = str(workdir / "echo.sock")
        echo = Child("bench.echo", [echo_path])
        children.append(echo)
        addresses = agent.read_lines(args.sockets)
        (kata1_address,) = kata1.read_lines(1)
        echo.read_lines(1)
        for name, version, factory in loops:
            memory = _memory(name, args.clients_per_socket, addresses)
            with asyncio.Runner(loop_factory=factory) as runner:
                runs.append(runner.run(
                    _suite(args, name, version, addresses, echo_path, agent, echo, memory,
                           (kata1_address, kata1))))
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    settings = {"duration": args.duration, "warmup": args.warmup,
                "concurrency": args.concurrency, "quick": args.quick}
    document = {"machine": machine, "settings": settings,
                "runs": [run.as_dict() for run in runs]}
    if args.json == "-":
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print(render(machine, settings, runs), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; child processes stopped", file=sys.stderr)
        raise SystemExit(130) from None
