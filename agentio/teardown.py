"""Teardown that runs to its end even when the caller has been cancelled.

Layer: public API (helper). An expired anyio cancel scope cancels every await made inside it
again, so cleanup code (kill a process, stop a container, disconnect) written as plain awaits
would be cut short after its first one and leave tasks and processes behind. Teardown runs in a
shielded scope with its own deadline instead: it finishes, or fails with a clear timeout.

Teardowns nest (destroying a sandbox closes its processes, each a teardown of its own); the
shield of an inner one would hide the outer one's deadline, so the deadline of the enclosing
teardown travels in a context variable (into tasks started inside, too) and an inner teardown
never runs past it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

import anyio

from .errors import AgentTimeout

_deadline: ContextVar[float | None] = ContextVar("agentio_teardown_deadline", default=None)


@asynccontextmanager
async def shielded_teardown(limit: float, what: str, **context: str) -> AsyncIterator[None]:
    """Shield the block from outer cancellation; give it at most ``limit`` seconds.

    Inside another teardown, the block also ends by that teardown's deadline.
    Raises :class:`~agentio.errors.AgentTimeout` naming ``what`` if the time ran out.
    """
    deadline = anyio.current_time() + limit
    enclosing = _deadline.get()
    if enclosing is not None:
        deadline = min(deadline, enclosing)
    token = _deadline.set(deadline)
    try:
        with anyio.CancelScope(shield=True, deadline=deadline) as scope:
            yield
    finally:
        _deadline.reset(token)
    if scope.cancelled_caught:
        raise AgentTimeout(f"{what} did not finish within {limit:g}s", operation=what, **context)
