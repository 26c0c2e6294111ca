"""Generated: betterproto2 message classes and grpclib stubs compiled from protos/.

Nothing under this package is edited by hand; regenerate with `make protos`
(protos/generate.py). One subpackage per API generation, each with its own message pool:
`agentio.proto.kata` (Kata 2.x-4.x, ttrpc); `agentio.proto.kata1` (Kata 1.x, gRPC) is
reserved for the older API.
"""
