"""The sans-I/O yamux codec: frames, validation and the per-stream windows."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentio.errors import ConfigError, ConnectionClosed, YamuxError
from agentio.transports.yamux.codec import (
    FLAG_ACK,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Event,
    Frame,
    FrameReader,
    GoAwayReceived,
    Header,
    PingReceived,
    PongReceived,
    StreamAccepted,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
    YamuxConnection,
    decode_header,
    encode_frame,
    encode_header,
)

u32 = st.integers(0, 0xFFFF_FFFF)
frames = st.one_of(
    st.builds(
        lambda flags, sid, payload: Frame(Header(TYPE_DATA, flags, sid, len(payload)), payload),
        st.integers(0, 0xFFFF), u32, st.binary(max_size=300),
    ),
    st.builds(
        lambda t, flags, sid, length: Frame(Header(t, flags, sid, length)),
        st.sampled_from([TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY]),
        st.integers(0, 0xFFFF), u32, u32,
    ),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(frames, max_size=20), st.lists(st.integers(0, 10_000), max_size=10))
def test_frames_round_trip_whatever_the_chunking(batch: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f) for f in batch)
    reader = FrameReader()
    decoded = [f for chunk in chunked(wire, cuts) for f in reader.feed(chunk)]
    assert decoded == batch
    assert reader.buffered == 0


def test_header_layout() -> None:
    assert encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0).hex() == "000100010000000100000000"
    assert decode_header(bytes.fromhex("000200020000000000000007")) == Header(
        TYPE_PING, FLAG_ACK, 0, 7
    )
    with pytest.raises(YamuxError, match="version"):
        decode_header(b"\x01" + bytes(11))
    with pytest.raises(YamuxError, match="type"):
        decode_header(b"\x00\x04" + bytes(10))
    with pytest.raises(ConfigError):
        encode_header(4, 0, 0, 0)
    with pytest.raises(ConfigError):
        encode_header(TYPE_DATA, 0, 1 << 32, 0)
    with pytest.raises(ConfigError):
        encode_frame(Frame(Header(TYPE_DATA, 0, 1, 5), b"abc"))
    with pytest.raises(ConfigError):
        encode_frame(Frame(Header(TYPE_PING, 0, 0, 5), b"abc"))


def test_frame_reader_refuses_oversized_data_before_its_payload() -> None:
    reader = FrameReader(max_payload=10)
    with pytest.raises(YamuxError, match="exceeds"):
        reader.feed(encode_header(TYPE_DATA, 0, 1, 11))


@settings(max_examples=300)
@given(
    st.sampled_from(["client", "server"]),
    st.binary(max_size=400),
    st.lists(st.integers(0, 500), max_size=6),
    st.booleans(),
)
def test_arbitrary_bytes_give_events_or_yamux_error(
    role: str, junk: bytes, cuts: list[int], open_first: bool
) -> None:
    conn = YamuxConnection("client" if role == "client" else "server")
    if open_first:
        conn.open_stream()
    # Bias the input towards plausible headers: version 0 and small types/ids.
    data = bytes(b if i % 12 != 0 else 0 for i, b in enumerate(junk)) if junk[:1] == b"\0" else junk
    try:
        for chunk in chunked(data, cuts):
            for event in conn.receive_data(chunk):
                if isinstance(event, StreamData):
                    conn.acknowledge_received(event.stream_id, len(event.data))
                elif isinstance(event, StreamOpened):
                    conn.accept_stream(event.stream_id)
    except YamuxError:
        with pytest.raises(YamuxError):
            conn.receive_data(b"")  # the error is sticky
    conn.data_to_send()


def pair() -> tuple[YamuxConnection, YamuxConnection, int]:
    client, server = YamuxConnection("client"), YamuxConnection("server")
    sid = client.open_stream()
    assert server.receive_data(client.data_to_send()) == [StreamOpened(sid)]
    server.accept_stream(sid)
    assert client.receive_data(server.data_to_send()) == [StreamAccepted(sid)]
    return client, server, sid


def data_size(events: list[Event]) -> int:
    return sum(len(e.data) for e in events if isinstance(e, StreamData))


def test_send_is_limited_by_the_peer_window_until_an_update() -> None:
    client, server, sid = pair()
    blob = bytes(INITIAL_WINDOW + 1000)
    assert client.send_data(sid, blob) == INITIAL_WINDOW
    assert client.send_data(sid, b"more") == 0
    assert client.send_window(sid) == 0
    events = server.receive_data(client.data_to_send())
    assert data_size(events) == INITIAL_WINDOW
    assert server.recv_window(sid) == 0
    # Acknowledging less than half the window announces nothing yet.
    server.acknowledge_received(sid, INITIAL_WINDOW // 2 - 1)
    assert server.data_to_send() == b""
    server.acknowledge_received(sid, 1)
    update = server.data_to_send()
    assert update == encode_header(TYPE_WINDOW_UPDATE, 0, sid, INITIAL_WINDOW // 2)
    assert client.receive_data(update) == [WindowUpdated(sid, INITIAL_WINDOW // 2)]
    assert client.send_data(sid, blob[INITIAL_WINDOW:]) == 1000
    with pytest.raises(ConfigError):
        server.acknowledge_received(sid, INITIAL_WINDOW)  # more than was received


def test_a_peer_exceeding_the_window_is_refused_at_the_header() -> None:
    client, server, sid = pair()
    server.send_data(sid, bytes(INITIAL_WINDOW))
    client.receive_data(server.data_to_send())
    with pytest.raises(YamuxError, match="receive window") as info:
        client.receive_data(encode_header(TYPE_DATA, 0, sid, 1))  # header only
    assert info.value.go_away_code == GO_AWAY_PROTOCOL_ERROR
    assert client.error is info.value
    with pytest.raises(ConnectionClosed):
        client.open_stream()


def test_a_larger_window_is_announced_in_the_syn() -> None:
    client = YamuxConnection("client", window=1 << 20)
    sid = client.open_stream()
    server = YamuxConnection("server")
    server.receive_data(client.data_to_send())
    assert server.send_window(sid) == 1 << 20


def test_payload_is_handed_out_as_it_arrives() -> None:
    client, server, sid = pair()
    server.send_data(sid, b"abcdef")
    server.close_stream(sid)
    wire = server.data_to_send()
    events = [e for i in range(len(wire)) for e in client.receive_data(wire[i : i + 1])]
    assert b"".join(e.data for e in events if isinstance(e, StreamData)) == b"abcdef"
    assert events[-1] == StreamEnded(sid)


def test_stream_lifecycle_fin_both_ways_forgets_the_stream() -> None:
    client, server, sid = pair()
    client.close_stream(sid)
    assert server.receive_data(client.data_to_send()) == [StreamEnded(sid)]
    with pytest.raises(ConnectionClosed):
        client.send_data(sid, b"x")
    server.send_data(sid, b"late reply")  # half-closed: the other direction still works
    server.close_stream(sid)
    events = client.receive_data(server.data_to_send())
    assert events == [StreamData(sid, b"late reply"), StreamEnded(sid)]
    assert not client.is_open(sid) and not server.is_open(sid)
    # Frames still in flight for a finished stream are dropped, not errors.
    assert client.receive_data(encode_header(TYPE_WINDOW_UPDATE, 0, sid, 10)) == []


def test_data_after_fin_is_an_error() -> None:
    client, server, sid = pair()
    server.close_stream(sid)
    client.receive_data(server.data_to_send())
    with pytest.raises(YamuxError, match="after FIN"):
        client.receive_data(encode_header(TYPE_DATA, 0, sid, 1) + b"x")


def test_reset_both_ways() -> None:
    client, server, sid = pair()
    server.reset_stream(sid)
    assert client.receive_data(server.data_to_send()) == [StreamReset(sid)]
    assert not client.is_open(sid)
    sid2 = client.open_stream()
    server.receive_data(client.data_to_send())
    client.reset_stream(sid2)
    assert client.data_to_send() == encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, sid2, 0)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (encode_header(TYPE_DATA, 0, 9, 1) + b"x", "never opened"),  # odd id we never used
        (encode_header(TYPE_DATA, 0, 4, 0), "never opened"),  # even id the peer never opened
        (encode_header(TYPE_WINDOW_UPDATE, 0, 0, 1), "stream 0"),
        (encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0), "SYN"),  # our parity
        (encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_ACK, 2, 0), "SYN and ACK"),
        (encode_header(TYPE_PING, 0, 0, 1), "Ping"),
        (b"\x00\x09" + bytes(10), "type"),
        (b"\x02" + bytes(11), "version"),
        (encode_header(TYPE_WINDOW_UPDATE, 0, 1, 0xFFFF_FFFF), "overflow"),
    ],
)
def test_violations(wire: bytes, match: str) -> None:
    client, _, _ = pair()
    with pytest.raises(YamuxError, match=match):
        client.receive_data(wire)


def test_client_refuses_peer_streams_and_server_limits_them() -> None:
    client = YamuxConnection("client")
    syn = encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0)
    assert client.receive_data(syn + encode_header(TYPE_DATA, 0, 2, 3) + b"abc") == []
    assert client.data_to_send() == encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, 2, 0)
    with pytest.raises(YamuxError, match="duplicate"):
        client.receive_data(syn)
    server = YamuxConnection("server", max_peer_streams=1)
    events = server.receive_data(
        encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
        + encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0)
    )
    assert events == [StreamOpened(1)]
    assert server.data_to_send() == encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, 3, 0)


def test_pings_and_go_away() -> None:
    client, server, _ = pair()
    assert [client.ping(), client.ping()] == [0, 1]
    assert server.receive_data(client.data_to_send()) == [PingReceived(0), PingReceived(1)]
    assert client.receive_data(server.data_to_send()) == [PongReceived(0), PongReceived(1)]
    server.go_away(GO_AWAY_PROTOCOL_ERROR)
    server.go_away()  # once only
    wire = server.data_to_send()
    assert len(wire) == HEADER_SIZE
    assert client.receive_data(wire) == [GoAwayReceived(GO_AWAY_PROTOCOL_ERROR)]
    with pytest.raises(ConnectionClosed):
        client.open_stream()
    with pytest.raises(ConnectionClosed):
        server.open_stream()


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 70_000)), max_size=40))
def test_random_transfers_arrive_intact(ops: list[tuple[int, int]]) -> None:
    """Interleaved writes on three streams, with acknowledgements: bytes arrive in order."""
    client, server = YamuxConnection("client"), YamuxConnection("server")
    sids = [client.open_stream() for _ in range(3)]
    pending = {sid: bytearray() for sid in sids}
    sent = {sid: bytearray() for sid in sids}
    got = {sid: bytearray() for sid in sids}
    opened: set[int] = set()
    for counter, (index, size) in enumerate(ops):
        sid = sids[index]
        pending[sid] += bytes((counter + i) & 0xFF for i in range(0, size, 997))
        for s in sids:
            taken = client.send_data(s, pending[s])
            sent[s] += pending[s][:taken]
            del pending[s][:taken]
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, StreamOpened):
                server.accept_stream(event.stream_id)
                opened.add(event.stream_id)
            elif isinstance(event, StreamData):
                got[event.stream_id] += event.data
                server.acknowledge_received(event.stream_id, len(event.data))
        client.receive_data(server.data_to_send())
        for s in opened:  # nothing in flight: both ends agree on every window
            assert client.send_window(s) == server.recv_window(s)
    assert got == sent
    for s in opened:
        assert server.recv_window(s) > INITIAL_WINDOW // 2 - 1
