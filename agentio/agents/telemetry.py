"""Tracing and metrics of agent calls: optional, and free when not switched on.

Layer: agents. Every operation of every :class:`~agentio.agents.base.Agent` passes one gate
(see :mod:`agentio.agents.base`); when the agent's ``telemetry`` is set, the gate runs the
call inside :meth:`Telemetry.observe`, otherwise it costs one attribute test.

* Tracing (``pip install agentio[tracing]``, OpenTelemetry): a client span per call, named
  ``agentio/<operation>``, with the sandbox, agent type and, on failure, the error and the
  agent's status; the trace context (W3C ``traceparent``, …) goes out in the call's ttrpc
  metadata or gRPC headers, as the Go runtime sends it, so the guest's spans join the trace.
* Metrics (``pip install agentio[metrics]``, prometheus_client): call durations per method
  (buckets 1 ms … 512 ms doubling, like the Go runtime's), errors by method and status,
  calls pending, bytes of stdio moved.

Use::

    agent.telemetry = Telemetry(tracer=trace.get_tracer("my-runtime"),
                                metrics=AgentMetrics())
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import AgentError, RpcError

if TYPE_CHECKING:
    from .base import Agent

T = TypeVar("T")

DURATION_BUCKETS: Sequence[float] = tuple(0.001 * 2 ** i for i in range(10))
"""Seconds: 1, 2, 4, … 512 ms (the Go runtime's agent-call buckets), then +Inf."""

_STDIO = {"read_stdout": "stdout", "read_stderr": "stderr", "write_stdin": "stdin"}

_OUTGOING: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "agentio_outgoing_metadata", default=())


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata the call being made should carry (the trace context), if any.

    Adapters pass it on the wire; it is set only while :meth:`Telemetry.observe` traces a
    call, so without tracing it is always empty.
    """
    return _OUTGOING.get()


def status_of(exc: BaseException) -> str:
    """The label of a failure: the agent's status name, or the error's type."""
    if isinstance(exc, RpcError):
        return exc.code_name
    return type(exc).__name__


class AgentMetrics:
    """The Prometheus metrics of agent calls (needs ``prometheus_client``).

    Args:
        registry: where to register them (default: prometheus_client's global registry;
            give each instance its own registry to create more than one).
        prefix: metric name prefix.
    """

    def __init__(self, registry: Any = None, *, prefix: str = "agentio") -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = REGISTRY if registry is None else registry
        self.call_duration = Histogram(
            f"{prefix}_agent_call_duration_seconds", "Agent call durations",
            ["method", "agent_type"], buckets=DURATION_BUCKETS, registry=registry)
        self.call_errors = Counter(
            f"{prefix}_agent_call_errors", "Agent calls that failed, by status",
            ["method", "status"], registry=registry)
        self.pending_calls = Gauge(
            f"{prefix}_agent_pending_calls", "Agent calls in flight", ["agent_type"],
            registry=registry)
        self.stdio_bytes = Counter(
            f"{prefix}_stdio_bytes", "Bytes of process stdio moved", ["stream"],
            registry=registry)


class Telemetry:
    """What to record about each agent call: spans (``tracer``) and/or metrics.

    Args:
        tracer: an OpenTelemetry ``Tracer`` (``opentelemetry.trace.get_tracer(...)``).
        metrics: an :class:`AgentMetrics`.
        propagate: send the trace context to the guest in the call's metadata.
    """

    def __init__(self, *, tracer: Any = None, metrics: AgentMetrics | None = None,
                 propagate: bool = True) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.propagate = propagate
        self._inject: Any = None
        self._status: Any = None
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}  # labels() is slow
        if tracer is not None:
            from opentelemetry import propagate as otel_propagate
            from opentelemetry.trace import Status, StatusCode

            self._inject = otel_propagate.inject
            self._status = (Status, StatusCode)

    async def observe(self, agent: Agent, operation: str, call: Awaitable[T]) -> T:
        """Await ``call`` (the operation ``operation`` of ``agent``) and record it."""
        agent_type = str(agent.agent_type)
        metrics = self.metrics
        span_scope: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.tracer is not None:
            from opentelemetry.trace import SpanKind

            span_scope = self.tracer.start_as_current_span(
                f"agentio/{operation}", kind=SpanKind.CLIENT, record_exception=False,
                set_status_on_exception=False, attributes={
                    "agentio.operation": operation, "agentio.agent_type": agent_type,
                    "agentio.sandbox": str(getattr(agent, "sandbox_id", "") or "")})
        if metrics is not None:
            children = self._children.get((operation, agent_type))
            if children is None:
                children = self._children[operation, agent_type] = (
                    metrics.pending_calls.labels(agent_type),
                    metrics.call_duration.labels(operation, agent_type))
            pending, duration = children
            pending.inc()
        started = time.perf_counter()
        with span_scope as span:
            token = None
            if span is not None and self.propagate:
                carrier: dict[str, str] = {}
                self._inject(carrier)
                token = _OUTGOING.set(tuple(carrier.items()))
            try:
                result = await call
            except BaseException as exc:
                self._failed(span, metrics, operation, exc)
                raise
            finally:
                if token is not None:
                    _OUTGOING.reset(token)
                if metrics is not None:
                    pending.dec()
                    duration.observe(time.perf_counter() - started)
        if metrics is not None and operation in _STDIO:
            moved = result if isinstance(result, int) else len(result)  # type: ignore[arg-type]
            if moved:
                metrics.stdio_bytes.labels(_STDIO[operation]).inc(moved)
        return result

    def _failed(self, span: Any, metrics: AgentMetrics | None, operation: str,
                exc: BaseException) -> None:
        status = status_of(exc)
        if metrics is not None:
            metrics.call_errors.labels(operation, status).inc()
        if span is not None:
            status_type, code = self._status
            span.set_status(status_type(code.ERROR, str(exc) if isinstance(exc, AgentError)
                                        else type(exc).__name__))
            span.set_attribute("agentio.status", status)
            if isinstance(exc, RpcError):
                span.set_attribute("rpc.grpc.status_code", exc.code)
            span.record_exception(exc)
