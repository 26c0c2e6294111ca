"""ttrpc, the Kata 2.x+ agent protocol (layer: protocols): codec, client and server.

Layer: protocols. :mod:`.codec` is sans-I/O; :mod:`.client` and :mod:`.server` are thin
asyncio layers over it.
"""

from .client import Connector, TtrpcClient, TtrpcConnection
from .codec import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    TYPE_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    FrameEvent,
    OversizedFrame,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_frame,
    encode_request,
    encode_response,
)
from .server import Handler, ServerCall, TtrpcServer

__all__ = [
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "TYPE_DATA",
    "TYPE_REQUEST",
    "TYPE_RESPONSE",
    "Connector",
    "Frame",
    "FrameDecoder",
    "FrameEvent",
    "Handler",
    "OversizedFrame",
    "Request",
    "Response",
    "ServerCall",
    "TtrpcClient",
    "TtrpcConnection",
    "TtrpcServer",
    "decode_request",
    "decode_response",
    "encode_frame",
    "encode_request",
    "encode_response",
]
