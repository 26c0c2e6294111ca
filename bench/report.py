"""Printing the figures (layer: tools): the machine header, one block of tables per loop.

Layer: tools. Pure formatting of :mod:`bench.measure` results; no I/O beyond building strings.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import agentio

from .measure import MIB, ExecResult, MemoryResult, RatePoint, StdioResult


@dataclass(frozen=True)
class LoopRun:
    """Everything measured on one event loop."""

    loop: str
    loop_version: str
    rates: Sequence[RatePoint]
    stdio: StdioResult
    exec: ExecResult
    memory: MemoryResult

    def baseline(self, concurrency: int) -> RatePoint:
        return next(p for p in self.rates if p.level == "echo" and p.concurrency == concurrency)

    def ratios(self) -> list[dict[str, Any]]:
        out = []
        for point in self.rates:
            if point.level == "echo":
                continue
            base = self.baseline(point.concurrency)
            out.append({
                "level": point.level, "concurrency": point.concurrency,
                "calls_per_s_ratio": point.calls_per_s / base.calls_per_s,
                "client_cpu_ratio": point.client_us_per_call / base.client_us_per_call,
            })
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "loop": self.loop, "loop_version": self.loop_version,
            "rpc": [p.as_dict() for p in self.rates], "ratios": self.ratios(),
            "stdio": self.stdio.as_dict(), "exec": self.exec.as_dict(),
            "memory": self.memory.as_dict(),
        }


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu_count": os.cpu_count() or 0,
        "cpus_usable": usable,
        "cpu_model": model,
        "agentio": agentio.__version__,
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    out = [line, "-" * len(line)]
    for row in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return out


def render(machine: Mapping[str, Any], settings: Mapping[str, Any],
           runs: Sequence[LoopRun]) -> str:
    """The human-readable report."""
    lines = [
        f"agentio {machine['agentio']} bench — {machine['implementation']} "
        f"{machine['python']}, {machine['system']}",
        f"cpus: {machine['cpu_count']} ({machine['cpus_usable']} usable)"
        + (f", {machine['cpu_model']}" if machine["cpu_model"] else ""),
        f"duration {settings['duration']:g} s per point after {settings['warmup']:g} s warmup; "
        f"servers (local agent, echo) in child processes on stdlib asyncio",
    ]
    for run in runs:
        label = f"{run.loop} {run.loop_version}".strip()
        lines += ["", f"== client loop: {label} =="]
        lines += ["", "Health.Check over ONE unix connection (server CPU = the child's); "
                      "Kata 1.x levels: gRPC on one yamux stream of it"]
        rows = []
        for point in sorted(run.rates, key=lambda p: (p.concurrency, _LEVELS.index(p.level))):
            base = run.baseline(point.concurrency)
            rows.append([
                _LABELS[point.level], str(point.concurrency), f"{point.calls_per_s:,.0f}",
                f"{point.client_us_per_call:.1f}", _num(point.server_us_per_call, ".1f"),
                f"{point.calls_per_s / base.calls_per_s:.2f}",
                f"{point.client_us_per_call / base.client_us_per_call:.2f}",
            ])
        lines += _table(["level", "conc", "calls/s", "client µs/call", "server µs/call",
                         "calls/s ÷ echo", "CPU ÷ echo"], rows)
        stdio, exe, mem = run.stdio, run.exec, run.memory
        lines += [
            "",
            f"stdio  cat round trip: {stdio.bytes_per_s / MIB:,.1f} MiB/s each way "
            f"({stdio.rounds} x {stdio.bytes_per_round // MIB} MiB; client CPU "
            f"{stdio.client_cpu_ms_per_mib:.1f} ms/MiB)",
            f"exec   `true` create+start → exit: p50 {exe.p50 * 1e3:.2f} ms, "
            f"p99 {exe.p99 * 1e3:.2f} ms (n={len(exe.latencies)})",
            f"memory idle connected KataAgent: {mem.bytes_per_client / 1024:.1f} KiB RSS per "
            f"client ({mem.clients} clients over {mem.sockets} sockets, RSS "
            f"{mem.rss_before / MIB:.1f} → {mem.rss_after / MIB:.1f} MiB)",
        ]
    return "\n".join(lines)


_LEVELS = ("agent.check", "agent.check+metrics", "ttrpc.call", "kata1.check", "grpc.call",
           "echo")
_LABELS = {"agent.check": "KataAgent.check", "agent.check+metrics": "… with metrics on",
           "ttrpc.call": "TtrpcClient.call", "kata1.check": "Kata1Agent.check",
           "grpc.call": "GrpcClient.call", "echo": "echo baseline"}
