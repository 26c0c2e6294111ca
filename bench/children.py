"""Child processes the benchmark talks to (layer: tools): spawned, read, always reaped.

Layer: tools. Servers run in their own processes so their CPU time is not charged to the
client being measured; their own CPU use is read from ``/proc`` where available.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType

log = logging.getLogger(__name__)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ChildError(RuntimeError):
    """A child process did not start or did not print what it should have."""


class Child:
    """A ``python -m MODULE ARGS…`` child whose first stdout lines announce its readiness.

    Use as a context manager (or call :meth:`stop` in a ``finally``): the child gets SIGTERM,
    then SIGKILL if it has not exited within ``grace`` seconds.
    """

    def __init__(self, module: str, args: Sequence[str], *, grace: float = 5.0) -> None:
        self.argv = [sys.executable, "-m", module, *args]
        self.grace = grace
        env = dict(os.environ)
        # the child must find this very ``bench`` package whatever the working directory
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, env=env,
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def read_lines(self, count: int, timeout: float = 30.0) -> list[str]:
        """The child's next ``count`` stdout lines, waiting at most ``timeout`` seconds."""
        stream = self.proc.stdout
        assert stream is not None
        fd = stream.fileno()
        deadline = time.monotonic() + timeout
        buffer = b""
        lines: list[str] = []
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while len(lines) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildError(f"{self.argv[2]} printed {len(lines)} of {count} lines "
                                     f"within {timeout}s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ChildError(f"{self.argv[2]} exited with {self.proc.wait()} "
                                     f"before it was ready")
                buffer += chunk
                *done, buffer = buffer.split(b"\n")
                lines.extend(line.decode() for line in done)
        if buffer:
            raise ChildError(f"{self.argv[2]} printed more than expected: {buffer!r}")
        return lines[:count]

    def cpu_seconds(self) -> float | None:
        """User plus system CPU the child has used so far (``None`` without ``/proc``)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return None
        # the command name may hold spaces and parentheses: fields follow the last ')'
        fields = stat[stat.rindex(b")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def stop(self) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaps. Idempotent."""
        proc = self.proc
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.grace)
                except subprocess.TimeoutExpired:
                    log.warning("%s ignored SIGTERM for %.1fs; killing it", self.argv[2],
                                self.grace)
                    proc.kill()
                    proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
