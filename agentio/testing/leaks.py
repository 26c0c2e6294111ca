"""Leak checks: descriptors and asyncio tasks left behind by a piece of work.

Layer: testing. Standard library only (Linux ``/proc`` for descriptors).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field


def open_fds() -> set[int]:
    """The file descriptors this process has open now."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # listdir's own descriptor, closed by now
        fds.add(fd)
    return fds


def describe_fd(fd: int) -> str:
    """What a descriptor points at (``socket:[…]``, a path), for messages."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@dataclass
class LeakCheck:
    """A snapshot of open descriptors and live tasks, to compare with later.

    Take it with :meth:`start` before the work (inside the running loop); after the work,
    :meth:`leaked_tasks` and :meth:`leaked_fds` name what is still there that was not before.
    """

    fds: set[int] = field(default_factory=set)
    tasks: set[asyncio.Task[object]] = field(default_factory=set)

    @classmethod
    def start(cls) -> LeakCheck:
        """Snapshot now (call from a coroutine)."""
        return cls(open_fds(), set(asyncio.all_tasks()))

    async def leaked_tasks(self, turns: int = 1000) -> set[asyncio.Task[object]]:
        """Tasks started since the snapshot still running after ``turns`` loop iterations.

        The current task is never counted. Tasks that end by themselves within the turns
        (callbacks finishing a close) are not leaks.
        """
        current = asyncio.current_task()
        left: set[asyncio.Task[object]] = set()
        for _ in range(turns):
            left = {t for t in asyncio.all_tasks() - self.tasks
                    if not t.done() and t is not current}
            if not left:
                break
            await asyncio.sleep(0)
        return left

    def leaked_fds(self) -> dict[int, str]:
        """Descriptors opened since the snapshot and still open, with what they point at."""
        return {fd: describe_fd(fd) for fd in sorted(open_fds() - self.fds)}

    async def assert_clean(self) -> None:
        """Raise :class:`AssertionError` naming any leaked task or descriptor."""
        tasks = await self.leaked_tasks()
        assert not tasks, f"leaked tasks: {tasks}"
        fds = self.leaked_fds()
        assert not fds, f"leaked descriptors: {fds}"
