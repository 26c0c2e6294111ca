"""``async with`` for objects that are closed (and perhaps started) by coroutines.

Layer: shared by every layer; imports nothing from agentio. One definition of the context
manager protocol instead of the same two methods in every class that owns a connection, a
server or a task.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """``async with obj:`` gives ``obj`` and awaits ``obj.close()`` on the way out."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Serving(Closing):
    """``async with obj:`` awaits ``obj.start()`` first, then behaves like :class:`Closing`."""

    async def start(self) -> object:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self
