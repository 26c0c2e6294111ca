"""yamux: the stream multiplexer the Kata 1.x agent runs on its serial channel.

Layer: transports. :mod:`~agentio.transports.yamux.codec` is the sans-I/O frame codec and
session state machine; :mod:`~agentio.transports.yamux.session` runs it on an asyncio
transport and exposes each stream as an :class:`asyncio.Transport`.
"""

from agentio.transports.yamux.codec import (
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    INITIAL_WINDOW,
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

__all__ = [
    "GO_AWAY_INTERNAL_ERROR",
    "GO_AWAY_NORMAL",
    "GO_AWAY_PROTOCOL_ERROR",
    "INITIAL_WINDOW",
    "Event",
    "Frame",
    "FrameReader",
    "GoAwayReceived",
    "Header",
    "PingReceived",
    "PongReceived",
    "StreamAccepted",
    "StreamData",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "WindowUpdated",
    "YamuxConnection",
    "decode_header",
    "encode_frame",
    "encode_header",
]
