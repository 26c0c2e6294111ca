"""Fault cases for the ttrpc client, through the fault proxy and scripted peers (issue 5).

Cases 1 (slow peer, many large calls), 2 (peer killed under long polls), 3 (answers nobody
asked for) and 9 (a paused peer) at the connection level; the public-API side of case 2 is in
``test_sandbox_faults.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agentio.errors import ConnectionClosed, DeadlineExceeded
from agentio.protocols.ttrpc import TtrpcClient
from agentio.protocols.ttrpc.codec import (
    MAX_STREAM_ID,
    TYPE_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    encode_frame,
    encode_header,
    encode_request,
    encode_response,
)
from agentio.testing import (
    Direction,
    Duplicate,
    FaultProxy,
    LeakCheck,
    PeerCall,
    RewriteStreamId,
    ScriptedTtrpcPeer,
    Throttle,
    hang,
)

BOUND = 10.0  # upper bound on "promptly"; only a broken test waits for it
ProxyFactory = Callable[..., Awaitable[FaultProxy]]
ClientFactory = Callable[[str], TtrpcClient]


async def eventually(predicate: Callable[[], bool], turns: int = 100_000) -> None:
    """Let the loop run (and poll its sockets) until ``predicate()`` holds."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def digest(call: PeerCall) -> bytes:
    return hashlib.sha256(call.request.payload).digest()


# --- 1. many large calls to a peer that reads and answers slowly ---------------------------

CALLS = 200
PAYLOAD = 256 * 1024  # 50 MiB in all
SLOW_RATE = 200e6  # bytes/s the peer reads at (through the proxy)


async def test_200_large_calls_to_slow_peer_read_answers_while_writes_blocked(
    sock_dir: Path, make_proxy: ProxyFactory, ttrpc_client: ClientFactory
) -> None:
    """A slow reader (throttled) that answers slowly and then stops reading altogether: the
    answers it owes still reach the callers while every other request is stuck behind our
    full transport; once it reads again, all 200 calls complete with their own answers."""
    first_batch = 10
    batch_seen = asyncio.Event()
    release = asyncio.Event()

    async def slow_digest(call: PeerCall) -> bytes:
        if len(peer.calls) >= first_batch:
            batch_seen.set()
        await release.wait()  # answers slowly: held until the client's writes are blocked
        return await digest(call)

    async with ScriptedTtrpcPeer(sock_dir) as peer:
        peer.on("Put", slow_digest)
        proxy = await make_proxy(peer.address)
        proxy.inject(Throttle(direction=Direction.TO_AGENT, bytes_per_second=SLOW_RATE))
        client = ttrpc_client(proxy.address)
        conn = await client.connect()
        answered_while_paused = 0
        answered = asyncio.Event()
        blobs = [os.urandom(16) * (PAYLOAD // 16) for _ in range(CALLS)]

        async def put(blob: bytes) -> bytes:
            nonlocal answered_while_paused
            answer = await client.call("svc", "Put", blob, timeout=BOUND)
            if conn.writing_paused:
                answered_while_paused += 1
                if answered_while_paused >= first_batch:
                    answered.set()
            return answer

        calls = asyncio.gather(*(put(b) for b in blobs))
        await asyncio.wait_for(batch_seen.wait(), BOUND)
        proxy.pause(Direction.TO_AGENT)  # the peer stops reading requests altogether
        await eventually(lambda: conn.writing_paused)
        release.set()
        # what it did read is answered, and read by the client, although every remaining
        # request is stuck behind a full transport
        await asyncio.wait_for(answered.wait(), BOUND)
        assert conn.writing_paused
        assert 0 < conn.pending < CALLS
        proxy.resume(Direction.TO_AGENT)
        answers = await asyncio.wait_for(calls, BOUND)
    assert answers == [hashlib.sha256(b).digest() for b in blobs]
    assert len(peer.calls) == CALLS


# --- 2. long polls pending when the peer dies ----------------------------------------------

POLLS = 5


@pytest.mark.parametrize("death", ["reset", "close", "close_mid_frame", "garbage"])
async def test_long_polls_fail_promptly_when_the_peer_dies(
    sock_dir: Path, make_proxy: ProxyFactory, ttrpc_client: ClientFactory, death: str
) -> None:
    """Every way a connection can end under pending long polls fails them all at once with
    ConnectionClosed naming the cause; later calls fail fast; nothing is left behind."""
    async with ScriptedTtrpcPeer(sock_dir) as peer:
        all_pending = asyncio.Event()

        async def hang_counted(call: PeerCall) -> bytes | None:
            if len(peer.calls) >= POLLS:
                all_pending.set()
            return await hang(call)

        peer.on("WaitProcess", hang_counted)
        proxy = await make_proxy(peer.address)
        leaks = LeakCheck.start()
        client = ttrpc_client(proxy.address)
        polls = [asyncio.ensure_future(client.call("svc", "WaitProcess", b"", timeout=None,
                                                   send_timeout=False))
                 for _ in range(POLLS)]
        await asyncio.wait_for(all_pending.wait(), BOUND)
        loop = asyncio.get_running_loop()
        started = loop.time()
        if death == "reset":
            await proxy.kill(reset=True)
        elif death == "close":
            await proxy.kill(reset=False)
        elif death == "close_mid_frame":
            proxy.send(Direction.TO_CLIENT, encode_header(1, TYPE_RESPONSE, 100) + b"abc")
            await proxy.kill(reset=False)
        else:  # a header no ttrpc peer can send: type 2 with a body that is not a Response
            proxy.send(Direction.TO_CLIENT, encode_frame(1, TYPE_RESPONSE, b"\xff" * 32))
        results = await asyncio.wait_for(
            asyncio.gather(*polls, return_exceptions=True), BOUND)
        elapsed = loop.time() - started
        assert all(isinstance(r, ConnectionClosed) for r in results), results
        assert elapsed < 2.0  # at once: no deadline (BOUND) was waited for
        assert {r.operation for r in results if isinstance(r, ConnectionClosed)} == {
            "WaitProcess"}
        # the client stays failed, with the original cause, and does not redial
        accepted = proxy.accepted
        with pytest.raises(ConnectionClosed) as new_call:
            await asyncio.wait_for(client.call("svc", "Check", b"", timeout=BOUND), 0.5)
        assert new_call.value.__cause__ is not None
        assert proxy.accepted == accepted
        await client.close()
        await proxy.close()
        await leaks.assert_clean()


# --- 3. answers on streams nobody asked for, or answered twice -----------------------------


def _stray_frames(stream_id: int) -> Iterator[bytes]:
    ok = encode_response(b"stray")
    yield encode_frame(stream_id + 2_000, TYPE_RESPONSE, ok)  # an odd id not asked yet
    yield encode_frame(stream_id + 1, TYPE_RESPONSE, ok)  # an even (server-side) id
    yield encode_frame(0, TYPE_RESPONSE, ok)
    yield encode_frame(MAX_STREAM_ID, TYPE_RESPONSE, ok)
    yield encode_frame(stream_id, TYPE_DATA, b"data on a unary call")
    yield encode_frame(stream_id, TYPE_REQUEST, encode_request("svc", "Reverse", b""))
    yield encode_frame(stream_id, 0x7F, b"unknown frame type")


async def test_strays_and_second_answers_are_ignored_and_other_calls_complete(
    sock_dir: Path, ttrpc_client: ClientFactory
) -> None:
    """The peer sprinkles answers for ids nobody asked for (future, even, 0, max), frame
    types a client never gets, answers each call twice and answers calls that timed out:
    every real call still gets exactly its own answer and the connection stays up."""
    async def noisy(call: PeerCall) -> bytes | None:
        conn = call.connection
        for frame in _stray_frames(call.stream_id):
            conn.send(frame)
        right = hashlib.sha256(call.request.payload).digest()
        conn.answer(call.stream_id, right)
        conn.answer(call.stream_id, b"second answer")  # for a call already resolved
        return None

    async with ScriptedTtrpcPeer(sock_dir) as peer:
        peer.on("Put", noisy)
        peer.on("Slow", hang)
        client = ttrpc_client(peer.address)
        with pytest.raises(DeadlineExceeded):  # forgotten: its late answers must go nowhere
            await client.call("svc", "Slow", b"", timeout=0.01)
        for _ in range(3):
            blobs = [os.urandom(64) for _ in range(50)]
            answers = await asyncio.wait_for(
                asyncio.gather(*(client.call("svc", "Put", b, timeout=BOUND) for b in blobs)),
                BOUND)
            assert answers == [hashlib.sha256(b).digest() for b in blobs]
        assert client.connection is not None and not client.connection.is_closed


@pytest.mark.parametrize("fault", [
    Duplicate(direction=Direction.TO_CLIENT, count=None, times=3),
    RewriteStreamId(direction=Direction.TO_CLIENT, new_id=2, skip=1),
], ids=["duplicate", "rewrite-id"])
async def test_proxy_duplicated_or_misaddressed_answers(
    sock_dir: Path, make_proxy: ProxyFactory, ttrpc_client: ClientFactory,
    fault: Duplicate | RewriteStreamId,
) -> None:
    """The same kinds through the proxy: duplicated answers are dropped; an answer moved to
    an id nobody uses leaves its call to its deadline, and the rest complete."""
    async with ScriptedTtrpcPeer(sock_dir) as peer:
        peer.on("Put", digest)
        proxy = await make_proxy(peer.address)
        proxy.inject(fault)
        client = ttrpc_client(proxy.address)
        blobs = [os.urandom(64) for _ in range(20)]
        results = []
        for blob in blobs:  # one at a time, so which call loses its answer is known
            try:
                results.append(await client.call("svc", "Put", blob, timeout=0.5))
            except DeadlineExceeded as exc:
                results.append(exc)
    expected: list[object] = [hashlib.sha256(b).digest() for b in blobs]
    if isinstance(fault, RewriteStreamId):
        assert isinstance(results[1], DeadlineExceeded)
        expected[1] = results[1]
    assert results == expected
    assert proxy.fired(fault) == (len(blobs) if isinstance(fault, Duplicate) else 1)


# --- 9. a peer paused for a long time, then resumed -----------------------------------------


class ShiftedClock:
    """Moves the running loop's clock forward without waiting: ``advance(60)`` makes every
    timer due within the next 60 s fire at the loop's next turn, as if 60 s had passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.offset = 0.0
        self._time = loop.time
        loop.time = self.time  # type: ignore[method-assign]

    def time(self) -> float:
        return self._time() + self.offset

    async def advance(self, seconds: float) -> None:
        self.offset += seconds
        for _ in range(20):
            await asyncio.sleep(0)

    def restore(self) -> None:
        del self.loop.time  # back to the class's method


@pytest.fixture
async def shifted_clock() -> AsyncIterator[ShiftedClock]:
    clock = ShiftedClock(asyncio.get_running_loop())
    yield clock
    clock.restore()


@pytest.mark.parametrize("pause", [60.0, 600.0])
async def test_peer_paused_then_resumed_loses_nothing(
    sock_dir: Path, ttrpc_client: ClientFactory, shifted_clock: ShiftedClock, pause: float
) -> None:
    """A VM paused for ``pause`` seconds stops reading; our writes back up; then it resumes.

    The pause is simulated: the peer stops reading (its socket buffers fill and our
    transport pauses writing), then the loop's clock is moved forward by ``pause`` seconds
    instead of sleeping, so every timer that a real pause would fire (call deadlines,
    anything else the client scheduled) fires. Afterwards the connection is still open,
    long polls and calls with a longer deadline are answered, every byte arrives, and only a
    call whose deadline fell inside the pause failed, with DeadlineExceeded.
    """
    async with ScriptedTtrpcPeer(sock_dir) as peer:
        peer.on("Put", digest)
        client = ttrpc_client(peer.address)
        conn = await client.connect()
        await client.call("svc", "Put", b"warm", timeout=BOUND)
        peer.pause_reading()
        blobs = [os.urandom(16) * 16_384 for _ in range(40)]  # 10 MiB: more than any buffer
        long_polls = [asyncio.ensure_future(client.call("svc", "Put", b, timeout=None,
                                                        send_timeout=False))
                      for b in blobs[:20]]
        patient = [asyncio.ensure_future(client.call("svc", "Put", b, timeout=pause * 2))
                   for b in blobs[20:]]
        short = asyncio.ensure_future(client.call("svc", "Put", b"x", timeout=pause / 2))
        await eventually(lambda: conn.writing_paused)
        await shifted_clock.advance(pause)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(short, BOUND)
        assert not conn.is_closed and conn.writing_paused
        assert not any(f.done() for f in long_polls + patient)
        peer.resume_reading()
        answers = await asyncio.wait_for(asyncio.gather(*long_polls, *patient), BOUND)
        assert answers == [hashlib.sha256(b).digest() for b in blobs]
        assert await client.call("svc", "Put", b"after", timeout=BOUND) == \
            hashlib.sha256(b"after").digest()
        assert not conn.is_closed
