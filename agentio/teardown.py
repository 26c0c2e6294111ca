"""Teardown that runs to its end even when the caller has been cancelled.

Layer: public API (helper). An expired anyio cancel scope cancels every await made inside it
again, so cleanup code (kill a process, stop a container, disconnect) written as plain awaits
would be cut short after its first one and leave tasks and processes behind. Teardown runs in a
shielded scope with its own deadline instead: it finishes, or fails with a clear timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from .errors import AgentTimeout


@asynccontextmanager
async def shielded_teardown(limit: float, what: str, **context: str) -> AsyncIterator[None]:
    """Shield the block from outer cancellation; give it at most ``limit`` seconds.

    Raises :class:`~agentio.errors.AgentTimeout` naming ``what`` if the limit ran out.
    """
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + limit
        yield
    if scope.cancelled_caught:
        raise AgentTimeout(f"{what} did not finish within {limit:g}s", operation=what, **context)
