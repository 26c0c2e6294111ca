"""The examples run as a user would run them, and say what they promise.

Each example is started as ``python examples/NAME.py`` (embedded local agent), and one is
pointed with ``--address`` at a separate ``python -m agentio.localagent`` process. A few
are also imported and their ``run()`` awaited in this loop, to check they leave no tasks.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 20  # seconds per example run; each takes well under one


def run_example(name: str, *args: str) -> str:
    """Run ``examples/NAME.py`` with ``args``; its stdout, after checking it exited 0."""
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=EXAMPLES.parent)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "one_exec.py", "many_sandboxes.py", "stream_output.py", "timeout_and_signal.py",
        "oci_spec.py"}


def test_one_exec() -> None:
    out = run_example("one_exec.py")
    assert out.startswith(f"stdout: {os.uname().sysname} ")  # `uname -a` ran on the host
    assert out.splitlines()[-1] == "exit status: 0"


def test_many_sandboxes() -> None:
    out = run_example("many_sandboxes.py")
    rows = re.findall(r"^demo-(\d{3}) +(\d+) +[\d.]+  hello from sandbox (\d+), pid (\d+)$",
                      out, re.MULTILINE)
    assert [(int(a), int(status), int(b)) for a, status, b, _ in rows] == [
        (i, 0, i) for i in range(20)]
    assert len({pid for *_, pid in rows}) == 20  # twenty separate processes
    assert re.search(r"^20 sandboxes in [\d.]+ s, 20 exited 0$", out, re.MULTILINE)


def test_many_sandboxes_count() -> None:
    out = run_example("many_sandboxes.py", "--count", "3")
    assert out.count("hello from sandbox") == 3
    assert "3 sandboxes in" in out


def test_stream_output() -> None:
    out = run_example("stream_output.py")
    timed = re.findall(r"^\[ *([\d.]+) ms\] (.*)$", out, re.MULTILINE)
    # "you said" lines only exist if "ready" reached us while the process was running.
    assert [line for _, line in timed] == [
        "tick 1", "tick 2", "tick 3", "ready", "you said: hello",
        "you said: from the host", "stdin closed, bye"]
    stamps = [float(ms) for ms, _ in timed]
    assert stamps == sorted(stamps)
    assert out.splitlines()[-1] == "exit status: 0"


def test_timeout_and_signal() -> None:
    out = run_example("timeout_and_signal.py")
    assert "timed out after 0.3 s; still running: True" in out
    assert re.search(r"read \d+ ticks before the deadline; cancelled: True", out)
    stops = re.findall(r"exit status (\d+) \(128 \+ SIGTERM = 143\); \d+ more ticks were "
                       r"buffered; stdout ended: (\w+)", out)
    assert stops == [("143", "True"), ("143", "True")]
    assert out.splitlines()[-1] == "agent still answers after the cancelled waits"


def test_oci_spec() -> None:
    out = run_example("oci_spec.py")
    assert out.splitlines() == [
        "init: hello from config.json in /tmp",  # env and cwd came from the spec
        "exec: an exec'd process sees no GREETING",  # the exec's own env, not init's
        "exec exit status: 0",
    ]


def test_oci_spec_reads_a_config_file(tmp_path: Path) -> None:
    config = load("oci_spec").CONFIG
    process = {**config["process"], "args": ["sh", "-c", "echo from file; exec sleep 100"]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config, "process": process}))
    assert run_example("oci_spec.py", "--config", str(path)).splitlines()[0] == "from file"


def test_address_drives_a_separate_agent(sock_dir: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "agentio.localagent", "--dir", str(sock_dir / "agents")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], TIMEOUT)
        assert ready, "the local agent printed no address"
        address = server.stdout.readline().strip()
        assert address.startswith("unix://")
        out = run_example("one_exec.py", "--address", address)
        assert out.splitlines()[-1] == "exit status: 0"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(TIMEOUT) == 0


@pytest.mark.parametrize("name", ["one_exec", "timeout_and_signal"])
async def test_run_in_process_leaves_no_tasks(name: str, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    result = await load(name).run(None)
    assert result == (0 if name == "one_exec" else [143, 143])
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert "exit status" in capsys.readouterr().out
