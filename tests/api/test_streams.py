"""OutputStream / InputStream: ordering, bounds, errors after data, StreamReader-like API."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentio.errors import AgentError, OutputIncomplete
from agentio.streams import InputStream, OutputStream


async def test_read_returns_bytes_in_order_then_eof() -> None:
    stream = OutputStream("stdout", limit=1024)
    stream.feed_data(b"hello ")
    stream.feed_data(b"world")
    stream.feed_eof()
    assert await stream.read(3) == b"hel"
    assert await stream.read() == b"lo world"
    assert await stream.read() == b""
    assert stream.at_eof()


async def test_read_waits_for_data() -> None:
    stream = OutputStream("stdout", limit=1024)
    reader = asyncio.create_task(stream.read(10))
    await asyncio.sleep(0)
    assert not reader.done()
    stream.feed_data(b"x")
    assert await reader == b"x"


async def test_error_comes_after_the_bytes_that_arrived() -> None:
    stream = OutputStream("stdout", limit=1024)
    stream.feed_data(b"partial")
    stream.set_exception(OutputIncomplete("lost"))
    assert await stream.read(100) == b"partial"
    with pytest.raises(OutputIncomplete):
        await stream.read(100)


async def test_space_blocks_producer_at_limit_and_reopens_after_read() -> None:
    stream = OutputStream("stdout", limit=8)
    stream.feed_data(b"12345678")
    waiter = asyncio.create_task(stream.wait_for_space())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert await stream.read(4) == b"1234"
    await asyncio.wait_for(waiter, 1)


async def test_readline_readexactly_and_iteration() -> None:
    stream = OutputStream("stdout", limit=1024)
    stream.feed_data(b"one\ntwo\nthr")
    stream.feed_data(b"ee")
    stream.feed_eof()
    assert await stream.readline() == b"one\n"
    assert await stream.readexactly(4) == b"two\n"
    assert [line async for line in stream] == [b"three"]


async def test_readexactly_short_raises_incomplete() -> None:
    stream = OutputStream("stdout", limit=1024)
    stream.feed_data(b"ab")
    stream.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError) as info:
        await stream.readexactly(3)
    assert info.value.partial == b"ab"


async def test_readuntil_without_separator_within_limit_overruns() -> None:
    stream = OutputStream("stdout", limit=4)
    stream.feed_data(b"abcdef")
    with pytest.raises(asyncio.LimitOverrunError):
        await stream.readuntil(b"\n")


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(min_value=1, max_value=64))
def test_any_chunking_reads_back_the_same_bytes(chunks: list[bytes], size: int) -> None:
    async def run() -> bytes:
        stream = OutputStream("stdout", limit=1 << 20)
        for chunk in chunks:
            stream.feed_data(chunk)
        stream.feed_eof()
        parts = []
        while part := await stream.read(size):
            assert len(part) <= size
            parts.append(part)
        return b"".join(parts)

    assert asyncio.run(run()) == b"".join(chunks)


async def test_input_stream_hands_chunks_in_order_then_close() -> None:
    started = []
    stdin = InputStream(limit=4, ensure_writer=lambda: started.append(1))
    stdin.write(b"abc")
    stdin.write(b"defg")
    stdin.close()
    assert started
    got = []
    while (chunk := await stdin.next_chunk(5)) is not None:
        if not chunk:
            stdin.finished()
            break
        got.append(chunk)
        stdin.consumed(len(chunk))
    assert b"".join(got) == b"abcdefg"
    await stdin.wait_closed()


async def test_input_stream_failure_is_raised_not_dropped() -> None:
    stdin = InputStream(limit=4, ensure_writer=lambda: None)
    stdin.write(b"abcdefgh")
    drain = asyncio.create_task(stdin.drain())
    await asyncio.sleep(0)
    assert not drain.done()
    stdin.finished(AgentError("broken", operation="WriteStdin"))
    with pytest.raises(AgentError, match="broken"):
        await drain
    with pytest.raises(AgentError, match="broken"):
        stdin.write(b"more")


async def test_write_after_close_is_an_error() -> None:
    stdin = InputStream(limit=4, ensure_writer=lambda: None)
    stdin.close()
    with pytest.raises(AgentError, match="closed"):
        stdin.write(b"x")
