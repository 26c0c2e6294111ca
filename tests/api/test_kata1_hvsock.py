"""Kata 1.x over hybrid vsock: the VMM's CONNECT handshake, then gRPC straight on the socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import agentio
from agentio.localagent.generations import KATA1
from agentio.localagent.service import KataService
from agentio.protocols.grpc.server import GrpcServer


class FakeVMM(asyncio.Protocol):
    """Answers ``CONNECT 1024`` with ``OK``, then hands the socket to an HTTP/2 server."""

    def __init__(self, server: GrpcServer, ports: list[int]) -> None:
        self._server = server
        self._ports = ports
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\n" not in self._buffer:
            return
        line, rest = self._buffer.split(b"\n", 1)
        verb, port = line.split()
        assert verb == b"CONNECT"
        self._ports.append(int(port))
        self._transport.write(b"OK 1073741824\n")
        h2 = self._server.make_protocol()  # from here on the socket is the agent's
        self._transport.set_protocol(h2)
        h2.connection_made(self._transport)
        if rest:
            h2.data_received(rest)


async def test_kata1_over_hybrid_vsock_without_yamux(sock_dir: Path) -> None:
    server = GrpcServer()
    service = KataService(guest_root=sock_dir, eof_style="unknown", drain_timeout=1.0)
    service.register(server, KATA1)
    ports: list[int] = []
    path = sock_dir / "vmm.sock"
    listener = await asyncio.get_running_loop().create_unix_server(
        lambda: FakeVMM(server, ports), str(path))
    try:
        async with await agentio.Sandbox.create(f"hvsock://{path}:1024",
                                                agent_type="kata1") as sandbox:
            container = await sandbox.create_container()
            await container.start()
            proc = await container.exec(["sh", "-c", "cat; echo err >&2"])
            assert await proc.communicate(b"over hvsock\n") == (b"over hvsock\n", b"err\n")
            assert proc.returncode == 0
        assert ports == [1024]  # one connection: the direct HTTP/2 one, no yamux session
    finally:
        await server.close()
        await service.close()
        listener.close()
        await listener.wait_closed()
