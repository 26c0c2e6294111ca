"""Fixtures for the fault cases: local agents, fault proxies, ttrpc clients, leak checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agentio.localagent import LocalAgent
from agentio.protocols.ttrpc import TtrpcClient
from agentio.protocols.ttrpc.client import ProtocolFactory
from agentio.testing import FaultProxy, LeakCheck
from agentio.transports.connect import connect

ProxyFactory = Callable[..., Awaitable[FaultProxy]]
ClientFactory = Callable[[str], TtrpcClient]


@pytest.fixture
async def local_agent(sock_dir: Path) -> AsyncIterator[LocalAgent]:
    async with LocalAgent(sock_dir / "agents", drain_timeout=1.0) as local:
        yield local


@pytest.fixture
async def make_proxy(sock_dir: Path) -> AsyncIterator[ProxyFactory]:
    """Start fault proxies in front of an upstream address; all closed at teardown."""
    proxies: list[FaultProxy] = []

    async def make(upstream: str, **kwargs: object) -> FaultProxy:
        name = f"proxy-{len(proxies)}.sock"
        proxy = FaultProxy(upstream, sock_dir, name=name, **kwargs)  # type: ignore[arg-type]
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()


@pytest.fixture
async def ttrpc_client() -> AsyncIterator[ClientFactory]:
    """``make(address)``: a TtrpcClient dialling ``address`` with the library's connect()."""
    clients: list[TtrpcClient] = []

    def make(address: str) -> TtrpcClient:
        async def connector(factory: ProtocolFactory) -> tuple[asyncio.BaseTransport,
                                                               asyncio.BaseProtocol]:
            return await connect(address, factory)

        client = TtrpcClient(connector)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def leak_check() -> AsyncIterator[LeakCheck]:
    """A snapshot of descriptors and tasks at the start of the test (after the fixtures
    requested before it); the test calls ``await leak_check.assert_clean()`` when done."""
    yield LeakCheck.start()
