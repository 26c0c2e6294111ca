"""The measurements (layer: tools): call rates, stdio throughput, exec latency, memory.

Layer: tools. Every measurement runs in the caller's event loop, warms up first, then counts
over a fixed wall-clock window while reading the client's own CPU time
(:func:`time.process_time`) and, when given, the serving child's CPU time. Results are plain
dataclasses; :mod:`bench.report` prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentio import Sandbox, open_agent
from agentio.agents import Agent
from agentio.proto.kata import grpc as pb
from agentio.protocols.grpc import GrpcClient
from agentio.protocols.ttrpc import TtrpcClient
from agentio.protocols.ttrpc.codec import encode_request
from agentio.transports import connect, parse_address
from agentio.transports.yamux.dialer import YamuxDialer

from .children import Child
from .echo import EchoClient

MIB = 1 << 20
HEALTH = "grpc.Health"
CALL_TIMEOUT = 60.0  # what KataAgent uses by default: the raw level pays for the same timer

Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class RatePoint:
    """Calls completed over one connection at one concurrency, with the CPU they cost."""

    level: str
    concurrency: int
    calls: int
    seconds: float
    client_cpu: float
    server_cpu: float | None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    @property
    def client_us_per_call(self) -> float:
        return self.client_cpu / self.calls * 1e6

    @property
    def server_us_per_call(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu / self.calls * 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level, "concurrency": self.concurrency, "calls": self.calls,
            "seconds": self.seconds, "calls_per_s": self.calls_per_s,
            "client_us_per_call": self.client_us_per_call,
            "server_us_per_call": self.server_us_per_call,
        }


@dataclass(frozen=True)
class StdioResult:
    """``cat`` round trips: bytes written to stdin and read back from stdout."""

    rounds: int
    bytes_per_round: int
    seconds: float
    client_cpu: float

    @property
    def bytes_per_s(self) -> float:
        return self.rounds * self.bytes_per_round / self.seconds

    @property
    def client_cpu_ms_per_mib(self) -> float:
        return self.client_cpu / (self.rounds * self.bytes_per_round / MIB) * 1e3

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds, "bytes_per_round": self.bytes_per_round,
            "seconds": self.seconds, "bytes_per_s": self.bytes_per_s,
            "mib_per_s": self.bytes_per_s / MIB,
            "client_cpu_ms_per_mib": self.client_cpu_ms_per_mib,
        }


@dataclass(frozen=True)
class ExecResult:
    """Latencies (seconds) of exec create + start → exit status, for ``true``."""

    latencies: tuple[float, ...]

    @property
    def p50(self) -> float:
        return _percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return _percentile(self.latencies, 99)

    def as_dict(self) -> dict[str, Any]:
        return {"count": len(self.latencies), "p50_ms": self.p50 * 1e3,
                "p99_ms": self.p99 * 1e3, "mean_ms": statistics.fmean(self.latencies) * 1e3}


@dataclass(frozen=True)
class MemoryResult:
    """Resident memory added by idle connected agent clients."""

    clients: int
    sockets: int
    rss_before: int
    rss_after: int

    @property
    def bytes_per_client(self) -> float:
        return (self.rss_after - self.rss_before) / self.clients

    def as_dict(self) -> dict[str, Any]:
        return {"clients": self.clients, "sockets": self.sockets,
                "rss_before": self.rss_before, "rss_after": self.rss_after,
                "kib_per_client": self.bytes_per_client / 1024}


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: the figure is a latency that happened)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


# --- call rates -------------------------------------------------------------------------


async def call_rate(
    level: str,
    call: Call,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    server: Child | None = None,
) -> RatePoint:
    """Run ``concurrency`` tasks calling ``call`` back to back; count over ``duration``."""
    done = 0
    running = True

    async def worker() -> None:
        nonlocal done
        while running:
            await call()
            done += 1

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await _sleep_watching(warmup, tasks)
        calls0, wall0, cpu0 = done, time.perf_counter(), time.process_time()
        server0 = server.cpu_seconds() if server is not None else None
        await _sleep_watching(duration, tasks)
        calls1, wall1, cpu1 = done, time.perf_counter(), time.process_time()
        server1 = server.cpu_seconds() if server is not None else None
    finally:
        running = False  # each worker finishes the call it is in and stops
        _, late = await asyncio.wait(tasks, timeout=max(5.0, CALL_TIMEOUT / 10))
        for task in late:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    if calls1 == calls0:
        raise RuntimeError(f"{level}: no call completed in {duration}s")
    server_cpu = None if server0 is None or server1 is None else server1 - server0
    return RatePoint(level, concurrency, calls1 - calls0, wall1 - wall0, cpu1 - cpu0, server_cpu)


async def _sleep_watching(seconds: float, tasks: Sequence[asyncio.Future[None]]) -> None:
    """Sleep, but return early (raising) if a worker failed."""
    finished, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in finished:
        task.result()  # raises the worker's error; a clean finish is impossible while running
        raise RuntimeError("a benchmark worker stopped on its own")


@contextlib.asynccontextmanager
async def agent_caller(address: str, *, metrics: bool = False) -> AsyncIterator[Call]:
    """``KataAgent.check()`` (the whole library path) over one connection, made and tried.

    With ``metrics`` every call is also recorded in Prometheus metrics (a private registry):
    against the plain level, what telemetry costs when on, and that off it costs nothing.
    """
    agent = open_agent(address, "kata")
    if metrics:
        from prometheus_client import CollectorRegistry

        from agentio.agents.telemetry import AgentMetrics, Telemetry

        agent.telemetry = Telemetry(metrics=AgentMetrics(CollectorRegistry()))
    try:
        await agent.check()
        yield agent.check
    finally:
        await agent.disconnect()


@contextlib.asynccontextmanager
async def ttrpc_caller(address: str) -> AsyncIterator[Call]:
    """``TtrpcClient.call("grpc.Health", "Check")`` over one connection, dialled like the agent.

    Same transport, same per-call timeout: the difference to :func:`agent_caller` is the agent
    layer (message encode/parse, error context, the status check).
    """
    target = parse_address(address)
    async with _raw_checks(TtrpcClient(lambda factory: connect(target, factory))) as check:
        yield check


@contextlib.asynccontextmanager
async def kata1_caller(address: str) -> AsyncIterator[Call]:
    """``Kata1Agent.check()``: the whole library path over gRPC on one yamux stream."""
    agent = open_agent(address, "kata1", config={"yamux": True})
    try:
        await agent.check()
        yield agent.check
    finally:
        await agent.disconnect()


@contextlib.asynccontextmanager
async def grpc_caller(address: str) -> AsyncIterator[Call]:
    """``GrpcClient.call("grpc.Health", "Check")`` on one yamux stream, dialled like the agent."""
    target = parse_address(address)
    dialer = YamuxDialer(lambda factory: connect(target, factory))
    async with _raw_checks(GrpcClient(dialer.connect_stream, on_close=dialer.close)) as check:
        yield check


@contextlib.asynccontextmanager
async def _raw_checks(client: TtrpcClient | GrpcClient) -> AsyncIterator[Call]:
    """Health.Check as payload bytes on ``client`` (one warm-up call first); closes it."""
    payload = bytes(pb.CheckRequest())

    def check() -> Awaitable[bytes]:
        return client.call(HEALTH, "Check", payload, timeout=CALL_TIMEOUT)

    try:
        await check()
        yield check
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def echo_caller(path: str) -> AsyncIterator[Call]:
    """The baseline: framed echo, payload as long as the ttrpc Check request envelope."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_unix_connection(EchoClient, path)
    payload = b"x" * len(encode_request(HEALTH, "Check", bytes(pb.CheckRequest()),
                                        int(CALL_TIMEOUT * 1e9), ()))

    def echo() -> Awaitable[bytes]:
        return client.call(payload)

    try:
        await echo()
        yield echo
    finally:
        client.close()


async def rpc_rates(
    agent_address: str, echo_path: str, concurrencies: Sequence[int], *, duration: float,
    warmup: float, agent_server: Child | None = None, echo_server: Child | None = None,
    kata1_address: str | None = None, kata1_server: Child | None = None,
) -> list[RatePoint]:
    """Every level at every concurrency; the levels run back to back per concurrency so that
    drift on a shared machine touches the library and its baseline alike. With
    ``kata1_address`` (a local agent serving 1.x on yamux), the gRPC levels join them."""
    async with contextlib.AsyncExitStack() as stack:
        grpc_levels = [] if kata1_address is None else [
            ("kata1.check", await stack.enter_async_context(kata1_caller(kata1_address)),
             kata1_server),
            ("grpc.call", await stack.enter_async_context(grpc_caller(kata1_address)),
             kata1_server),
        ]
        levels = [
            ("agent.check", await stack.enter_async_context(agent_caller(agent_address)),
             agent_server),
            ("agent.check+metrics",
             await stack.enter_async_context(agent_caller(agent_address, metrics=True)),
             agent_server),
            ("ttrpc.call", await stack.enter_async_context(ttrpc_caller(agent_address)),
             agent_server),
            *grpc_levels,
            ("echo", await stack.enter_async_context(echo_caller(echo_path)), echo_server),
        ]
        return [
            await call_rate(level, call, concurrency=concurrency, duration=duration,
                            warmup=warmup, server=server)
            for concurrency in concurrencies
            for level, call, server in levels
        ]


# --- the public API: stdio and exec ---------------------------------------------------------


async def _cat_round(sandbox: Sandbox, container_id: str, block: bytes, blocks: int) -> float:
    """Run ``cat``, push ``blocks`` times ``block`` through it; seconds from first write to EOF."""
    container = sandbox.containers[container_id]
    proc = await container.exec(["cat"])
    try:
        start = time.perf_counter()

        async def write() -> None:
            for _ in range(blocks):
                proc.stdin.write(block)
                await proc.stdin.drain()
            proc.stdin.close()
            await proc.stdin.wait_closed()

        async def read() -> int:
            total = 0
            while chunk := await proc.stdout.read(1 << 16):
                total += len(chunk)
            return total

        _, received = await asyncio.gather(write(), read())
        elapsed = time.perf_counter() - start
        if received != len(block) * blocks:
            raise RuntimeError(f"cat returned {received} of {len(block) * blocks} bytes")
        if await proc.wait() != 0:
            raise RuntimeError(f"cat exited with {proc.returncode}")
        return elapsed
    finally:
        await proc.close()
        container.processes.pop(proc.exec_id, None)


async def stdio_and_exec(address: str, *, mib: int, duration: float,
                         warmup: float) -> tuple[StdioResult, ExecResult]:
    """Throughput of ``cat`` round trips, then exec latency of ``true``, in one sandbox."""
    block = os.urandom(MIB)
    async with await Sandbox.create(address) as sandbox:
        container = await sandbox.create_container(args=["sleep", "infinity"])
        await container.start()

        await _cat_round(sandbox, container.id, block, 1)  # warmup
        rounds, seconds, cpu0 = 0, 0.0, time.process_time()
        while rounds == 0 or seconds < duration:
            seconds += await _cat_round(sandbox, container.id, block, mib)
            rounds += 1
        stdio = StdioResult(rounds, mib * MIB, seconds, time.process_time() - cpu0)

        async def exec_true() -> float:
            start = time.perf_counter()
            proc = await container.exec(["true"])
            try:
                if await proc.wait() != 0:
                    raise RuntimeError(f"true exited with {proc.returncode}")
                return time.perf_counter() - start
            finally:
                await proc.close()
                container.processes.pop(proc.exec_id, None)

        until = time.perf_counter() + warmup
        while time.perf_counter() < until:
            await exec_true()
        latencies: list[float] = []
        until = time.perf_counter() + duration
        while not latencies or time.perf_counter() < until:
            latencies.append(await exec_true())
        return stdio, ExecResult(tuple(latencies))


# --- memory -------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size now (peak RSS where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def memory_per_client(addresses: Sequence[str], per_socket: int) -> MemoryResult:
    """RSS added by ``per_socket`` connected, idle ``KataAgent`` clients on each address."""
    warm = open_agent(addresses[0], "kata")  # imports, caches, first-dial paths
    await warm.check()
    await warm.disconnect()
    agents: list[Agent] = []
    try:
        gc.collect()
        before = rss_bytes()
        for address in addresses:  # one socket at a time: stays within the listen backlog
            batch = [open_agent(address, "kata") for _ in range(per_socket)]
            agents.extend(batch)
            await asyncio.gather(*(agent.check() for agent in batch))
        gc.collect()
        after = rss_bytes()
    finally:
        await asyncio.gather(*(agent.disconnect() for agent in agents),
                             return_exceptions=True)
    return MemoryResult(len(agents), len(addresses), before, after)
