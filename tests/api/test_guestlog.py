"""Guest logs: the line parser (hypothesis), level mapping, following a local log port."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentio.guestlog import TRACE, GuestLog, GuestLogRecord, LogLineParser, level_of, parse_line
from agentio.localagent.logport import LocalLogPort


def _feed_in_pieces(parser: LogLineParser, data: bytes, cuts: list[int]) -> list[GuestLogRecord]:
    records: list[GuestLogRecord] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        records += parser.feed(data[start:cut])
        start = cut
    return records + parser.finish()


@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=12),
       st.integers(min_value=1, max_value=80))
def test_any_bytes_in_any_pieces_give_the_same_bounded_records(
        data: bytes, cuts: list[int], max_line: int) -> None:
    whole = LogLineParser(max_line=max_line)
    expected = whole.feed(data) + whole.finish()
    assert _feed_in_pieces(LogLineParser(max_line=max_line), data, cuts) == expected
    for record in expected:
        assert len(record.message.encode("utf-8", errors="replace")) <= 3 * max_line


@given(st.lists(st.dictionaries(st.sampled_from(["msg", "level", "ts", "subsystem", "pid"]),
                                st.text(max_size=20)), max_size=8),
       st.lists(st.integers(min_value=0), max_size=8))
def test_json_lines_come_back_as_sent(objects: list[dict[str, str]], cuts: list[int]) -> None:
    data = b"".join(json.dumps(obj).encode() + b"\n" for obj in objects)
    records = _feed_in_pieces(LogLineParser(), data, cuts)
    assert len(records) == len(objects)
    for obj, record in zip(objects, records, strict=True):
        assert record.message == obj.get("msg", "")
        assert record.level == level_of(obj.get("level"))
        assert dict(record.fields) == {k: v for k, v in obj.items() if k not in ("msg", "level")}
        assert not record.raw and not record.truncated


def test_long_lines_are_cut_and_the_rest_skipped() -> None:
    parser = LogLineParser(max_line=10)
    records = parser.feed(b"0123456789ABCDEF")
    records += parser.feed(b"GHIJ\nshort\n")
    assert [(r.message, r.truncated) for r in records] == [("0123456789", True),
                                                           ("short", False)]


@pytest.mark.parametrize(("name", "level"), [
    ("TRCE", TRACE), ("trace", TRACE), ("DEBG", logging.DEBUG), ("debug", logging.DEBUG),
    ("INFO", logging.INFO), ("WARN", logging.WARNING), ("warning", logging.WARNING),
    ("ERRO", logging.ERROR), ("error", logging.ERROR), ("CRIT", logging.CRITICAL),
    ("fatal", logging.CRITICAL), ("panic", logging.CRITICAL), ("weird", logging.INFO),
    (7, logging.INFO),
])
def test_agent_levels_map_onto_logging(name: object, level: int) -> None:
    assert level_of(name) == level


def test_text_lines_and_odd_json_are_passed_on_as_text() -> None:
    assert parse_line(b"plain kernel text") == GuestLogRecord(logging.INFO, "plain kernel text",
                                                              raw=True)
    assert parse_line(b"[1, 2]").raw
    record = parse_line(b'{"msg": {"nested": 1}, "level": "ERRO", "n": 3}')
    assert (record.message, record.level, dict(record.fields)) == (
        '{"nested": 1}', logging.ERROR, {"n": "3"})


async def test_following_a_log_port_until_the_guest_closes_it_mid_line(
        sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(TRACE, logger="agentio.guest")
    async with LocalLogPort(sock_dir / "log.sock") as port:
        seen: list[GuestLogRecord] = []
        guest_log = GuestLog(port.address, sandbox_id="sb-log", on_record=seen.append)
        await guest_log.start()
        await port.wait_readers()
        port.emit(logging.WARNING, "disk almost full", subsystem="storage")
        port.emit(logging.DEBUG, "rpc CreateContainer", subsystem="rpc")
        port.write_raw(b'{"msg": "cut off in the mid')  # and the guest goes away
        await port.close()
        async with asyncio.timeout(10):
            await guest_log.wait_closed()
        await guest_log.close()
    assert [(r.message, r.level, r.truncated) for r in seen] == [
        ("log reader connected", logging.INFO, False),
        ("disk almost full", logging.WARNING, False),
        ("rpc CreateContainer", logging.DEBUG, False),
        ('{"msg": "cut off in the mid', logging.INFO, True)]
    assert seen[1].fields["subsystem"] == "storage"
    ours = [r for r in caplog.records if r.name == "agentio.guest.sb-log"]
    assert [(r.levelno, r.getMessage()) for r in ours] == [(r.level, r.message) for r in seen]
    assert ours[1].__dict__["guest"]["subsystem"] == "storage"
    assert guest_log.lines == 4


async def test_close_stops_following_a_guest_that_stays(sock_dir: Path) -> None:
    greeted = asyncio.Event()
    async with LocalLogPort(sock_dir / "log.sock") as port:
        async with GuestLog(port.address, sandbox_id="sb",
                            on_record=lambda record: greeted.set()) as guest_log:
            async with asyncio.timeout(10):
                await greeted.wait()
        port.emit(logging.ERROR, "nobody reads this")
        async with asyncio.timeout(10):
            await guest_log.wait_closed()  # already: close() waited for it
        assert guest_log.lines == 1
