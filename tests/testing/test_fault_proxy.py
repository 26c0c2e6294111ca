"""The fault harness itself: each fault does what it says to a ttrpc call through the proxy,
the scripted peer answers as told, and closing either leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentio.errors import (
    AgentError,
    ConfigError,
    ConnectionClosed,
    DeadlineExceeded,
    ResourceExhausted,
)
from agentio.protocols.ttrpc import TtrpcClient
from agentio.protocols.ttrpc.client import ProtocolFactory
from agentio.testing import (
    CloseMidFrame,
    Corrupt,
    Delay,
    Direction,
    Drop,
    Duplicate,
    Endless,
    Fault,
    FaultProxy,
    LeakCheck,
    OversizedHeader,
    PeerCall,
    Reorder,
    Reset,
    RewriteStreamId,
    ScriptedTtrpcPeer,
    StallReads,
    StallWrites,
    Truncate,
    hang,
    stop_answering,
)
from agentio.transports.connect import connect

DEADLINE = 0.5
TO_CLIENT = Direction.TO_CLIENT
TO_AGENT = Direction.TO_AGENT


async def echo(call: PeerCall) -> bytes:
    return call.request.payload


@pytest.fixture
async def peer(sock_dir: Path) -> AsyncIterator[ScriptedTtrpcPeer]:
    async with ScriptedTtrpcPeer(sock_dir) as scripted:
        scripted.on("Echo", echo)
        scripted.on("Hang", hang)
        yield scripted


@pytest.fixture
async def proxy(peer: ScriptedTtrpcPeer, sock_dir: Path) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(peer.address, sock_dir) as fault_proxy:
        yield fault_proxy


def client_for(address: str) -> TtrpcClient:
    async def connector(factory: ProtocolFactory) -> tuple[asyncio.BaseTransport,
                                                           asyncio.BaseProtocol]:
        return await connect(address, factory)
    return TtrpcClient(connector)


async def _echo(client: TtrpcClient, payload: bytes = b"hello") -> bytes:
    return await client.call("svc", "Echo", payload, timeout=DEADLINE)


CASES: list[tuple[str, Fault, type[BaseException] | None, float]] = [
    ("delay", Delay(direction=TO_CLIENT, seconds=0.2), None, 0.2),
    ("stall-writes", StallWrites(direction=TO_CLIENT, seconds=0.2), None, 0.2),
    ("duplicate", Duplicate(direction=TO_CLIENT, times=2), None, 0.0),
    ("drop-answer", Drop(direction=TO_CLIENT), DeadlineExceeded, DEADLINE),
    ("drop-request", Drop(direction=TO_AGENT), DeadlineExceeded, DEADLINE),
    ("stop-answering", stop_answering("Echo"), DeadlineExceeded, DEADLINE),
    ("unknown-stream-id", RewriteStreamId(direction=TO_CLIENT, new_id=1001), DeadlineExceeded,
     DEADLINE),
    ("oversized", OversizedHeader(direction=TO_CLIENT), ResourceExhausted, 0.0),
    ("close-mid-frame", CloseMidFrame(direction=TO_CLIENT, keep=4), ConnectionClosed, 0.0),
    ("reset", Reset(direction=TO_CLIENT), ConnectionClosed, 0.0),
    ("corrupt-envelope", Corrupt(direction=TO_CLIENT, offsets=(10,), xor=0x0F),
     ConnectionClosed, 0.0),
    ("truncate", Truncate(direction=TO_CLIENT, keep=12), DeadlineExceeded, DEADLINE),
    ("endless", Endless(direction=TO_CLIENT, pattern=b"\0\0\0\x01", max_bytes=1 << 20),
     AgentError, 0.0),
]


@pytest.mark.parametrize("fault, raises, at_least", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
async def test_each_fault_acts_on_one_call_once(
    proxy: FaultProxy, fault: Fault, raises: type[BaseException] | None, at_least: float
) -> None:
    proxy.inject(fault)
    client = client_for(proxy.address)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        if raises is None:
            assert await _echo(client) == b"hello"
        else:
            with pytest.raises(raises):
                await _echo(client)
        assert loop.time() - started >= at_least * 0.95
        assert proxy.fired(fault) == 1
    finally:
        await client.close()


async def test_stall_reads_holds_the_next_requests(proxy: FaultProxy) -> None:
    fault = proxy.inject(StallReads(direction=TO_AGENT, seconds=0.3))
    client = client_for(proxy.address)
    loop = asyncio.get_running_loop()
    try:
        assert await _echo(client, b"first") == b"first"  # passes, then reading stops
        started = loop.time()
        assert await _echo(client, b"second") == b"second"
        assert loop.time() - started >= 0.25
        assert proxy.fired(fault) == 1
    finally:
        await client.close()


async def test_reorder_swaps_two_answers(proxy: FaultProxy, peer: ScriptedTtrpcPeer) -> None:
    """The first answer is held until the second has gone out; both calls still get their
    own (ids tell them apart)."""
    gate = asyncio.Event()

    async def second_waits(call: PeerCall) -> bytes:
        if call.request.payload == b"one":
            gate.set()
        else:
            await gate.wait()
        return call.request.payload

    peer.on("Echo", second_waits)
    fault = proxy.inject(Reorder(direction=TO_CLIENT, hold=DEADLINE))
    client = client_for(proxy.address)
    order: list[bytes] = []

    async def call(payload: bytes) -> None:
        order.append(await _echo(client, payload))

    try:
        await asyncio.gather(call(b"one"), call(b"two"))
    finally:
        await client.close()
    assert order == [b"two", b"one"]
    assert proxy.fired(fault) == 1


async def test_filters_skip_and_count(proxy: FaultProxy) -> None:
    fault = proxy.inject(Drop(direction=TO_CLIENT, method="Echo", skip=2, count=2))
    client = client_for(proxy.address)
    outcomes = []
    try:
        for i in range(6):
            try:
                outcomes.append(await client.call("svc", "Echo", b"%d" % i, timeout=0.3))
            except DeadlineExceeded:
                outcomes.append(None)
    finally:
        await client.close()
    assert outcomes == [b"0", b"1", None, None, b"4", b"5"]
    assert proxy.fired(fault) == 2


async def test_closing_proxy_and_peer_mid_fault_leaves_nothing(
    sock_dir: Path,
) -> None:
    leaks = LeakCheck.start()
    async with ScriptedTtrpcPeer(sock_dir) as peer:
        peer.on("Hang", hang)
        proxy = FaultProxy(peer.address, sock_dir)
        await proxy.start()
        proxy.inject(StallWrites(direction=TO_AGENT, seconds=30, count=None))
        client = client_for(proxy.address)
        calls = [asyncio.ensure_future(client.call("svc", "Hang", b"x" * 100_000))
                 for _ in range(5)]
        await client.connect()
        for _ in range(50):
            await asyncio.sleep(0)
        await proxy.close()  # cancels the stalled writers and readers
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert all(isinstance(r, ConnectionClosed) for r in results), results
        await client.close()
    await leaks.assert_clean()


def test_bad_fault_settings_are_config_errors(sock_dir: Path) -> None:
    with pytest.raises(ConfigError):
        Delay(seconds=-1)
    with pytest.raises(ConfigError):
        Delay(seconds=float("inf"))
    with pytest.raises(ConfigError):
        Drop(count=0)
    with pytest.raises(ConfigError):
        Corrupt(xor=0)
    with pytest.raises(ConfigError):
        Endless(pattern=b"")
    raw = FaultProxy("/nonexistent.sock", sock_dir, framing="raw")
    with pytest.raises(ConfigError):
        raw.inject(Drop(method="Echo"))
    with pytest.raises(ConfigError):
        FaultProxy("/nonexistent.sock", sock_dir, max_buffer=0)


async def test_reorder_on_every_unit_does_not_nest(proxy: FaultProxy) -> None:
    """Reorder with count=None on a long run of answers: each held unit is released after the
    next one, and the next is never held in turn (no unbounded nesting)."""
    fault = proxy.inject(Reorder(direction=TO_CLIENT, count=None, hold=0.05))
    client = client_for(proxy.address)
    try:
        payloads = [b"%d" % i for i in range(300)]
        answers = await asyncio.wait_for(
            asyncio.gather(*(_echo(client, p) for p in payloads)), 10)
    finally:
        await client.close()
    assert answers == payloads
    assert proxy.fired(fault) >= 100


async def test_scripted_peer_bounds_handlers_per_connection(sock_dir: Path) -> None:
    async with ScriptedTtrpcPeer(sock_dir, max_inflight=2, default=hang) as peer:
        client = client_for(peer.address)
        calls = [asyncio.ensure_future(client.call("svc", "Hang", b"", timeout=0.3))
                 for _ in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await client.close()
    assert all(isinstance(r, DeadlineExceeded) for r in results)
    assert len(peer.calls) == 2  # the rest were never read
