"""Streams on a lazily dialled yamux session: the connector for gRPC over yamux.

Layer: transports. Imports only :mod:`agentio.errors` and its own package.

:class:`YamuxDialer` dials the byte stream on first use, runs a client-role
:class:`~.session.YamuxSession` on it and opens one stream per :meth:`~YamuxDialer.connect_stream`
call, which has the shape of a connector (``protocol_factory`` in, ``(transport, protocol)``
out). Once the session is lost, the next call dials a new one; :meth:`~YamuxDialer.close` ends
it for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agentio.errors import ConnectionClosed
from agentio.transports.yamux.session import YamuxConfig, YamuxSession, YamuxStream

log = logging.getLogger(__name__)

P = TypeVar("P", bound=asyncio.Protocol)

SessionDial = Callable[
    [Callable[[], YamuxSession]], Awaitable[tuple[asyncio.BaseTransport, YamuxSession]]
]
"""``dial(session_factory)`` opens the byte stream and runs the session on it."""

_CLOSE_WAIT = 5.0  # seconds close() waits for the byte stream to be closed


class YamuxDialer:
    """One yamux session at a time, dialled when first needed, with a stream per connection.

    ``dial`` is for example ``lambda f: agentio.transports.connect(address, f, policy)``.
    """

    def __init__(self, dial: SessionDial, config: YamuxConfig | None = None) -> None:
        self._dial = dial
        self._config = config or YamuxConfig()
        self._session: YamuxSession | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def session(self) -> YamuxSession | None:
        """The current session (None before the first dial or after close)."""
        return self._session

    async def get_session(self) -> YamuxSession:
        """The running session, dialling a new one if there is none or it was lost."""
        async with self._lock:
            if self._closed:
                raise ConnectionClosed("yamux dialer closed")
            session = self._session
            if session is None or session.is_closing():
                config = self._config
                _, session = await self._dial(lambda: YamuxSession("client", config))
                if self._closed:
                    session.close()
                    raise ConnectionClosed("yamux dialer closed while dialling")
                log.debug("yamux session started")
                self._session = session
            return session

    async def connect_stream(self, protocol_factory: Callable[[], P]) -> tuple[YamuxStream, P]:
        """Open a stream on the session and run ``protocol_factory()`` on it."""
        session = await self.get_session()
        return await session.connect_stream(protocol_factory)

    async def close(self) -> None:
        """Close the session (GoAway, then the byte stream) and refuse further streams."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            session.close()
            try:
                async with asyncio.timeout(_CLOSE_WAIT):
                    await session.wait_closed()
            except TimeoutError:
                log.warning("yamux byte stream did not close in time; aborting it")
                session.abort()
