"""``python -m bench.soak``: the demo workload across many sandboxes, with faults injected at
random into some of them, for a bounded time.

Layer: tools. Uses the public API through :mod:`agentio.demo`'s per-sandbox workload, the
fault proxy of :mod:`agentio.testing`, and the agent interface only to clean up after a run a
fault broke (as an operator would destroy a broken VM).

Each of ``--slots`` slots has its own local agent (served by a child process) behind its own
:class:`~agentio.testing.FaultProxy`, and runs sandboxes one after another until the time is
up. Before a run, with probability ``--fault-rate``, one fault from the catalogue is armed at
a random point of the run's traffic (``skip`` frames in). A failed run counts as *failed by
fault* only if its fault actually fired; every other failure is a *failure without a fault*,
which must never happen. At the end every proxy is closed and the tasks and descriptors this
process holds are compared with those it held before the first run: none may be left.

Prints calls made, faults armed and fired, runs failed by a fault and without one (and the
errors they ended with), bytes verified, peak RSS and leaked tasks / descriptors; exits 1 if a
run failed without a fault, ended with an error that is not an agentio error (or a byte check
or the run's time bound), or anything leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentio import AgentError, demo, errors, open_agent
from agentio.testing import (
    CloseMidFrame,
    Corrupt,
    Delay,
    Direction,
    Drop,
    Duplicate,
    Endless,
    Fault,
    FaultProxy,
    LeakCheck,
    OversizedHeader,
    Reorder,
    Reset,
    RewriteStreamId,
    StallReads,
    Truncate,
)

log = logging.getLogger("bench.soak")

CLEANUP_TIMEOUT = 10.0
METHODS = ("CreateSandbox", "CreateContainer", "StartContainer", "ExecProcess", "WaitProcess",
           "ReadStdout", "ReadStderr", "WriteStdin", "CloseStdin", "SignalProcess",
           "StatsContainer", "RemoveContainer", "DestroySandbox")


def _direction(rng: random.Random) -> Direction:
    return rng.choice((Direction.TO_AGENT, Direction.TO_CLIENT))


FaultMaker = Callable[[random.Random, int], Fault]

CATALOGUE: dict[str, FaultMaker] = {
    "delay": lambda r, s: Delay(direction=_direction(r), skip=s, seconds=r.uniform(0.01, 0.3)),
    "stall-reads": lambda r, s: StallReads(direction=_direction(r), skip=s,
                                           seconds=r.uniform(0.1, 1.0)),
    "drop": lambda r, s: Drop(direction=_direction(r), skip=s),
    "stop-answering": lambda r, s: Drop(direction=Direction.TO_CLIENT, method=r.choice(METHODS),
                                        count=None),
    "truncate": lambda r, s: Truncate(direction=_direction(r), skip=s, keep=r.randrange(0, 40)),
    "corrupt": lambda r, s: Corrupt(direction=_direction(r), skip=s,
                                    offsets=(r.randrange(0, 64),), xor=r.randrange(1, 256)),
    "duplicate": lambda r, s: Duplicate(direction=_direction(r), skip=s),
    "reorder": lambda r, s: Reorder(direction=_direction(r), skip=s, hold=0.2),
    "close-mid-frame": lambda r, s: CloseMidFrame(direction=_direction(r), skip=s,
                                                  keep=r.randrange(1, 10)),
    "reset": lambda r, s: Reset(direction=_direction(r), skip=s),
    "unknown-stream-id": lambda r, s: RewriteStreamId(direction=Direction.TO_CLIENT, skip=s,
                                                      new_id=r.randrange(0, 1 << 32)),
    "oversized-length": lambda r, s: OversizedHeader(direction=_direction(r), skip=s,
                                                     length=r.randrange(1 << 23, 1 << 32)),
    "endless-bytes": lambda r, s: Endless(direction=Direction.TO_CLIENT, skip=s,
                                          pattern=r.randbytes(4096), max_bytes=8 << 20),
}


@dataclasses.dataclass
class Figures:
    """What a soak run saw."""

    duration_s: float = 0.0
    slots: int = 0
    runs: int = 0
    calls: int = 0
    bytes_verified: int = 0
    faults_armed: int = 0
    faults_fired: int = 0
    failed_by_fault: int = 0
    failed_without_fault: int = 0
    succeeded_despite_fault: int = 0
    peak_rss_kib: int = 0
    leaked_tasks: int = 0
    leaked_fds: int = 0
    untyped_errors: int = 0
    fired_by_kind: Counter[str] = dataclasses.field(default_factory=Counter)
    errors_by_type: Counter[str] = dataclasses.field(default_factory=Counter)
    unexplained: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failed_without_fault or self.untyped_errors or self.leaked_tasks
                    or self.leaked_fds)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fired_by_kind"] = dict(sorted(self.fired_by_kind.items()))
        data["errors_by_type"] = dict(sorted(self.errors_by_type.items()))
        data["ok"] = self.ok
        return data

    def as_text(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.fired_by_kind.items()))
        lines = [
            f"duration              {self.duration_s:.1f} s ({self.slots} sandboxes at a time)",
            f"sandbox runs          {self.runs}",
            f"calls made            {self.calls}",
            f"faults injected       {self.faults_fired} fired of {self.faults_armed} armed",
            f"  by kind             {kinds or '-'}",
            f"calls failed by fault {self.failed_by_fault} runs "
            f"({self.succeeded_despite_fault} faulted runs still succeeded)",
            f"failed without fault  {self.failed_without_fault}",
            "  errors              " + (", ".join(
                f"{k} {n}" for k, n in sorted(self.errors_by_type.items())) or "-"),
            f"untyped errors        {self.untyped_errors}",
            f"bytes verified        {self.bytes_verified}",
            f"peak RSS              {self.peak_rss_kib / 1024:.1f} MiB",
            f"leaked tasks / fds    {self.leaked_tasks} / {self.leaked_fds}",
            "result                " + ("OK" if self.ok else "FAILED"),
        ]
        lines += [f"UNEXPLAINED {line}" for line in self.unexplained[:20]]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SoakOptions:
    duration: float = 120.0
    slots: int = 32
    fault_rate: float = 0.3
    seed: int | None = None
    call_timeout: float = 3.0
    sandbox_timeout: float = 20.0
    json: bool = False
    quiet: bool = False


TYPED = frozenset(
    [name for name, value in vars(errors).items()
     if isinstance(value, type) and issubclass(value, AgentError)]
    + ["CheckFailed", "timeout"])
"""What a failed run may end with: an agentio error, a byte check that found the damage a
fault did, or the run's overall bound. Anything else is a bug the fault uncovered."""


def _error_type(error: str) -> str:
    """The exception type named in a demo failure (``"Type: message"``)."""
    if error.startswith("timed out after"):
        return "timeout"
    return error.partition(":")[0]


async def _clean_up(address: str, sandbox_id: str) -> None:
    """Destroy what a broken run left in its agent, over a direct (fault-free) connection."""
    try:
        async with open_agent(address, sandbox_id=sandbox_id) as agent:
            await agent.stop_sandbox(sandbox_id, timeout=CLEANUP_TIMEOUT)
    except AgentError as exc:
        log.debug("cleanup of %s: %s", sandbox_id, exc)  # the fault hit before it existed


async def _slot(index: int, agent_address: str, proxy: FaultProxy, options: SoakOptions,
                rng: random.Random, deadline: float, figures: Figures) -> None:
    loop = asyncio.get_running_loop()
    demo_options = demo.Options(timeout=options.sandbox_timeout,
                                call_timeout=options.call_timeout)
    run = 0
    while loop.time() < deadline:
        run += 1
        sandbox_id = f"soak-{index}-{run}"
        kind = rng.choice(sorted(CATALOGUE)) if rng.random() < options.fault_rate else None
        fault = CATALOGUE[kind](rng, rng.randrange(0, 40)) if kind else None
        if fault is not None:
            proxy.inject(fault)
            figures.faults_armed += 1
        tally, failure = await demo.run_one(demo_options, proxy.address, sandbox_id)
        fired = proxy.fired(fault) if fault is not None else 0
        proxy.clear()
        await proxy.kill(reset=False, keep_listening=True)  # whatever a fault left half-open
        figures.runs += 1
        figures.calls += tally.operations
        figures.bytes_verified += tally.bytes_verified
        if fired:
            assert kind is not None
            figures.faults_fired += 1
            figures.fired_by_kind[kind] += 1
        if failure is None:
            if fired:
                figures.succeeded_despite_fault += 1
            continue
        kind_of_error = _error_type(failure.error)
        figures.errors_by_type[kind_of_error] += 1
        if kind_of_error not in TYPED:
            figures.untyped_errors += 1
            figures.unexplained.append(f"{sandbox_id} (fault {kind}): untyped {failure.error}")
        if fired:
            figures.failed_by_fault += 1
        else:
            figures.failed_without_fault += 1
            figures.unexplained.append(f"{sandbox_id} (fault {kind} armed, not fired): "
                                       f"{failure.error}" if kind else
                                       f"{sandbox_id}: {failure.error}")
        await _clean_up(agent_address, sandbox_id)


async def _progress(figures: Figures, started: float, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(10)
        print(f"soak {loop.time() - started:5.0f}/{deadline - started:.0f} s  runs {figures.runs}"
              f"  calls {figures.calls}  faults fired {figures.faults_fired}"
              f"  failed by fault {figures.failed_by_fault}"
              f"  without {figures.failed_without_fault}", file=sys.stderr, flush=True)


async def soak(options: SoakOptions) -> Figures:
    """Run the soak; its figures."""
    rng = random.Random(options.seed)
    figures = Figures(slots=options.slots)
    loop = asyncio.get_running_loop()
    async with demo.local_agents(options.slots) as addresses:
        proxy_dir = Path(addresses[0].removeprefix("unix://")).parent
        leaks = LeakCheck.start()
        proxies = [FaultProxy(address, proxy_dir, name=f"soak-proxy-{i}.sock")
                   for i, address in enumerate(addresses)]
        progress = None
        started = loop.time()
        try:
            for proxy in proxies:
                await proxy.start()
            deadline = started + options.duration
            if not options.quiet:
                progress = asyncio.create_task(_progress(figures, started, deadline))
            await asyncio.gather(*(
                _slot(i, address, proxy, options, random.Random(rng.random()), deadline, figures)
                for i, (address, proxy) in enumerate(zip(addresses, proxies, strict=True))))
        finally:
            if progress is not None:
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
            for proxy in proxies:
                await proxy.close()
        figures.duration_s = loop.time() - started
        figures.leaked_tasks = len(await leaks.leaked_tasks())
        leaked_fds = leaks.leaked_fds()
        figures.leaked_fds = len(leaked_fds)
        if leaked_fds:
            log.warning("leaked descriptors: %s", leaked_fds)
    figures.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return figures


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None = None) -> SoakOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Run the demo workload across many sandboxes with random faults injected "
                    "into some; fail if a run fails without a fault or anything leaks.")
    add = parser.add_argument
    add("--duration", type=_positive(float), default=120.0,
        help="seconds to keep starting sandboxes (default 120; runs under way then finish, "
             "within --sandbox-timeout plus cleanup)")
    add("--slots", type=_positive(int), default=32, help="sandboxes at a time (default 32)")
    add("--fault-rate", type=float, default=0.3,
        help="probability that a run gets a fault (default 0.3)")
    add("--seed", type=int, help="random seed (default: a new one)")
    add("--call-timeout", type=_positive(float), default=3.0,
        help="agent call deadline, seconds (default 3)")
    add("--sandbox-timeout", type=_positive(float), default=20.0,
        help="bound on one sandbox's whole workload, seconds (default 20)")
    add("--json", action="store_true", help="print the figures as JSON")
    add("-q", "--quiet", action="store_true", help="no progress lines")
    ns = parser.parse_args(argv)
    if not 0 <= ns.fault_rate <= 1:
        parser.error("--fault-rate must be within 0..1")
    return SoakOptions(duration=ns.duration, slots=ns.slots, fault_rate=ns.fault_rate,
                       seed=ns.seed, call_timeout=ns.call_timeout,
                       sandbox_timeout=ns.sandbox_timeout, json=ns.json, quiet=ns.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # under injected faults the library's warnings (failed destroys, cut output) are expected
    logging.getLogger("agentio").setLevel(logging.ERROR)
    started = time.monotonic()
    figures = asyncio.run(soak(options))
    log.debug("soak took %.1f s", time.monotonic() - started)
    print(json.dumps(figures.as_dict(), indent=2) if options.json else figures.as_text())
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
