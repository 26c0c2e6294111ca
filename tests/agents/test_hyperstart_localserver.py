"""The local hyperstart answers the recorded sessions the way the real agent did."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentio.localagent.hyperstart import LocalHyperstart
from agentio.protocols.hyperstart import codec
from agentio.protocols.hyperstart.codec import Code, CtlDecoder, TtyDecoder

Line = dict[str, Any]


@pytest.fixture
async def local(sock_dir: Path) -> AsyncIterator[LocalHyperstart]:
    async with LocalHyperstart(sock_dir / "hs", drain_timeout=2.0) as server:
        yield server


class Peer:
    """A raw host: both channels, frames decoded as they come."""

    def __init__(self) -> None:
        self.ctl_frames: asyncio.Queue[codec.CtlFrame | None] = asyncio.Queue()
        self.tty: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.events: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.changed = asyncio.Event()

    async def until(self, condition: Any) -> None:
        """Wait (bounded) until ``condition()`` holds; re-checked whenever a frame arrives."""
        async with asyncio.timeout(10):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def open(self, ctl: str, tty: str) -> None:
        self.cr, self.cw = await asyncio.open_unix_connection(ctl.removeprefix("unix://"))
        self.tr, self.tw = await asyncio.open_unix_connection(tty.removeprefix("unix://"))
        self.tasks = [asyncio.create_task(self._read_ctl()), asyncio.create_task(self._read_tty())]

    async def _read_ctl(self) -> None:
        decoder = CtlDecoder()
        while data := await self.cr.read(65536):
            self.changed.set()
            for frame in decoder.feed(data):
                if frame.code == Code.PROCESSASYNCEVENT:
                    self.events.append(json.loads(frame.payload))
                elif frame.code != Code.NEXT:
                    self.ctl_frames.put_nowait(frame)
        self.ctl_frames.put_nowait(None)

    async def _read_tty(self) -> None:
        decoder = TtyDecoder()
        while data := await self.tr.read(65536):
            self.changed.set()
            for seq, payload in decoder.feed(data):
                if payload:
                    self.tty.setdefault(seq, bytearray()).extend(payload)
                else:
                    self.ended.add(seq)

    async def reply(self) -> codec.CtlFrame | None:
        return await asyncio.wait_for(self.ctl_frames.get(), 10)

    async def close(self) -> None:
        self.cw.close()
        self.tw.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _lines(vectors_dir: Path, name: str) -> list[Line]:
    path = vectors_dir / "hyperstart" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _replay(local: LocalHyperstart, lines: list[Line]) -> tuple[Peer, list[bool | None]]:
    """Send the host's frames in order; the guest's replies (ACK True, ERROR False, None if
    it closed instead), one per ctl command, next to the recorded ones."""
    peer = Peer()
    await peer.open(*await local.serve())
    ready = await peer.reply()
    assert ready is not None and ready.code == Code.READY
    ours: list[bool | None] = []
    finished = 0
    for line in lines:
        if line.get("code") == Code.PROCESSASYNCEVENT and line["dir"] == "in":
            finished += 1
        if line.get("dir") != "out":
            continue
        # the exits the real guest had reported by now have been reported here too
        await peer.until(lambda n=finished: len(peer.events) >= n)
        payload = line["payload"].encode("latin-1")
        if line["ch"] == "tty":
            peer.tw.write(codec.encode_tty(line["seq"], payload, max_frame=1 << 20))
            await peer.tw.drain()
            continue
        peer.cw.write(codec.encode_ctl(line["code"], payload))
        frame = await peer.reply()
        ours.append(None if frame is None else frame.code == Code.ACK)
        if frame is None:
            break
        if line["code"] == Code.READFILE and frame.code == Code.ACK:
            assert frame.payload == b"file-body\n"
        if line["code"] == Code.VERSION:
            assert frame.payload == codec.encode_u32(4244)
    return peer, ours


def _recorded(lines: list[Line]) -> list[bool | None]:
    replies: list[bool | None] = []
    waiting = False
    for line in lines:
        if line.get("event") == "closed" and line["ch"] == "ctl" and waiting:
            replies.append(None)
            waiting = False
        if line.get("ch") != "ctl" or "code" not in line:
            continue
        if line["dir"] == "out":
            waiting = True
        elif line["code"] in (Code.ACK, Code.ERROR) and waiting:
            replies.append(line["code"] == Code.ACK)
            waiting = False
    return replies


async def test_full_session_replies_like_the_real_agent(local: LocalHyperstart,
                                                        vectors_dir: Path) -> None:
    lines = _lines(vectors_dir, "session-full")
    peer, ours = await _replay(local, lines)
    try:
        assert ours == _recorded(lines)
        assert await peer.reply() is None  # DESTROYPOD: the guest powered off
        statuses = {(e["container"], e["process"]): e["status"] for e in peer.events}
        assert statuses[("c1", "e1")] == 0
        assert statuses[("c1", "e2")] == 3
        assert statuses[("c1", "e3")] == 127
        assert statuses[("c1", "e6")] == 0  # killed by SIGTERM: reported as 0
        assert statuses[("c1", "init")] == 0
        assert statuses[("k1", "(null)")] == 0
        assert bytes(peer.tty[3]) == b"hi\n"
        assert bytes(peer.tty[5]) == b"out\n" and bytes(peer.tty[6]) == b"err\n"
        assert bytes(peer.tty[8]) == b"exec failed: No such file or directory\n"
        assert bytes(peer.tty[9]) == b"hello stdin\n"
        # the recorded command runs `stty size` at once, racing the WINSIZE sent after the
        # EXECCMD: only the shape is certain here (tests/api/test_hyperstart_sandbox.py
        # test_tty_with_resize orders the resize before the read)
        assert re.fullmatch(rb"/dev/pts/\d+\r\n(0 0|40 100)\r\ntty-ok\r\n", peer.tty[11])
        assert {3, 5, 7, 9, 11}.issubset(peer.ended)
    finally:
        await peer.close()


async def test_error_session_replies_like_the_real_agent(local: LocalHyperstart,
                                                         vectors_dir: Path) -> None:
    lines = _lines(vectors_dir, "session-errors")
    peer, ours = await _replay(local, lines)
    try:
        assert ours == _recorded(lines)
        assert await peer.reply() is None  # the bad share directory powered the guest off
    finally:
        await peer.close()


async def test_reconnect_gets_no_second_ready(local: LocalHyperstart) -> None:
    ctl, tty = await local.serve()
    first = Peer()
    await first.open(ctl, tty)
    assert (await first.reply()) == (Code.READY, b"")
    await first.close()
    second = Peer()
    await second.open(ctl, tty)
    try:
        second.cw.write(codec.encode_ctl(Code.PING))
        assert (await second.reply()) == (Code.ACK, b"")  # no READY first
    finally:
        await second.close()


async def test_bulk_output_stdin_cut_and_oversized_frame(local: LocalHyperstart) -> None:
    peer = Peer()
    await peer.open(*await local.serve())
    try:
        assert (await peer.reply()).code == Code.READY  # type: ignore[union-attr]
        peer.cw.write(codec.encode_ctl(Code.EXECCMD, json.dumps({"container": "hyperstart",
            "process": {"id": "big", "args": ["head", "-c", "100000", "/dev/zero"],
                        "stdio": 5, "stderr": 6}}).encode()))
        assert (await peer.reply()).code == Code.ACK  # type: ignore[union-attr]
        peer.cw.write(codec.encode_ctl(Code.EXECCMD, json.dumps({"container": "hyperstart",
            "process": {"id": "cat", "args": ["cat"], "stdio": 7, "stderr": 8}}).encode()))
        assert (await peer.reply()).code == Code.ACK  # type: ignore[union-attr]
        peer.tw.write(codec.encode_tty(7, b"B" * 2000, max_frame=1 << 20) + codec.encode_tty(7))
        peer.tw.write(codec.encode_tty(777, b"hello?"))
        await peer.until(lambda: {5, 7, 777} <= peer.ended)
        assert bytes(peer.tty[5]) == bytes(100000)
        assert bytes(peer.tty[7]) == b"B" * 512  # the rest of the frame is dropped
        peer.tw.write(codec.encode_tty(9, b"A" * 4085, max_frame=1 << 20))  # panics a real guest
        assert await peer.reply() is None
    finally:
        await peer.close()
