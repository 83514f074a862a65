"""OpenTelemetry tracing for the server and the device daemon (off unless asked for).

One trace per orion run::

    orion.v1.OrchestratorService/OrchestrateOrion   (SERVER, a span per RPC: the interceptor)
    └── orion.run                                   (INTERNAL, the orion: OrionSpans hooks)
        ├── star.attempt                            (CLIENT, one per attempt of a star)
        │   └── device.execute                      (SERVER, on the device, from the W3C
        └── star.attempt ...                         traceparent carried in the assignment)

``Tracing.from_env`` builds a tracer provider from the standard ``OTEL_*`` variables and returns
None when tracing is off, so callers install nothing at all (no interceptor, no engine hooks):

- ``OTEL_TRACES_EXPORTER``: ``none`` (the default here: Orion traces only when asked, unlike
  the OpenTelemetry default ``otlp``), ``console`` (one JSON object per span and line on
  stdout, written as each span ends) or ``otlp`` (batched; needs the ``otlp`` extra,
  ``pip install 'orion-grpc[otlp]'``). A comma-separated list uses several.
- ``OTEL_SDK_DISABLED=true`` turns tracing off whatever the exporter says.
- ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` (default)
  or ``http/protobuf`` (needs ``opentelemetry-exporter-otlp-proto-http``).
- Read by the OpenTelemetry SDK itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
  (default service name ``orion-server`` / ``orion-device``), ``OTEL_TRACES_SAMPLER`` and
  ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``_HEADERS`` / ``_TIMEOUT``
  (and their ``_TRACES_`` forms), ``OTEL_BSP_*`` for the batching of OTLP exports,
  ``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``) for what goes in an assignment.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import __version__
from ..api.handlers import behavior_of
from ..core.device_manager import REASON_CANCELLED, Lease, LeaseOutcome
from ..core.enums import OrionState, TaskStatus

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from ..core.task_orion import TaskOrion
    from ..core.task_star import TaskStar

INSTRUMENTATION_NAME = "orion_grpc"
EXPORTERS = ("console", "otlp")
OTLP_PROTOCOLS = {
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
             "opentelemetry-exporter-otlp-proto-grpc", "pip install 'orion-grpc[otlp]'"),
    "http/protobuf": ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                      "opentelemetry-exporter-otlp-proto-http",
                      "pip install opentelemetry-exporter-otlp-proto-http"),
}
_MAX_DESCRIPTION = 500  # characters of an error message kept as a span's status description
_TRACE_IDS_KEPT = 4096  # finished orions whose trace id OrionSpans.trace_id still knows


class TracingConfigError(ValueError):
    """The ``OTEL_*`` variables ask for something that cannot be set up (raised at startup)."""


def exporters_from_env(env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` asks for; empty when tracing is off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unsupported exporter(s) "
                                 f"{', '.join(unknown)}; use none, console or otlp")
    return list(dict.fromkeys(names))


def _console_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if protocol not in OTLP_PROTOCOLS:
        raise TracingConfigError(f"OTLP protocol {protocol!r} is not supported; use "
                                 f"{' or '.join(OTLP_PROTOCOLS)}")
    module_name, package, hint = OTLP_PROTOCOLS[protocol]
    try:
        module = __import__(module_name, fromlist=["OTLPSpanExporter"])
    except ImportError as exc:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER=otlp (protocol {protocol}) needs the {package} package, "
            f"which is not installed: {hint} (or set OTEL_TRACES_EXPORTER=console or none)"
        ) from exc
    return module.OTLPSpanExporter()  # type: ignore[no-any-return]  # reads OTEL_EXPORTER_OTLP_*


class Tracing:
    """A tracer provider plus what Orion hangs on it: the server interceptor, the engine hooks
    and the device daemon's tracer. Whoever creates one owns it: call ``shutdown()`` at exit
    (it flushes what is still batched)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_env(cls, service_name: str, env: Mapping[str, str] | None = None) -> Tracing | None:
        """Tracing as the ``OTEL_*`` variables say (module docstring); None when it is off.

        ``env`` (default ``os.environ``) is what Orion reads to choose exporters; the SDK
        reads its own variables (sampler, resource, OTLP endpoint) from ``os.environ``.
        Raises ``TracingConfigError`` for a bad value or a missing OTLP exporter package.
        """
        env = os.environ if env is None else env
        names = exporters_from_env(env)
        if not names:
            return None
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )

        processors: list[SpanProcessor] = []
        for name in names:
            if name == "console":
                # Simple (not batched): each span is a line on stdout as soon as it ends.
                processors.append(SimpleSpanProcessor(ConsoleSpanExporter(
                    out=sys.stdout, formatter=_console_line)))
            else:
                processors.append(BatchSpanProcessor(_otlp_exporter(env)))
        tracing = cls(_provider(service_name))
        for processor in processors:
            tracing.provider.add_span_processor(processor)
        return tracing

    @classmethod
    def to_exporter(cls, exporter: SpanExporter, service_name: str = "orion-server", *,
                    batch: bool = False) -> Tracing:
        """Tracing into one exporter (e.g. an ``InMemorySpanExporter`` in tests)."""
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        tracing = cls(_provider(service_name))
        tracing.provider.add_span_processor(
            BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return tracing

    # ------------------------------------------------------------------ what Orion installs
    def hooks(self) -> OrionSpans:
        """Engine hooks: ``orchestrator.set_tracer_hooks(tracing.hooks())``."""
        return OrionSpans(self.tracer)

    def server_interceptor(self) -> TracingServerInterceptor:
        """``grpc.aio.server(interceptors=[tracing.server_interceptor()])``."""
        return TracingServerInterceptor(self.tracer)

    def set_global(self) -> None:
        """Make this the process's global tracer provider (entry points only, not libraries:
        OpenTelemetry allows it once per process), so other instrumented code joins in."""
        trace.set_tracer_provider(self.provider)

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        self.provider.shutdown()


def _provider(service_name: str) -> TracerProvider:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    return TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER


def _error_status(message: str | None) -> Status:
    text = message or "error"
    return Status(StatusCode.ERROR, text[:_MAX_DESCRIPTION])


# ---------------------------------------------------------------------- engine hooks
class _OrionTrace:
    __slots__ = ("span", "context", "stars")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.stars: dict[str, trace.Span] = {}


class OrionSpans:
    """``TracerHooks`` that turn an orion's run into spans: ``orion.run`` (child of the span
    current when the run starts, e.g. the SubmitOrion RPC) and one ``star.attempt`` per
    attempt, whose W3C context goes to the device in the assignment."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._orions: dict[str, _OrionTrace] = {}
        self._trace_ids: dict[str, str] = {}  # orion id -> trace id of its latest run

    def on_orion_start(self, orion: TaskOrion) -> None:
        old = self._orions.pop(orion.orion_id, None)
        if old is not None:  # a second run of the same object: close the first one's spans
            self._end_orion(old, None)
        span = self._tracer.start_span("orion.run", kind=SpanKind.INTERNAL, attributes={
            "orion.id": orion.orion_id, "orion.name": orion.name or "",
            "orion.star_count": orion.task_count})
        self._orions[orion.orion_id] = _OrionTrace(span)
        context = span.get_span_context()
        if context.is_valid:
            self._trace_ids.pop(orion.orion_id, None)
            self._trace_ids[orion.orion_id] = f"{context.trace_id:032x}"
            if len(self._trace_ids) > _TRACE_IDS_KEPT:
                del self._trace_ids[next(iter(self._trace_ids))]

    def trace_id(self, orion_id: str) -> str | None:
        """The trace id (32 hex digits) of the orion's latest run, while it runs and for a
        while after (the last few thousand runs): log lines about the orion carry it."""
        return self._trace_ids.get(orion_id)

    def on_dispatch(self, orion: TaskOrion, task: TaskStar, attempt: int) -> dict[str, str]:
        run = self._orions.get(orion.orion_id)
        span = self._tracer.start_span(
            "star.attempt", context=run.context if run is not None else None,
            kind=SpanKind.CLIENT, attributes={
                "orion.id": orion.orion_id, "star.id": task.task_id,
                "star.name": task.name or "", "device.id": task.target_device_id or "",
                "star.attempt": attempt + 1, "star.max_attempts": task.retry_count + 1})
        if run is not None:
            previous = run.stars.pop(task.task_id, None)
            if previous is not None:  # cannot happen (one attempt at a time); never leak it
                previous.end()
            run.stars[task.task_id] = span
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def on_attempt_end(self, orion: TaskOrion, task: TaskStar, lease: Lease,
                       outcome: LeaseOutcome) -> None:
        run = self._orions.get(orion.orion_id)
        span = run.stars.pop(task.task_id, None) if run is not None else None
        if span is None:
            return
        span.set_attribute("lease.id", lease.lease_id)
        if outcome.success:
            span.set_attribute("star.outcome", "completed")
        elif outcome.reason == REASON_CANCELLED:
            span.set_attributes({"star.outcome": "cancelled", "star.reason": REASON_CANCELLED})
        else:
            span.set_attributes({"star.outcome": "failed",
                                 "star.reason": outcome.reason or "task_error"})
            span.set_status(_error_status(outcome.error))
        span.end()

    def on_orion_end(self, orion: TaskOrion, state: OrionState) -> None:
        run = self._orions.pop(orion.orion_id, None)
        if run is not None:
            self._end_orion(run, orion, state)

    def _end_orion(self, run: _OrionTrace, orion: TaskOrion | None,
                   state: OrionState | None = None) -> None:
        for span in run.stars.values():  # attempts the run left behind (internal error)
            span.set_attribute("star.outcome", "abandoned")
            span.end()
        run.stars.clear()
        span = run.span
        if orion is not None and state is not None:
            counts = orion.status_counts()
            span.set_attributes({"orion.state": state.value,
                                 "orion.stars_completed": counts[TaskStatus.COMPLETED],
                                 "orion.stars_failed": counts[TaskStatus.FAILED],
                                 "orion.stars_cancelled": counts[TaskStatus.CANCELLED]})
            if state in (OrionState.FAILED, OrionState.PARTIALLY_FAILED):
                failed = [t.task_id for t in orion.get_all_tasks()
                          if t.status is TaskStatus.FAILED]
                span.set_status(_error_status(f"orion {state.value}: failed stars "
                                              f"{', '.join(failed[:20])}"))
        span.end()

    @property
    def open_orions(self) -> list[str]:
        """Orions whose ``orion.run`` span is still open (for tests and diagnostics)."""
        return list(self._orions)


# ---------------------------------------------------------------------- gRPC server
# Server span status per the OpenTelemetry RPC conventions: only these codes are errors of
# the server; the rest (NOT_FOUND, INVALID_ARGUMENT, ...) are the caller's.
UNTRACED_METHODS: tuple[str, ...] = ()  # every RPC is traced, health checks included
_SERVER_ERROR_CODES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})


class TracingServerInterceptor(grpc.aio.ServerInterceptor):
    """A ``SERVER`` span per RPC, named ``package.Service/Method``, current while the handler
    runs (so what the handler starts, e.g. an orion's run, is its child) and continuing the
    caller's trace when the request metadata carries a ``traceparent``.

    Attributes: ``rpc.system`` (grpc), ``rpc.service``, ``rpc.method``,
    ``rpc.grpc.status_code``; status ERROR for the codes that are the server's fault.
    Every RPC gets one, health checks and reflection included (a sampler or the collector can
    drop ``grpc.health.v1.Health/Check`` if probes are noise); methods starting with one of
    ``untraced`` get none.
    Hand-written: opentelemetry-instrumentation-grpc is not installable here, and this is
    all Orion needs from it (handlers are coroutines or async generators).
    """

    def __init__(self, tracer: trace.Tracer,
                 untraced: tuple[str, ...] = UNTRACED_METHODS) -> None:
        self._tracer = tracer
        self._untraced = untraced

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]  # unknown method: UNIMPLEMENTED
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        name = method.lstrip("/")
        if name.startswith(self._untraced):
            return handler
        service, _, rpc_method = name.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method}

        def start() -> trace.Span:
            carrier = {key: value for key, value in (metadata or ())
                       if isinstance(value, str)}
            parent = propagate.extract(carrier) if "traceparent" in carrier else None
            return self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                           attributes=attributes)

        found = behavior_of(handler)
        wrapped = _wrap(found[1], start) if found is not None else None
        if found is None or wrapped is None:
            return handler  # no behaviour, or a synchronous handler: left alone
        return found[2](wrapped,  # type: ignore[no-any-return]
                        request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)


def _wrap(behavior: Callable[..., Any], start: Callable[[], trace.Span]
          ) -> Callable[..., Any] | None:
    if inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = start()
            current = trace.set_span_in_context(span)
            responses = behavior(request, context)
            try:
                while True:
                    # The span is current while the handler runs, not while grpc holds a
                    # response: attach / detach never straddle a yield (the generator may be
                    # closed from another context).
                    token = otel_context.attach(current)
                    try:
                        response = await responses.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        otel_context.detach(token)
                    yield response
            except BaseException as exc:
                _end_rpc(span, context, exc)
                if isinstance(exc, GeneratorExit):
                    await responses.aclose()  # closed by grpc: close the handler too
                raise
            _end_rpc(span, context, None)
        return stream
    if inspect.iscoroutinefunction(behavior):
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = start()
            with trace.use_span(span, end_on_exit=False, record_exception=False,
                                set_status_on_exception=False):
                try:
                    response = await behavior(request, context)
                except BaseException as exc:
                    _end_rpc(span, context, exc)
                    raise
            _end_rpc(span, context, None)
            return response
        return call
    return None


def _end_rpc(span: trace.Span, context: grpc.aio.ServicerContext,
             exc: BaseException | None) -> None:
    code = _code(context)
    if exc is None:
        code = code or grpc.StatusCode.OK
    elif isinstance(exc, grpc.aio.AbortError):
        code = code or grpc.StatusCode.UNKNOWN
    elif isinstance(exc, BaseException) and not isinstance(exc, Exception):
        code = grpc.StatusCode.CANCELLED  # the call was cancelled (client gone, shutdown)
    else:
        code = grpc.StatusCode.UNKNOWN
        span.record_exception(exc)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERROR_CODES:
        details = None
        try:
            details = context.details()  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - depends on the grpc version
            pass
        span.set_status(_error_status(f"{code.name}: {details or exc or ''}"))
    span.end()


def _code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - depends on the grpc version
        return None
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), None)
    return code  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- gRPC client
def _with_trace_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata,
                                      details.credentials, details.wait_for_ready)


class _UnaryTraceContext(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await continuation(_with_trace_context(client_call_details), request)


class _StreamTraceContext(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return await continuation(_with_trace_context(client_call_details), request)


def trace_context_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send the caller's current OpenTelemetry context (W3C
    ``traceparent``, through the global propagator) in each call's metadata, so the server's
    RPC span continues the caller's trace. Without a current span (an untraced program) they
    add nothing; they create no span of their own. ``OrionClient`` installs them on the
    channels it creates (grpc.aio files an interceptor under one kind only: one per kind)."""
    return [_UnaryTraceContext(), _StreamTraceContext()]


# ---------------------------------------------------------------------- reading spans
TREE_ATTRIBUTES = ("rpc.grpc.status_code", "orion.id", "orion.state", "star.id", "device.id",
                   "star.attempt", "star.outcome", "star.reason")


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the console exporter prints it (so both kinds mix in one tree)."""
    return json.loads(span.to_json(indent=None))  # type: ignore[no-any-return]


def format_trace_tree(spans: list[dict[str, Any]],
                      attributes: tuple[str, ...] = TREE_ATTRIBUTES) -> str:
    """Spans (``span_to_dict`` / ``parse_console_spans`` form) as indented trees, one per
    root, siblings by start time: name, [service], the chosen attributes (those that differ
    from the parent's), ERROR, duration."""
    from datetime import datetime

    by_id = {s["context"]["span_id"]: s for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s.get("parent_id")
        children.setdefault(parent if parent in by_id else None, []).append(s)

    def when(s: dict[str, Any], key: str) -> datetime:
        return datetime.fromisoformat(s[key].replace("Z", "+00:00"))

    def label(s: dict[str, Any]) -> str:
        service = s.get("resource", {}).get("attributes", {}).get("service.name", "")
        attrs = s.get("attributes", {})
        inherited = by_id.get(s.get("parent_id") or "", {}).get("attributes", {})
        parts = [s["name"], f"[{service}]" if service else ""]
        parts += [f"{k}={attrs[k]}" for k in attributes
                  if k in attrs and inherited.get(k, object()) != attrs[k]]
        if s.get("status", {}).get("status_code") == "ERROR":
            parts.append("ERROR")
        ms = (when(s, "end_time") - when(s, "start_time")).total_seconds() * 1000
        parts.append(f"({ms:.1f} ms)")
        return " ".join(p for p in parts if p)

    lines: list[str] = []

    def walk(s: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        lines.append(label(s) if root else f"{prefix}{'└── ' if last else '├── '}{label(s)}")
        kids = sorted(children.get(s["context"]["span_id"], []), key=lambda k: k["start_time"])
        inner = "" if root else prefix + ("    " if last else "│   ")
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in sorted(children.get(None, []), key=lambda r: r["start_time"]):
        walk(root, "", True, True)
    return "\n".join(lines)


def parse_console_spans(text: str) -> list[dict[str, Any]]:
    """The spans in the output of ``OTEL_TRACES_EXPORTER=console`` (one JSON object per line;
    other lines, e.g. the daemon's own messages, are skipped)."""
    spans = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"context"' in line:
            try:
                spans.append(json.loads(line))
            except ValueError:
                continue
    return spans
