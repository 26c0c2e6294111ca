"""Health monitoring: notice when a sandbox's agent stops answering or goes away.

Layer: public API. A :class:`HealthMonitor` checks one sandbox's agent (``Health.Check`` or
the agent type's equivalent) every ``interval`` seconds, each check bounded by a
``deadline`` shorter than the interval, so at most one check per monitor is ever in flight
and a monitor holds one timer at a time. Start times are jittered so that many monitors on
one event loop spread out instead of firing together.

States, reported on change to a callback and to every :meth:`HealthMonitor.changes`
iterator:

* ``HEALTHY`` — the last check was answered.
* ``UNRESPONSIVE`` — the last check(s) went unanswered within the deadline (or were refused
  with a status) while the connection still stands.
* ``DEAD`` — the connection was lost or could not be made, the guest broke the protocol, or
  ``dead_after`` checks in a row went unanswered. Final: the monitor stops and (unless told
  not to) marks the agent failed, so pending and later calls raise
  :class:`~agentio.errors.SandboxFailed` with the cause instead of waiting.

Usage::

    async with HealthMonitor(sandbox, interval=5, on_change=print) as monitor:
        async for change in monitor.changes():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .agents.base import Agent
from .errors import AgentConnectionError, AgentError, ConfigError, ProtocolError
from .sandbox import Sandbox

log = logging.getLogger(__name__)


class HealthState(enum.Enum):
    """What a monitor last concluded about its sandbox."""

    HEALTHY = "healthy"
    UNRESPONSIVE = "unresponsive"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class HealthChange:
    """One state change: from ``previous`` to ``state``, with what caused it."""

    sandbox_id: str
    previous: HealthState
    state: HealthState
    cause: BaseException | None
    """The failed check's error (``None`` on recovery)."""
    failures: int
    """Checks failed in a row so far."""


ChangeCallback = Callable[[HealthChange], Any]


class HealthMonitor:
    """Checks one sandbox's agent at an interval and reports state changes.

    Args:
        target: the :class:`~agentio.sandbox.Sandbox` (or a bare
            :class:`~agentio.agents.base.Agent`) to watch.
        interval: seconds between checks (before jitter).
        deadline: bound on one check, seconds; must be shorter than ``interval``
            (default: half of it).
        jitter: each wait is ``interval`` times a random factor in ``1 ± jitter``.
        dead_after: unanswered checks in a row that count as dead.
        on_change: called with each :class:`HealthChange` (a coroutine function is awaited;
            its errors are logged, never raised into the monitor).
        mark_failed: on ``DEAD``, make the agent's pending and later calls fail fast.
    """

    def __init__(
        self,
        target: Sandbox | Agent,
        *,
        interval: float = 10.0,
        deadline: float | None = None,
        jitter: float = 0.1,
        dead_after: int = 3,
        on_change: ChangeCallback | None = None,
        mark_failed: bool = True,
    ) -> None:
        deadline = interval / 2 if deadline is None else deadline
        if not (math.isfinite(interval) and interval > 0):
            raise ConfigError(f"monitor interval must be a positive number, not {interval!r}")
        if not 0 < deadline < interval:
            raise ConfigError(f"monitor deadline ({deadline}) must be positive and shorter "
                              f"than the interval ({interval})")
        if not 0 <= jitter < 1:
            raise ConfigError(f"monitor jitter must be in [0, 1), not {jitter!r}")
        if dead_after < 1:
            raise ConfigError(f"monitor dead_after must be at least 1, not {dead_after!r}")
        if isinstance(target, Sandbox):
            self.agent, self.sandbox_id = target.agent, target.id
        else:
            self.agent, self.sandbox_id = target, str(getattr(target, "sandbox_id", ""))
        self.interval = interval
        self.deadline = deadline
        self.jitter = jitter
        self.dead_after = dead_after
        self.on_change = on_change
        self.mark_failed = mark_failed
        self.state = HealthState.HEALTHY
        self.failures = 0
        self.checks = 0
        self._random = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._queues: list[asyncio.Queue[HealthChange | None]] = []

    def __repr__(self) -> str:
        return f"<HealthMonitor {self.sandbox_id} {self.state} checks={self.checks}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start checking (in a task of the running loop). Idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"health:{self.sandbox_id}")

    async def stop(self) -> None:
        """Stop checking and end every :meth:`changes` iterator. Idempotent."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # our own cancellation still propagates
        self._end_iterators()

    async def __aenter__(self) -> HealthMonitor:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- reporting ---------------------------------------------------------------------------

    def changes(self) -> AsyncIterator[HealthChange]:
        """Every state change from this call on; the iteration ends after ``DEAD`` or on stop.

        Each call gives an independent iterator, registered at once (changes that happen
        before the first ``await`` on it are kept for it).
        """
        queue: asyncio.Queue[HealthChange | None] = asyncio.Queue()
        if self.state is HealthState.DEAD or (self._task is not None and self._task.done()):
            queue.put_nowait(None)
        else:
            self._queues.append(queue)
        return self._follow(queue)

    async def _follow(self, queue: asyncio.Queue[HealthChange | None]
                      ) -> AsyncIterator[HealthChange]:
        try:
            while (change := await queue.get()) is not None:
                yield change
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(queue)

    def _end_iterators(self) -> None:
        for queue in self._queues:
            queue.put_nowait(None)
        self._queues = []

    async def _report(self, state: HealthState, cause: BaseException | None) -> None:
        if state is self.state:
            return
        change = HealthChange(self.sandbox_id, self.state, state, cause, self.failures)
        self.state = state
        log.log(logging.INFO if state is HealthState.HEALTHY else logging.WARNING,
                "sandbox %s is %s (was %s)%s", self.sandbox_id or "?", state, change.previous,
                f": {cause or type(cause).__name__}" if cause else "")
        for queue in self._queues:
            queue.put_nowait(change)
        if self.on_change is not None:
            try:
                result = self.on_change(change)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("health change callback failed")

    # -- checking ----------------------------------------------------------------------------

    def _wait(self) -> float:
        return self.interval * (1 + self._random.uniform(-self.jitter, self.jitter))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # The first check comes after a random part of an interval: monitors started
            # together (a batch of sandboxes) do not check together.
            next_at = loop.time() + self._random.uniform(0, self.interval)
            while True:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at = loop.time() + self._wait()
                state, cause = await self._check()
                if state is HealthState.DEAD:
                    await self._die(cause)
                    return
                await self._report(state, cause)
        finally:
            self._end_iterators()

    async def _check(self) -> tuple[HealthState, BaseException | None]:
        self.checks += 1
        try:
            async with asyncio.timeout(self.deadline):  # bounds dialling too
                await self.agent.check(timeout=self.deadline)
        except (AgentConnectionError, ProtocolError) as exc:
            self.failures += 1
            return HealthState.DEAD, exc
        except (AgentError, TimeoutError) as exc:
            self.failures += 1
            if self.failures >= self.dead_after:
                return HealthState.DEAD, exc
            return HealthState.UNRESPONSIVE, exc
        self.failures = 0
        return HealthState.HEALTHY, None

    async def _die(self, cause: BaseException | None) -> None:
        assert cause is not None
        await self._report(HealthState.DEAD, cause)
        if self.mark_failed:
            reason = (f"health monitor: agent unresponsive for {self.failures} checks"
                      if not isinstance(cause, AgentConnectionError | ProtocolError)
                      else f"health monitor: {cause}")
            await self.agent.mark_failed(cause, reason)
