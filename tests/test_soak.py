"""The soak tool: a short run with a fault in every sandbox produces every figure, counts the
faults that fired, and finds no failure without a fault and no leak (never judged by speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak_with_faults_everywhere_is_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "1.0", "--slots", "4",
         "--fault-rate", "1", "--seed", "5", "--call-timeout", "0.5", "--sandbox-timeout", "3",
         "--json", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)
    assert figures["ok"] is True
    assert figures["runs"] >= 4
    assert figures["faults_armed"] == figures["runs"]  # --fault-rate 1
    assert 0 < figures["faults_fired"] <= figures["faults_armed"]
    assert sum(figures["fired_by_kind"].values()) == figures["faults_fired"]
    assert figures["failed_without_fault"] == 0 and figures["untyped_errors"] == 0
    assert sum(figures["errors_by_type"].values()) == figures["failed_by_fault"]
    assert figures["leaked_tasks"] == 0 and figures["leaked_fds"] == 0
    assert figures["calls"] > 0 and figures["bytes_verified"] > 0 and figures["peak_rss_kib"] > 0
