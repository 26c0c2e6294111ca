"""The benchmark harness: a tiny run produces every figure, well formed (never judged by speed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # importlib import mode does not put the repo root on sys.path
    sys.path.insert(0, str(ROOT))

from bench.children import Child, ChildError  # noqa: E402
from bench.measure import _percentile  # noqa: E402

CONCURRENCIES = (1, 16, 64)
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--duration", "0.1", "--warmup", "0.05", "--quick",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.read_text())


def _positive(text: str) -> float:
    value = float(text.replace(",", ""))
    assert value > 0, text
    return value


def _not_negative(text: str) -> float:
    value = float(text.replace(",", ""))
    assert value >= 0, text
    return value


def test_table_has_every_section_with_positive_figures(tiny_run: tuple[str, dict[str, Any]]
                                                       ) -> None:
    table, _ = tiny_run
    assert re.search(r"CPython 3\.\d+\.\d+", table)
    assert re.search(r"cpus: [1-9]\d* \([1-9]\d* usable\)", table)
    assert "== client loop: asyncio ==" in table
    for label in ("KataAgent.check", "TtrpcClient.call", "Kata1Agent.check", "GrpcClient.call",
                  "echo baseline"):
        for conc in CONCURRENCIES:
            row = re.search(rf"^{re.escape(label)}\s+{conc}\s+({NUMBER})\s+({NUMBER})\s+"
                            rf"({NUMBER})\s+({NUMBER})\s+({NUMBER})$", table, re.MULTILINE)
            assert row, f"no row for {label} at concurrency {conc}:\n{table}"
            calls_per_s, *cpu_and_ratios = row.groups()
            _positive(calls_per_s)
            for figure in cpu_and_ratios:  # CPU clocks tick coarsely: a tiny run may read 0
                _not_negative(figure)
            if label == "echo baseline":
                assert row.group(4) == row.group(5) == "1.00"
    stdio = re.search(rf"cat round trip: ({NUMBER}) MiB/s .* client CPU ({NUMBER}) ms/MiB", table)
    assert stdio
    _positive(stdio.group(1))
    _positive(stdio.group(2))
    exe = re.search(rf"p50 ({NUMBER}) ms, p99 ({NUMBER}) ms \(n=(\d+)\)", table)
    assert exe
    assert _positive(exe.group(1)) <= _positive(exe.group(2))
    memory = re.search(rf"({NUMBER}) KiB RSS per client \(100 clients over 2 sockets", table)
    assert memory
    _not_negative(memory.group(1))  # 100 clients may fit in pages the process already had


def test_json_matches_the_table_and_is_complete(tiny_run: tuple[str, dict[str, Any]]) -> None:
    table, document = tiny_run
    assert document["machine"]["cpu_count"] >= 1
    assert document["settings"]["concurrency"] == list(CONCURRENCIES)
    (run,) = document["runs"]
    assert run["loop"] == "asyncio"
    points = {(p["level"], p["concurrency"]): p for p in run["rpc"]}
    levels = ("agent.check", "agent.check+metrics", "ttrpc.call", "kata1.check", "grpc.call",
              "echo")
    assert set(points) == {(level, conc) for level in levels for conc in CONCURRENCIES}
    for point in points.values():
        assert point["calls"] > 0
        assert point["calls_per_s"] > 0
        assert point["client_us_per_call"] > 0
        assert point["server_us_per_call"] is None or point["server_us_per_call"] >= 0
        assert f"{point['calls_per_s']:,.0f}" in table
    assert len(run["ratios"]) == 5 * len(CONCURRENCIES)
    assert all(r["calls_per_s_ratio"] > 0 and r["client_cpu_ratio"] > 0 for r in run["ratios"])
    assert run["stdio"]["bytes_per_s"] > 0
    assert run["stdio"]["bytes_per_round"] == 1 << 20
    assert run["exec"]["count"] >= 1
    assert 0 < run["exec"]["p50_ms"] <= run["exec"]["p99_ms"]
    assert run["memory"]["clients"] == 100
    assert run["memory"]["rss_after"] > run["memory"]["rss_before"] > 0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert _percentile(values, 50) == 50.0
    assert _percentile(values, 99) == 99.0
    assert _percentile([3.0], 99) == 3.0
    assert _percentile([2.0, 1.0], 50) == 1.0


def test_child_that_dies_before_ready_is_reported_and_reaped() -> None:
    child = Child("bench.memory", [])  # argparse refuses: exits 2 without printing a line
    try:
        with pytest.raises(ChildError, match="exited with 2"):
            child.read_lines(1, timeout=30)
    finally:
        child.stop()
    assert child.proc.returncode == 2
