"""The hybrid-vsock handshake core, without sockets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentio.errors import ConfigError, HandshakeError
from agentio.transports import HandshakeClosed, HybridVsockHandshake


def feed(handshake: HybridVsockHandshake, chunks: list[bytes]) -> int | None:
    result = None
    for chunk in chunks:
        result = handshake.receive(chunk)
    return result


def test_request_bytes() -> None:
    assert HybridVsockHandshake(1024).request() == b"CONNECT 1024\n"
    assert HybridVsockHandshake(0).request() == b"CONNECT 0\n"


def test_ok_reply_gives_host_port_and_leftover() -> None:
    handshake = HybridVsockHandshake(1024)
    assert handshake.receive(b"OK 1073741824\n\x00\x00\x00\x10rest") == 1073741824
    assert handshake.done
    assert handshake.host_port == 1073741824
    assert handshake.leftover == b"\x00\x00\x00\x10rest"


def test_reply_split_byte_by_byte() -> None:
    handshake = HybridVsockHandshake(1024)
    reply = b"OK 5\n"
    assert [handshake.receive(reply[i : i + 1]) for i in range(len(reply))] == [None] * 4 + [5]
    assert handshake.leftover == b""


@pytest.mark.parametrize(
    "reply",
    [
        b"NO 1\n",
        b"ok 1\n",
        b"OK\n",
        b"OK \n",
        b"OK 1 \n",
        b"OK -1\n",
        b"OK 1\r\n",
        b"OK  1\n",
        b"OK 4294967296\n",
        b"OK 12345678901\n",
        b"\n",
        b"CONNECT 1024\n",
        b"HTTP/1.1 400 Bad Request\r\n",
    ],
)
def test_bad_replies_are_rejected(reply: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        HybridVsockHandshake(1024).receive(reply)
    assert not isinstance(info.value, HandshakeClosed)
    assert "bad reply to CONNECT 1024" in str(info.value)


def test_garbage_is_rejected_before_the_newline() -> None:
    # No need to wait for a newline (or a timeout) once the prefix cannot be a reply.
    with pytest.raises(HandshakeError, match="bad reply"):
        HybridVsockHandshake(1024).receive(b"HTTP")


def test_endless_line_is_bounded() -> None:
    handshake = HybridVsockHandshake(1024, max_line=16)
    assert handshake.receive(b"OK 1") is None
    with pytest.raises(HandshakeError, match="longer than 16 bytes") as info:
        handshake.receive(b"1" * 1_000_000)
    assert len(str(info.value)) < 200
    assert len(handshake._buffer) <= 16


def test_line_exactly_at_the_limit_is_accepted() -> None:
    reply = b"OK 4294967295\n"
    assert HybridVsockHandshake(1, max_line=len(reply)).receive(reply) == 4294967295
    with pytest.raises(HandshakeError, match="longer than"):
        HybridVsockHandshake(1, max_line=len(reply) - 1).receive(reply)


def test_close_before_reply_is_retryable_kind() -> None:
    handshake = HybridVsockHandshake(1024)
    handshake.receive(b"OK 12")
    with pytest.raises(HandshakeClosed, match="closed the connection after CONNECT 1024"):
        handshake.receive(b"")


def test_receive_after_finish_is_an_error() -> None:
    handshake = HybridVsockHandshake(7)
    handshake.receive(b"OK 1\n")
    with pytest.raises(HandshakeError, match="already finished"):
        handshake.receive(b"more")


def test_quoting_escapes_control_bytes() -> None:
    with pytest.raises(HandshakeError) as info:
        HybridVsockHandshake(1).receive(b"\x1b[2J\n")
    assert "\\x1b" in str(info.value)
    assert "\x1b" not in str(info.value)


@pytest.mark.parametrize(("port", "max_line"), [(-1, 64), (2**32, 64), (True, 64), (1, 4)])
def test_bad_construction(port: int, max_line: int) -> None:
    with pytest.raises(ConfigError):
        HybridVsockHandshake(port, max_line=max_line)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@given(st.data(), st.integers(0, 2**32 - 1), st.binary(max_size=100))
def test_valid_reply_any_chunking(data: st.DataObject, host_port: int, rest: bytes) -> None:
    wire = b"OK %d\n" % host_port + rest
    chunks = data.draw(chunked(wire))
    handshake = HybridVsockHandshake(1024)
    results = []
    for chunk in chunks:
        results.append(handshake.receive(chunk))
        if handshake.done:
            break
    assert results[-1] == host_port
    consumed = b"".join(chunks[: len(results)])
    assert handshake.leftover == consumed[len(b"OK %d\n" % host_port) :]
    assert b"".join(chunks)[len(consumed) - len(handshake.leftover) :] == rest


@given(st.lists(st.binary(max_size=80), max_size=6), st.integers(5, 80))
def test_arbitrary_bytes_give_result_or_handshake_error(chunks: list[bytes], max_line: int) -> None:
    handshake = HybridVsockHandshake(1024, max_line=max_line)
    try:
        for chunk in chunks:
            if handshake.receive(chunk) is not None:
                break
    except HandshakeError:
        assert not handshake.done
    else:
        if handshake.done:
            assert handshake.host_port is not None and 0 <= handshake.host_port < 2**32
    assert len(handshake._buffer) <= max_line
