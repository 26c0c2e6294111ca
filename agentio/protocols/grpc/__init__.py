"""gRPC, the Kata 1.x agent protocol (layer: protocols): grpclib over our own transports.

Layer: protocols. :class:`GrpcClient` makes raw-bytes unary calls on an HTTP/2 connection
that an injected connector opens (unix, vsock, hybrid vsock, or a yamux stream), and offers
the same ``call``/``close`` shape as the ttrpc client, so one agent adapter can sit on either.
"""

from .client import Connector, GrpcClient, RawCodec

__all__ = ["Connector", "GrpcClient", "RawCodec"]
