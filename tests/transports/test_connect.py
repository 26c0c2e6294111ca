"""connect(): a protocol on a dialed connection, leftover bytes first, vsock on both loops."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentio.errors import DialError
from agentio.transports import (
    Address,
    DialPolicy,
    SelectorTransport,
    connect,
    loop_accepts_vsock,
)

FAST = DialPolicy(budget=2.0, backoff_initial=0.005, backoff_max=0.02)
# For a dial that must still be in progress when the test acts, however loaded the machine.
SLOW = DialPolicy(budget=60.0, handshake_timeout=60.0, backoff_initial=0.005, backoff_max=0.02)


async def test_hvsock_echo(fake_vmm: Callable[..., Any], recording: Callable[..., Any]) -> None:
    vmm = await fake_vmm(["ok"])
    transport, protocol = await connect(str(vmm.address), recording, FAST)
    try:
        assert protocol.transport is transport
        transport.write(b"ping")
        assert await protocol.wait_for(4) == b"ping"
        assert protocol.events[0] == "made"
    finally:
        transport.close()
    assert await protocol.lost is None


@pytest.mark.parametrize("buffered", [False, True])
async def test_leftover_reaches_protocol_first_and_in_order(
    fake_vmm: Callable[..., Any], recording: Callable[..., Any], buffered: bool
) -> None:
    vmm = await fake_vmm(["burst"])
    vmm.payload = b"A" * 40  # shares the VMM's first write with the OK line
    vmm.burst = b"B" * 200_000
    transport, protocol = await connect(
        vmm.address, lambda: recording(buffered=buffered), FAST
    )
    try:
        data = await protocol.wait_for(200_040)
        assert data == vmm.payload + vmm.burst
        assert protocol.events[0] == "made"
        assert set(protocol.events[1:]) == {"buffer" if buffered else "data"}, protocol.events[:8]
    finally:
        transport.close()


async def test_plain_unix(sock_dir: Path, recording: Callable[..., Any]) -> None:
    path = sock_dir / "agent.sock"

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    async with await asyncio.start_unix_server(greet, path=str(path)):
        transport, protocol = await connect(Address.unix(str(path)), recording, FAST)
        assert await protocol.wait_for(5) == b"hello"
        assert await protocol.lost is None
        assert protocol.events[-2:] == ["eof", "lost"]
        assert transport.is_closing()


async def test_dial_failure_propagates(sock_dir: Path, recording: Callable[..., Any]) -> None:
    policy = DialPolicy(budget=0.01, backoff_initial=1.0)
    made: list[asyncio.Protocol] = []

    def factory() -> asyncio.Protocol:
        made.append(asyncio.Protocol())
        return made[-1]

    with pytest.raises(DialError):
        await connect(Address.unix(str(sock_dir / "absent")), factory, policy)
    assert made == []  # no protocol is built without a connection


async def test_protocol_factory_error_propagates_and_closes(
    fake_vmm: Callable[..., Any], recorder: Any
) -> None:
    vmm = await fake_vmm(["ok"])

    def broken() -> asyncio.Protocol:
        raise LookupError("no protocol for you")

    with pytest.raises(LookupError, match="no protocol for you"):
        await connect(vmm.address, broken, FAST, socket_factory=recorder)
    await vmm.stop()
    assert recorder.sockets and recorder.all_closed()
    # Really closed, not just marked: uvloop pins a socket it was given, so a close() of it
    # only marked it, and the fd was closed again when uvloop let go or the object was
    # collected, after libuv had closed it: by then, perhaps another test's socket.
    assert all(sock.fileno() == -1 for sock in recorder.sockets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert not [w for w in caught if "unclosed <socket" in str(w.message)]


async def test_cancelled_connect_leaks_nothing(fake_vmm: Callable[..., Any], recorder: Any) -> None:
    # Checked through the sockets this connect made: a process-wide fd count is at the
    # mercy of whatever else the loop closes lazily.
    vmm = await fake_vmm(default="silent")
    task = asyncio.create_task(
        connect(vmm.address, asyncio.Protocol, SLOW, socket_factory=recorder)
    )
    # Bounded so that a hang names its await (pytest-timeout cannot interrupt a uvloop
    # blocked in epoll).
    async with asyncio.timeout(30):
        await vmm.connected.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await vmm.stop()
    assert recorder.sockets and recorder.all_closed()


# --- vsock through an injected socketpair --------------------------------------------------


def test_loop_detection() -> None:
    import uvloop

    stdlib, uv = asyncio.new_event_loop(), uvloop.new_event_loop()
    try:
        assert loop_accepts_vsock(stdlib)
        assert not loop_accepts_vsock(uv)
    finally:
        stdlib.close()
        uv.close()


@pytest.mark.parametrize("buffered", [False, True])
async def test_vsock_via_socketpair(recording: Callable[..., Any], buffered: bool) -> None:
    # Never a real AF_VSOCK connect: the factory hands over one end of a socketpair, which
    # dial uses as is. On uvloop this goes through the reader/writer fallback transport.
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    with theirs:
        transport, protocol = await connect(
            "vsock://3:1024", lambda: recording(buffered=buffered), FAST,
            socket_factory=lambda address: ours,
        )
        assert isinstance(transport, SelectorTransport) == (not loop_accepts_vsock(loop))
        transport.write(b"request")
        assert await loop.sock_recv(theirs, 100) == b"request"
        await loop.sock_sendall(theirs, b"reply" * 1000)
        assert await protocol.wait_for(5000) == b"reply" * 1000
        theirs.shutdown(socket.SHUT_WR)
        assert await protocol.lost is None
        assert "eof" in protocol.events
    assert ours.fileno() == -1  # the transport closed our end


async def test_vsock_default_factory_is_af_vsock_on_the_address() -> None:
    # Only inspect the socket the default factory would make; never connect it.
    from agentio.transports import default_socket_factory

    try:
        sock = default_socket_factory(Address.vsock(3, 1024))
    except OSError as exc:
        pytest.skip(f"no AF_VSOCK here: {exc}")
    with sock:
        assert sock.family == socket.AF_VSOCK and not sock.getblocking()
