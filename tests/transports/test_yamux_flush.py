"""A yamux session writes what one turn of the loop produced in one socket write."""

from __future__ import annotations

import asyncio
from typing import Any

from agentio.transports.yamux.codec import FrameReader
from agentio.transports.yamux.session import YamuxSession


class CountingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def test_frames_of_one_loop_turn_share_one_write() -> None:
    transport = CountingTransport()
    session = YamuxSession("client")
    session.connection_made(transport)
    stream = await session.open_stream()
    for part in (b"headers", b"data", b"trailers"):
        stream.write(part)
    assert transport.writes == []  # nothing yet: the write happens once this turn ends
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    frames = FrameReader().feed(transport.writes[0])
    assert [f.payload for f in frames] == [b"", b"headers", b"data", b"trailers"]  # SYN first
    stream.write(b"more")
    await asyncio.sleep(0)
    assert len(transport.writes) == 2
