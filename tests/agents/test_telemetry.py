"""Tracing and metrics of agent calls, with in-memory exporters and a private registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import agentio
from agentio.agents.telemetry import DURATION_BUCKETS, AgentMetrics, Telemetry
from agentio.localagent import KataService
from agentio.proto.kata import grpc as pb
from agentio.proto.kata1 import grpc as pb1
from agentio.protocols.grpc import RawCodec
from agentio.protocols.ttrpc import ServerCall, TtrpcServer


@pytest.fixture
def spans() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("agentio-tests"), exporter


class Recorded:
    """A local agent whose Health.Check also records the metadata each call carried."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []


@pytest.fixture
async def recorded(sock_dir: Path) -> AsyncIterator[tuple[str, Recorded]]:
    record = Recorded()
    server = TtrpcServer()
    service = KataService(guest_root=sock_dir / "guest")
    service.register(server)

    async def check(call: ServerCall) -> bytes:
        record.metadata.append(dict(call.metadata))
        return bytes(pb.HealthCheckResponse(status=pb.HealthCheckResponseServingStatus.SERVING))

    server.register("grpc.Health", {"Check": check})
    path = sock_dir / "agent.sock"
    await server.start_unix(str(path))
    try:
        yield f"unix://{path}", record
    finally:
        await server.close()
        await service.close()


async def test_a_span_per_call_and_the_trace_context_reaches_the_agent(
        recorded: tuple[str, Recorded],
        spans: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    address, record = recorded
    tracer, exporter = spans
    agent = agentio.open_agent(address, sandbox_id="sb-t")
    agent.telemetry = Telemetry(tracer=tracer)
    async with agent:
        with tracer.start_as_current_span("runtime: start sandbox") as parent:
            await agent.check()
            with pytest.raises(agentio.RpcError):
                await agent.start_container("nosuch")
    check_span, failed_span, parent_span = exporter.get_finished_spans()
    assert check_span.name == "agentio/check" and check_span.kind is trace.SpanKind.CLIENT
    assert check_span.parent is not None
    assert check_span.parent.span_id == parent.get_span_context().span_id
    assert dict(check_span.attributes or {}) == {
        "agentio.operation": "check", "agentio.agent_type": "kata", "agentio.sandbox": "sb-t"}
    assert check_span.status.status_code is trace.StatusCode.UNSET
    assert failed_span.status.status_code is trace.StatusCode.ERROR
    attributes = dict(failed_span.attributes or {})
    assert attributes["agentio.status"] in ("FAILED_PRECONDITION", "NOT_FOUND")
    assert attributes["rpc.grpc.status_code"] in (9, 5)
    assert failed_span.end_time is not None and failed_span.start_time is not None
    # the guest saw the W3C trace context of the call's own span
    (metadata,) = record.metadata
    trace_id = f"{check_span.context.trace_id:032x}"
    span_id = f"{check_span.context.span_id:016x}"
    assert metadata["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert parent_span.name == "runtime: start sandbox"


async def test_no_metadata_without_tracing(recorded: tuple[str, Recorded]) -> None:
    address, record = recorded
    async with agentio.open_agent(address) as agent:
        agent.telemetry = Telemetry(metrics=AgentMetrics(CollectorRegistry()))
        await agent.check()
        agent.telemetry = None
        await agent.check()
    assert record.metadata == [{}, {}]


async def test_metrics_count_durations_errors_pending_calls_and_stdio(sock_dir: Path) -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    async with agentio.localagent.LocalAgent(sock_dir / "la") as local:
        address = await local.serve()
        async with await agentio.Sandbox.create(address) as sandbox:
            sandbox.agent.telemetry = Telemetry(metrics=metrics)
            container = await sandbox.create_container(args=["sleep", "infinity"])
            await container.start()
            proc = await container.exec(["sh", "-c", "cat; echo oops >&2"])
            out, err = await proc.communicate(b"x" * 1000)
            assert (out, err) == (b"x" * 1000, b"oops\n")
            with pytest.raises(agentio.RpcError):
                await sandbox.agent.stats_container("nosuch")

    def value(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    assert value("agentio_agent_call_duration_seconds_count", method="exec_process",
                 agent_type="kata") == 1
    assert value("agentio_agent_call_duration_seconds_count", method="wait_process",
                 agent_type="kata") >= 1
    assert value("agentio_agent_call_duration_seconds_bucket", method="exec_process",
                 agent_type="kata", le="+Inf") == 1
    assert value("agentio_agent_call_errors_total", method="stats_container",
                 status="INVALID_ARGUMENT") + value(
        "agentio_agent_call_errors_total", method="stats_container",
        status="FAILED_PRECONDITION") == 1
    assert value("agentio_agent_pending_calls", agent_type="kata") == 0
    assert value("agentio_stdio_bytes_total", stream="stdin") == 1000
    assert value("agentio_stdio_bytes_total", stream="stdout") == 1000
    assert value("agentio_stdio_bytes_total", stream="stderr") == 5
    assert list(DURATION_BUCKETS) == [0.001 * 2 ** i for i in range(10)]


async def test_switched_off_it_costs_next_to_nothing() -> None:
    """The gate without telemetry against the same loop with telemetry on (metrics only)."""
    agent = agentio.NoopAgent()

    async def rate(calls: int = 3000) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await agent.check()
        return calls / (time.perf_counter() - started)

    await rate(300)
    off = max([await rate() for _ in range(3)])
    agent.telemetry = Telemetry(metrics=AgentMetrics(CollectorRegistry()))
    on = max([await rate() for _ in range(3)])
    # Off must be clearly cheaper than on: recording is skipped, not done and discarded.
    assert off > on
    await asyncio.sleep(0)


class GrpcHealth:
    """A Kata 1.x Health service over grpclib that keeps each call's request headers."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def __mapping__(self) -> dict[str, Handler]:
        return {"/grpc.Health/Check": Handler(self.check, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def check(self, stream: Stream[bytes, bytes]) -> None:
        self.metadata.append({k: str(v) for k, v in (stream.metadata or {}).items()})
        await stream.recv_message()
        status = pb1.HealthCheckResponseServingStatus.SERVING
        await stream.send_message(bytes(pb1.HealthCheckResponse(status=status)))


async def test_the_trace_context_goes_out_in_grpc_headers_too(
        sock_dir: Path, spans: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    health = GrpcHealth()
    server = Server([health], codec=RawCodec())
    path = sock_dir / "grpc.sock"
    await server.start(path=str(path))
    try:
        # the stub is bare HTTP/2, not behind yamux
        async with agentio.open_agent(f"unix://{path}", "kata1",
                                      config={"yamux": False}) as agent:
            agent.telemetry = Telemetry(tracer=tracer)
            await agent.check()
            agent.telemetry = None
            await agent.check()
    finally:
        server.close()
        await server.wait_closed()
    (span,) = exporter.get_finished_spans()
    traced, untraced = health.metadata
    assert traced["traceparent"].startswith(
        f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
    assert "traceparent" not in untraced
