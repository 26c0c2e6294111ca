"""The asyncio hyperstart client against a scripted guest on unix sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentio import errors
from agentio.protocols.hyperstart import codec, messages
from agentio.protocols.hyperstart.client import HyperstartClient
from agentio.protocols.hyperstart.codec import Code, CtlDecoder
from agentio.transports import DialPolicy, connect

POLICY = DialPolicy(budget=2.0, attempt_timeout=1.0)


class Guest:
    """Both channels of a fake guest; the test writes what the guest says."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ctl: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.get_running_loop().create_future()
        self.tty: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.get_running_loop().create_future()
        self.servers: list[asyncio.Server] = []
        self.decoder = CtlDecoder()
        self.pending: list[codec.CtlFrame] = []

    async def start(self) -> None:
        for name, future in (("ctl", self.ctl), ("tty", self.tty)):
            async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                              f: Any = future) -> None:
                f.set_result((r, w))
            self.servers.append(await asyncio.start_unix_server(
                handler, path=str(self.directory / name)))

    def client(self, **kwargs: Any) -> HyperstartClient:
        def dial(name: str) -> Any:
            return lambda factory: connect(f"unix://{self.directory / name}", factory, POLICY)
        return HyperstartClient(dial("ctl"), dial("tty"), **kwargs)

    async def say(self, code: int, payload: bytes = b"") -> None:
        _, writer = await self.ctl
        writer.write(codec.encode_ctl(code, payload))

    async def tty_say(self, seq: int, payload: bytes = b"") -> None:
        _, writer = await self.tty
        writer.write(codec.encode_tty(seq, payload, max_frame=1 << 20))

    async def command(self) -> codec.CtlFrame:
        reader, _ = await self.ctl
        while not self.pending:
            data = await reader.read(65536)
            assert data, "host closed ctl"
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def close(self) -> None:
        for future in (self.ctl, self.tty):
            if future.done():
                future.result()[1].close()
        for server in self.servers:
            server.close()


@pytest.fixture
async def guest(sock_dir: Path) -> AsyncIterator[Guest]:
    g = Guest(sock_dir)
    await g.start()
    yield g
    await g.close()


async def _connected(guest: Guest, **kwargs: Any) -> HyperstartClient:
    client = guest.client(**kwargs)
    connecting = asyncio.create_task(client.connect(timeout=2))
    await guest.say(Code.READY)
    assert (await guest.command()).code == Code.VERSION
    await guest.say(Code.ACK, codec.encode_u32(4244))
    assert await connecting == 4244
    return client


async def test_ready_wait_is_bounded(guest: Guest) -> None:
    client = guest.client(ready_timeout=0.05)
    with pytest.raises(errors.AgentTimeout, match="READY"):
        await client.connect()
    assert not client.is_open


@pytest.mark.parametrize("api", [4242, 4245, 0, 2**32 - 1])
async def test_unsupported_api_version_is_refused(guest: Guest, api: int) -> None:
    client = guest.client()
    connecting = asyncio.create_task(client.connect(timeout=2))
    await guest.say(Code.READY)
    await guest.command()
    await guest.say(Code.ACK, codec.encode_u32(api))
    with pytest.raises(errors.UnsupportedOperation, match=f"{api}.*4243, 4244"):
        await connecting
    assert not client.is_open


async def test_the_older_api_4243_is_served(guest: Guest) -> None:
    client = guest.client()
    connecting = asyncio.create_task(client.connect(timeout=2))
    await guest.say(Code.READY)
    assert (await guest.command()).code == Code.VERSION
    await guest.say(Code.ACK, codec.encode_u32(4243))
    try:
        assert await connecting == 4243 and client.api_version == 4243
        assert client.is_open
    finally:
        client.close()


async def test_error_reply_and_late_reply_after_a_timeout(guest: Guest) -> None:
    client = await _connected(guest)
    try:
        call = asyncio.create_task(client.call(messages.kill_container("x", 9), timeout=2))
        assert (await guest.command()).code == Code.KILLCONTAINER
        await guest.say(Code.NEXT, codec.encode_u32(8))
        await guest.say(Code.ERROR, b"no such container\0")
        with pytest.raises(errors.RpcError) as info:
            await call
        assert info.value.message == "no such container"
        assert info.value.operation == "KILLCONTAINER"

        with pytest.raises(errors.AgentTimeout):
            await client.call(messages.ping(), timeout=0.05)
        # the PING is still outstanding: the next command waits for its reply first
        second = asyncio.create_task(client.call(messages.read_file("c", "/f"), timeout=2))
        assert (await guest.command()).code == Code.PING
        await guest.say(Code.ACK)
        assert (await guest.command()).code == Code.READFILE
        await guest.say(Code.ACK, b"body")
        assert await second == b"body"
    finally:
        client.close()


async def test_guest_protocol_violation_fails_everything(guest: Guest) -> None:
    client = await _connected(guest)
    io = client.register("c", "p", *client.allocate_seqs(terminal=False))
    await guest.tty_say(io.stdio, b"partial")
    await guest.say(Code.ACK)  # nothing outstanding
    with pytest.raises(errors.ProtocolError):
        await io.wait(1.0)
    assert await io.read("stdout", 100) == b"partial"  # what did arrive is kept
    with pytest.raises(errors.ProtocolError):
        await io.read("stdout", 100)
    with pytest.raises(errors.ProtocolError):
        await client.call(messages.ping(), timeout=1)


async def test_exit_event_before_end_frame_and_stderr_end(guest: Guest) -> None:
    client = await _connected(guest)
    try:
        stdio, stderr = client.allocate_seqs(terminal=False)
        io = client.register("c1", "e6", stdio, stderr)
        await guest.tty_say(stderr, b"err")
        await guest.say(Code.PROCESSASYNCEVENT, json.dumps(
            {"container": "c1", "process": "e6", "event": "finished", "status": 0}).encode())
        waiting = asyncio.create_task(io.wait(5.0))
        await guest.tty_say(stdio, b"out")
        await guest.tty_say(stdio)  # the end frame comes after the event here
        assert await waiting == 0
        assert await io.read("stdout", 10) == b"out"
        assert await io.read("stdout", 10) == b""
        assert await io.read("stderr", 10) == b"err"
        assert await io.read("stderr", 10) == b""
        assert client.find("c1", "e6") is None  # consumed and forgotten
        assert client.recently_finished("c1", "e6")
    finally:
        client.close()


async def test_output_that_never_ends_is_cut_after_the_drain_timeout(guest: Guest) -> None:
    client = await _connected(guest)
    try:
        io = client.register("c", "p", *client.allocate_seqs(terminal=True))
        await guest.tty_say(io.stdio, b"bg")
        await guest.say(Code.PROCESSASYNCEVENT, json.dumps(
            {"container": "c", "process": "p", "event": "finished", "status": 7}).encode())
        assert await io.wait(0.05) == 7
        assert await io.read("stdout", 10) == b"bg"
        with pytest.raises(errors.OutputIncomplete):
            await io.read("stdout", 10)
    finally:
        client.close()


async def test_a_full_buffer_pauses_the_tty_channel(guest: Guest) -> None:
    client = await _connected(guest, output_buffer=1000)
    try:
        io = client.register("c", "p", *client.allocate_seqs(terminal=False))
        for _ in range(10):
            await guest.tty_say(io.stdio, b"x" * 1000)
        await guest.tty_say(io.stdio)
        total = 0
        while data := await io.read("stdout", 300):
            assert len(io.stdout.buffer) < 1000 + 65536  # one socket read past the limit
            total += len(data)
        assert total == 10_000
    finally:
        client.close()


async def test_destroypod_answered_by_closing(guest: Guest) -> None:
    client = await _connected(guest)
    call = asyncio.create_task(client.call(messages.destroy_pod(), timeout=2))
    assert (await guest.command()).code == Code.DESTROYPOD
    (await guest.ctl)[1].close()
    assert await call == b""
    assert not client.is_open


async def test_stdin_frames_stay_within_512_bytes(guest: Guest) -> None:
    client = await _connected(guest)
    try:
        io = client.register("c", "p", *client.allocate_seqs(terminal=False))
        assert await client.write_stdin(io, bytes(range(256)) * 8) == 2048
        await client.close_stdin(io)
        reader, _ = await guest.tty
        decoder = codec.TtyDecoder()
        frames: list[codec.TtyFrame] = []
        while len(frames) < 5:
            frames.extend(decoder.feed(await reader.read(65536)))
        assert [len(f.payload) for f in frames] == [512, 512, 512, 512, 0]
        assert b"".join(f.payload for f in frames) == bytes(range(256)) * 8
    finally:
        client.close()
