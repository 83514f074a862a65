"""Metrics: what a real server counts while it runs orions, as Prometheus scrapes it.

A real grpc.aio OrionServer with ``metrics_port`` (the HTTP endpoint on loopback), in-process
FakeDevices on its engine, a real OrionClient; the page is fetched over HTTP and parsed with
prometheus_client's reference parser.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from api_support import EventWaiter, fleet
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client.parser import text_string_to_metric_families

from orion_grpc.api.server import OrionServer, ServerConfig
from orion_grpc.client import OrionClient
from orion_grpc.core import EventType, TaskOrion, TaskStar, TaskStarLine
from orion_grpc.observability import OrionMetrics, PrometheusReader
from orion_grpc.observability.prometheus import CONTENT_TYPE

WAIT = 10.0
MakeServer = Callable[..., Awaitable[OrionServer]]  # the make_server fixture


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


async def scrape(server: OrionServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the server's /metrics page."""
    assert server.metrics_endpoint is not None
    status, headers, text = await asyncio.to_thread(fetch, server.metrics_endpoint.url)
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    return samples(text)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(page: dict[Any, float], name: str, **labels: str) -> float:
    return page[(name, tuple(sorted(labels.items())))]


def pipeline() -> TaskOrion:
    """a -> b (fails once, retried) -> c; a -> d (always fails) -> e (cancelled)."""
    orion = TaskOrion("metrics-1", name="metrics")
    orion.add_task(TaskStar("a", description="a", target_device_id="d1"))
    orion.add_task(TaskStar("b", description="b", target_device_id="d1", retry_count=1))
    orion.add_task(TaskStar("c", description="c", target_device_id="d1"))
    orion.add_task(TaskStar("d", description="d", target_device_id="d1"))
    orion.add_task(TaskStar("e", description="e", target_device_id="d1"))
    for src, dst in (("a", "b"), ("b", "c"), ("a", "d"), ("d", "e")):
        orion.add_dependency(TaskStarLine(src, dst, "success_only"))
    return orion


async def test_a_scrape_after_an_orion_counts_its_stars_and_times_its_attempts(
        make_server: MakeServer) -> None:
    server = await make_server(metrics_port=0)
    await fleet(server, "d1", fail_attempts={"b": 1}, fail_task_ids={"d"})
    await fleet(server, "w1", device_type="windows")
    async with OrionClient(server.target, timeout=WAIT) as client:
        result = await client.orchestrate_orion(pipeline(), timeout=WAIT)
    assert result["status"] == "partially_failed"
    await server.engine.bus.flush()  # the counting observer has seen every event

    page = await scrape(server)
    # a, b twice, c, d: five attempts; b's first failed and was retried; d failed for good.
    assert value(page, "orion_stars_dispatched_total") == 5
    assert value(page, "orion_stars_completed_total") == 3
    assert value(page, "orion_stars_retried_total") == 1
    assert value(page, "orion_stars_failed_total") == 1
    assert value(page, "orion_stars_cancelled_total") == 1
    assert value(page, "orion_orions_started_total") == 1
    assert value(page, "orion_orions_finished_total", state="partially_failed") == 1
    assert value(page, "orion_star_attempt_duration_seconds_count", outcome="completed") == 3
    assert value(page, "orion_star_attempt_duration_seconds_count", outcome="failed") == 2
    assert value(page, "orion_star_attempt_duration_seconds_bucket", outcome="failed",
                 le="+Inf") == 2
    assert value(page, "orion_star_dispatch_latency_seconds_count") == 5
    assert 0 <= value(page, "orion_star_dispatch_latency_seconds_sum") < WAIT
    assert value(page, "orion_stars_running") == 0
    assert value(page, "orion_orions_running") == 0
    assert value(page, "orion_devices_connected", device_type="linux") == 1
    assert value(page, "orion_devices_connected", device_type="windows") == 1


async def test_gauges_show_what_runs_and_who_watches_now(make_server: MakeServer) -> None:
    server = await make_server(metrics_port=0)
    (device,) = await fleet(server, "d1", hang_task_ids={"slow"})
    orion = TaskOrion("gauges-1")
    orion.add_task(TaskStar("slow", description="hangs", target_device_id="d1"))
    waiter = EventWaiter(server)
    async with OrionClient(server.target, timeout=WAIT) as client:
        # with history: the first event arrives even if the submit's events are published
        # before the server has subscribed this stream (bookmarks are not yielded)
        watch = client.watch_events("gauges-1", include_history=True)
        first = asyncio.ensure_future(anext(watch))
        await client.submit_orion(orion)
        await waiter.wait(EventType.TASK_STARTED, "slow")
        await first  # the stream is open on the server
        page = await scrape(server)
        assert value(page, "orion_stars_running") == 1
        assert value(page, "orion_orions_running") == 1
        assert value(page, "orion_event_subscribers") == 1
        await client.cancel_orion("gauges-1")
        await waiter.wait(EventType.ORION_CANCELLED)
        await watch.aclose()
    await server.engine.bus.flush()
    page = await scrape(server)
    assert value(page, "orion_stars_running") == 0
    assert value(page, "orion_star_attempt_duration_seconds_count", outcome="cancelled") == 1
    assert value(page, "orion_orions_finished_total", state="cancelled") == 1
    assert device.device_id == "d1"


async def test_the_store_hook_times_operations() -> None:
    metrics = OrionMetrics()
    metrics.observe_store("save_orion", 0.002)
    with metrics.time_store("load_events"):
        pass
    page = samples(metrics.render())
    assert value(page, "orion_store_operation_duration_seconds_count", operation="save_orion") == 1
    assert value(page, "orion_store_operation_duration_seconds_sum",
                 operation="save_orion") == pytest.approx(0.002)
    assert value(page, "orion_store_operation_duration_seconds_count",
                 operation="load_events") == 1
    metrics.shutdown()


def test_the_text_format_escapes_labels_and_accumulates_buckets() -> None:
    reader = PrometheusReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    meter.create_counter("jobs", description='what "we"\nrun').add(2, {"path": 'a"b\\c\nd'})
    meter.create_up_down_counter("queue.depth").add(-3)
    histogram = meter.create_histogram("wait_seconds", explicit_bucket_boundaries_advisory=[1, 5])
    for v in (0.5, 2, 3, 10):
        histogram.record(v)
    text = reader.render()
    assert "# TYPE jobs_total counter" in text
    assert '# HELP jobs_total what "we"\\nrun' in text
    assert "# TYPE queue_depth gauge" in text
    page = samples(text)
    assert value(page, "jobs_total", path='a"b\\c\nd') == 2  # escaped, and parsed back
    assert value(page, "queue_depth") == -3
    assert [value(page, "wait_seconds_bucket", le=le) for le in ("1.0", "5.0", "+Inf")] == \
        [1, 3, 4]
    assert value(page, "wait_seconds_sum") == 15.5
    assert value(page, "wait_seconds_count") == 4


async def test_the_endpoint_answers_only_get_and_head_on_its_path(
        make_server: MakeServer) -> None:
    server = await make_server(metrics_port=0)
    url = server.metrics_endpoint.url  # type: ignore[union-attr]
    assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
    status, headers, body = await asyncio.to_thread(fetch, url, "HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 0
    status, _, body = await asyncio.to_thread(fetch, url.replace("/metrics", "/nope"))
    assert status == 404 and "/metrics" in body
    status, headers, _ = await asyncio.to_thread(fetch, url, "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


async def test_metrics_are_off_unless_a_port_is_given(make_server: MakeServer) -> None:
    server = await make_server()
    assert server.metrics is None and server.metrics_endpoint is None
    assert server.engine.orchestrator.tracer_hooks is None  # nothing on the scheduler's path
    config = ServerConfig.from_sources({}, env={"ORION_METRICS_PORT": "9464",
                                                "ORION_METRICS_HOST": "0.0.0.0"})
    assert (config.metrics_port, config.metrics_host) == (9464, "0.0.0.0")
    assert ServerConfig.from_sources({}, env={"ORION_METRICS_PORT": ""}).metrics_port is None
    with pytest.raises(ValueError, match="metrics_port 70000 is not in 0..65535"):
        ServerConfig.from_sources({"metrics_port": 70000}, env={})


async def test_gauges_of_device_streams_tasks_and_memory(make_server: MakeServer) -> None:
    from orion_grpc.device import DeviceAgent

    server = await make_server(metrics_port=0)
    before = await scrape(server)
    agent = DeviceAgent(server.target, "d1", "linux")
    agent.start()
    await agent.wait_connected(WAIT)
    during = await scrape(server)
    await agent.stop(timeout=WAIT)
    await server.device_service.wait_for_no_session("d1", timeout=WAIT)
    assert value(before, "orion_device_streams") == 0
    assert value(during, "orion_device_streams") == 1
    # A session is a handler, a reader, a writer and a watchdog: four tasks more.
    assert value(during, "orion_asyncio_tasks") >= value(before, "orion_asyncio_tasks") + 4
    if sys.platform == "linux":
        assert value(during, "process_resident_memory_bytes") > 10 * 1024 * 1024
