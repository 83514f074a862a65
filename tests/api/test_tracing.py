"""OpenTelemetry tracing: one orion's trace from the RPC down to the device, in one process.

A real grpc.aio OrionServer with ``Tracing`` into an in-memory exporter, a real DeviceAgent
over DeviceService (in process), a real OrionClient. The cross-process version (a device
daemon exporting to its stdout) is tests/e2e/test_tracing_e2e.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orion_grpc.api.server import ServerConfig, server_from_env
from orion_grpc.client import OrionClient
from orion_grpc.core import TaskOrion, TaskStar, TaskStarLine
from orion_grpc.device import Assignment, DeviceAgent, ExecutorError
from orion_grpc.gen.orion.v1 import event_pb2
from orion_grpc.gen.orion.v1 import orchestrator_service_pb2 as pb
from orion_grpc.gen.orion.v1 import orchestrator_service_pb2_grpc as pb_grpc
from orion_grpc.observability import (
    Tracing,
    TracingConfigError,
    exporters_from_env,
    format_trace_tree,
    parse_console_spans,
    span_to_dict,
)
from orion_grpc.observability.tracing import TracingServerInterceptor

WAIT = 10.0


class SpanWaiter(InMemorySpanExporter):
    """An in-memory exporter that can await a span (spans are exported as they end)."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def export(self, spans: Any) -> Any:
        outcome = super().export(spans)
        self._changed.set()
        return outcome

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.get_finished_spans() if s.name == name]

    async def wait_for(self, name: str, timeout: float = WAIT) -> ReadableSpan:
        async def first() -> ReadableSpan:
            while not (found := self.named(name)):
                self._changed.clear()
                await self._changed.wait()
            return found[0]
        return await asyncio.wait_for(first(), timeout)


async def flaky(assignment: Assignment) -> dict[str, Any]:
    """Fails a star's first attempt when ``task_data.flaky`` says so; echoes otherwise."""
    if assignment.task_data.get("flaky") and assignment.attempt == 1:
        raise ExecutorError("first attempt fails")
    return {"status": "ok", "star": assignment.task_id, "attempt": assignment.attempt}


def release_orion() -> TaskOrion:
    """build -> test (fails once, retried) -> ship: three stars, four attempts."""
    orion = TaskOrion("release-1", name="release")
    orion.add_task(TaskStar("build", description="build it", target_device_id="dev-1"))
    orion.add_task(TaskStar("test", description="test it", target_device_id="dev-1",
                            retry_count=1, task_data={"flaky": True}))
    orion.add_task(TaskStar("ship", description="ship it", target_device_id="dev-1"))
    orion.add_dependency(TaskStarLine("build", "test"))
    orion.add_dependency(TaskStarLine("test", "ship"))
    return orion


@pytest.fixture
def exporter() -> SpanWaiter:
    return SpanWaiter()


@pytest.fixture
def tracing(exporter: SpanWaiter) -> Tracing:
    return Tracing.to_exporter(exporter)


@pytest.fixture
async def traced(make_server: Any, tracing: Tracing) -> AsyncIterator[Any]:
    """A traced server with one traced in-process device, ``dev-1``."""
    server = await make_server(tracing=tracing)
    agent = DeviceAgent(server.target, "dev-1", "linux", executors={"flaky": flaky},
                        tracer=tracing.tracer, backoff_initial=0.05, backoff_max=0.2)
    agent.start()
    await agent.wait_connected(WAIT)
    try:
        yield server
    finally:
        await agent.stop(timeout=1.0)


def by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


async def test_one_orion_traced_from_the_rpc_through_each_star_attempt_to_the_device(
        traced: Any, exporter: SpanWaiter) -> None:
    async with OrionClient(traced.target, timeout=WAIT) as client:
        result = await client.orchestrate_orion(release_orion(), timeout=WAIT)
    assert result["status"] == "completed", result["errors"]

    # RPC span: the root, a SERVER span named after the full method.
    (rpc,) = exporter.named("orion.v1.OrchestratorService/OrchestrateOrion")
    assert rpc.parent is None and rpc.kind is SpanKind.SERVER
    assert dict(rpc.attributes) == {
        "rpc.system": "grpc", "rpc.service": "orion.v1.OrchestratorService",
        "rpc.method": "OrchestrateOrion", "rpc.grpc.status_code": 0}
    trace_id = rpc.context.trace_id

    # Orion span: child of the RPC span.
    (run,) = exporter.named("orion.run")
    assert run.parent.span_id == rpc.context.span_id and run.context.trace_id == trace_id
    assert run.attributes["orion.id"] == "release-1"
    assert run.attributes["orion.state"] == "completed"
    assert run.attributes["orion.stars_completed"] == 3
    assert run.status.status_code is StatusCode.UNSET

    # Star spans: one per attempt, children of the orion span, in order.
    attempts = sorted(exporter.named("star.attempt"), key=lambda s: s.start_time)
    assert [(s.attributes["star.id"], s.attributes["star.attempt"],
             s.attributes["star.outcome"]) for s in attempts] == [
        ("build", 1, "completed"), ("test", 1, "failed"), ("test", 2, "completed"),
        ("ship", 1, "completed")]
    for span in attempts:
        assert span.parent.span_id == run.context.span_id
        assert span.context.trace_id == trace_id
        assert span.attributes["orion.id"] == "release-1"
        assert span.attributes["device.id"] == "dev-1"
        assert span.attributes["lease.id"].startswith("dev-1:")
    failed = attempts[1]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["star.reason"] == "task_error"
    assert "first attempt fails" in failed.status.description

    # Device spans: each a child of its attempt's span, same trace.
    stars = by_id(attempts)
    executed = exporter.named("device.execute")
    assert len(executed) == 4
    for span in executed:
        parent = stars[span.parent.span_id]
        assert span.context.trace_id == trace_id and span.kind is SpanKind.SERVER
        assert (span.attributes["star.id"], span.attributes["star.attempt"]) == (
            parent.attributes["star.id"], parent.attributes["star.attempt"])
        assert span.attributes["device.id"] == "dev-1"
        assert span.attributes["lease.id"] == parent.attributes["lease.id"]
        assert span.start_time >= parent.start_time and span.end_time <= parent.end_time
    assert [s.status.status_code for s in executed].count(StatusCode.ERROR) == 1

    # Nothing is left open on the server.
    assert traced.engine.orchestrator.tracer_hooks.open_orions == []
    tree = format_trace_tree([span_to_dict(s) for s in exporter.get_finished_spans()
                              if s.context.trace_id == trace_id])
    print(tree)
    assert tree.splitlines()[1].startswith("└── orion.run [orion-server] orion.id=release-1")


async def test_the_rpc_span_continues_the_callers_trace_and_records_the_status_code(
        traced: Any, exporter: SpanWaiter, tracing: Tracing) -> None:
    with tracing.tracer.start_as_current_span("caller") as caller:
        from opentelemetry import propagate
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    async with grpc.aio.insecure_channel(traced.target) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        await stub.GetAvailableDevices(pb.OrchestratorServiceGetAvailableDevicesRequest(),
                                       metadata=tuple(carrier.items()), timeout=WAIT)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetOrionStatus(pb.OrchestratorServiceGetOrionStatusRequest(
                orion_id="nope"), timeout=WAIT)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND

    (listed,) = exporter.named("orion.v1.OrchestratorService/GetAvailableDevices")
    assert listed.context.trace_id == caller.get_span_context().trace_id
    assert listed.parent.span_id == caller.get_span_context().span_id
    # context.abort sends the status before it raises: the span ends just after the client
    # has the error, so wait for it.
    status = await exporter.wait_for("orion.v1.OrchestratorService/GetOrionStatus")
    assert status.parent is None
    assert status.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # NOT_FOUND is the caller's mistake, not a server error (OpenTelemetry RPC conventions).
    assert status.status.status_code is StatusCode.UNSET


async def test_orion_client_sends_the_callers_trace_context(
        traced: Any, exporter: SpanWaiter, tracing: Tracing) -> None:
    async with OrionClient(traced.target, timeout=WAIT) as client:
        await client.get_available_devices()  # no current span: a trace of its own
        with tracing.tracer.start_as_current_span("planner") as planner:
            await client.get_available_devices()
            async for _ in client.watch_events(include_history=True):
                break  # a stream carries it too
    first, second = sorted(exporter.named("orion.v1.OrchestratorService/GetAvailableDevices"),
                           key=lambda s: s.start_time)
    assert first.parent is None
    assert second.parent.span_id == planner.get_span_context().span_id
    assert second.context.trace_id == planner.get_span_context().trace_id
    watch = await exporter.wait_for("orion.v1.EventService/WatchEvents")
    assert watch.parent.span_id == planner.get_span_context().span_id


async def test_health_checks_and_reflection_are_traced_like_every_rpc(
        traced: Any, exporter: SpanWaiter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(traced.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = [a async for a in reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT)]
        assert answers[0].list_services_response.service
    check = await exporter.wait_for("grpc.health.v1.Health/Check")
    assert check.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    listed = await exporter.wait_for("grpc.reflection.v1alpha.ServerReflection/"
                                     "ServerReflectionInfo")
    assert listed.attributes["rpc.service"] == "grpc.reflection.v1alpha.ServerReflection"


async def test_streaming_rpcs_get_a_span_that_ends_with_the_stream(
        traced: Any, exporter: SpanWaiter) -> None:
    async with OrionClient(traced.target, timeout=WAIT) as client:
        events = client.watch_events(include_history=True)
        orion_id = await client.submit_orion(release_orion())
        async for event in events:
            if event.orion_id == orion_id and event.type == event_pb2.EVENT_TYPE_ORION_COMPLETED:
                break
        await events.aclose()  # the client cancels the stream
        watch = await exporter.wait_for("orion.v1.EventService/WatchEvents")
    assert watch.attributes["rpc.method"] == "WatchEvents"
    assert watch.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    (submit,) = exporter.named("orion.v1.OrchestratorService/SubmitOrion")
    run = await exporter.wait_for("orion.run")  # the run outlives the RPC that started it
    assert run.parent.span_id == submit.context.span_id


async def test_device_work_of_a_single_task_joins_the_rpc_trace(
        traced: Any, exporter: SpanWaiter) -> None:
    async with OrionClient(traced.target, timeout=WAIT) as client:
        await client.execute_single_task(TaskStar("one", description="x"), "dev-1")
    (rpc,) = exporter.named("orion.v1.OrchestratorService/ExecuteSingleTask")
    (executed,) = exporter.named("device.execute")
    assert executed.parent.span_id == rpc.context.span_id  # no orion: the RPC is the parent


# ---------------------------------------------------------------------- off by default
@pytest.mark.parametrize("env", [{}, {"OTEL_TRACES_EXPORTER": "none"},
                                 {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}])
async def test_tracing_off_installs_no_interceptor_and_no_hooks(env: dict[str, str]) -> None:
    seen: list[dict[str, str]] = []

    async def record(assignment: Assignment) -> str:
        seen.append(dict(assignment.trace_context))
        return "ok"

    server = server_from_env(ServerConfig(port=0, grace=0.5), env)
    assert server.tracing is None
    await server.start()
    agent = DeviceAgent(server.target, "dev-1", "linux", executors={"record": record},
                        backoff_initial=0.05)
    try:
        assert not any(isinstance(i, TracingServerInterceptor) for i in server.interceptors)
        assert server.engine.orchestrator.tracer_hooks is None
        assert agent.tracer is None
        agent.start()
        await agent.wait_connected(WAIT)
        orion = TaskOrion(name="untraced")
        orion.add_task(TaskStar("a", description="a", target_device_id="dev-1"))
        async with OrionClient(server.target, timeout=WAIT) as client:
            assert (await client.orchestrate_orion(orion))["status"] == "completed"
        assert seen == [{}]  # no trace context travels
    finally:
        await agent.stop(timeout=1.0)
        await server.stop(0)


async def test_tracing_on_from_the_environment_installs_both() -> None:
    server = server_from_env(ServerConfig(port=0, grace=0.5), {"OTEL_TRACES_EXPORTER": "console"})
    assert server.tracing is not None
    await server.start()
    try:
        assert isinstance(server.interceptors[0], TracingServerInterceptor)  # outermost
        assert server.engine.orchestrator.tracer_hooks is not None
    finally:
        await server.stop(0)
        server.tracing.shutdown()


# ---------------------------------------------------------------------- configuration
def test_exporters_from_env() -> None:
    assert exporters_from_env({}) == []
    assert exporters_from_env({"OTEL_TRACES_EXPORTER": " Console , otlp,none"}) == [
        "console", "otlp"]
    assert exporters_from_env({"OTEL_TRACES_EXPORTER": "console",
                               "OTEL_SDK_DISABLED": "TRUE"}) == []
    with pytest.raises(TracingConfigError, match="zipkin"):
        exporters_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_console_exporter_writes_one_json_span_per_line(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    tracing = Tracing.from_env("orion-test", {"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    with tracing.tracer.start_as_current_span("outer"), \
            tracing.tracer.start_as_current_span("inner"):
        print("not a span")
    tracing.shutdown()
    out = capsys.readouterr().out
    spans = parse_console_spans(out)
    assert [s["name"] for s in spans] == ["inner", "outer"]
    assert spans[0]["parent_id"] == spans[1]["context"]["span_id"]
    assert spans[1]["resource"]["attributes"]["service.name"] == "orion-test"
    assert len(out.splitlines()) == 3


def test_otlp_without_its_package_is_a_clear_error_at_startup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                        None)  # as if the otlp extra were not installed
    with pytest.raises(TracingConfigError, match=r"pip install 'orion-grpc\[otlp\]'"):
        Tracing.from_env("orion-server", {"OTEL_TRACES_EXPORTER": "otlp"})
    with pytest.raises(TracingConfigError, match="http/json"):
        Tracing.from_env("orion-server", {"OTEL_TRACES_EXPORTER": "otlp",
                                          "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_orion_serve_refuses_to_start_with_a_bad_tracing_setup(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from orion_grpc.cli import main

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    assert main(["serve", "--port", "0"]) != 0
    captured = capsys.readouterr()
    assert "OTEL_TRACES_EXPORTER" in captured.err and "listening" not in captured.out


async def test_otlp_exports_to_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """The otlp extra, when installed: spans reach an OTLP/gRPC collector (a fake one here)."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2,
        trace_service_pb2_grpc,
    )

    received: list[Any] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request: Any, context: Any) -> Any:
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    collector = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    await collector.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "true")
    try:
        tracing = Tracing.from_env("orion-server", {"OTEL_TRACES_EXPORTER": "otlp"})
        assert tracing is not None
        with tracing.tracer.start_as_current_span("exported"):
            pass
        # The batch exporter sends from its own thread; flush without blocking this loop,
        # which serves the collector.
        assert await asyncio.to_thread(tracing.provider.force_flush, 10_000)
        await asyncio.to_thread(tracing.shutdown)
    finally:
        await collector.stop(0)
    names = [span.name for request in received for rs in request.resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    assert names == ["exported"]
