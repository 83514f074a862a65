"""Server metrics with the OpenTelemetry metrics API, cheap enough for the scheduler.

What is measured (Prometheus names; ``orion serve --metrics-port`` serves them, docs/operations.md):

- counters, from the engine's events: ``orion_stars_dispatched_total`` (attempts sent to a
  device), ``orion_stars_completed_total``, ``orion_stars_failed_total`` (failed for good,
  retries used up), ``orion_stars_retried_total`` (failed attempts another one follows),
  ``orion_stars_cancelled_total``, ``orion_orions_started_total``,
  ``orion_orions_finished_total{state}``;
- histograms: ``orion_star_dispatch_latency_seconds`` (a ready star's wait in the scheduler's
  queue for its device until its lease is sent), ``orion_star_attempt_duration_seconds
  {outcome}`` (lease sent -> result), ``orion_store_operation_duration_seconds{operation}``
  (fed by a store through ``observe_store`` / ``time_store``);
- gauges, read when metrics are collected: ``orion_stars_running``, ``orion_orions_running``,
  ``orion_devices_connected{device_type}``, ``orion_event_subscribers``,
  ``orion_device_streams`` (open DeviceService.Connect streams), and the process's
  ``orion_asyncio_tasks`` (tasks alive in the server's event loop) and
  ``process_resident_memory_bytes`` (Linux): a leak of streams, tasks or memory shows as
  growth across connects and disconnects (tests/faults/test_soak.py watches them).

Why it is cheap: an OpenTelemetry SDK ``add`` / ``record`` costs 5-20 us in CPython, as much as
the engine spends on a whole star. So nothing here calls the SDK per star on the scheduler's
path. Counters are plain ints bumped by an event-bus observer (which runs in its own task,
after the scheduler step) and read by observable instruments' callbacks at collection time;
the engine's hooks only append an attempt's two durations to a list, which the observer (or
the next collection) records into the SDK histograms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from .. import __version__
from ..core.device_manager import REASON_CANCELLED, Lease, LeaseOutcome
from ..core.events import Event, EventType, IEventObserver, OrionEvent

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

    from ..core.engine import OrionEngine
    from ..core.enums import OrionState
    from ..core.task_orion import TaskOrion
    from ..core.task_star import TaskStar

INSTRUMENTATION_NAME = "orion_grpc"
# Seconds: from sub-millisecond scheduler waits to hour-long stars.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, 1800.0, 3600.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0)
# Star events -> the counter each one bumps.
STAR_COUNTERS = {
    EventType.TASK_STARTED: ("orion_stars_dispatched", "attempts of stars sent to a device"),
    EventType.TASK_COMPLETED: ("orion_stars_completed", "stars completed"),
    EventType.TASK_FAILED: ("orion_stars_failed",
                            "stars failed for good (their retries used up, or no device)"),
    EventType.TASK_RETRYING: ("orion_stars_retried",
                              "failed attempts of stars that another attempt follows"),
    EventType.TASK_CANCELLED: ("orion_stars_cancelled",
                               "stars cancelled (orion cancelled, or a branch not taken)"),
}
ORION_END_EVENTS = frozenset({EventType.ORION_COMPLETED, EventType.ORION_FAILED,
                              EventType.ORION_CANCELLED})
_PENDING_LIMIT = 4096  # values held for a histogram before they are recorded anyway


class _DeferredHistogram:
    """A histogram whose values are appended now and recorded into the SDK later (``flush``):
    an append is ~0.1 us, an SDK ``record`` 5-20 us."""

    __slots__ = ("histogram", "pending")

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self.pending: list[tuple[float, Mapping[str, str] | None]] = []

    def observe(self, value: float, attributes: Mapping[str, str] | None = None) -> None:
        self.pending.append((value, attributes))
        if len(self.pending) >= _PENDING_LIMIT:  # nobody flushes: bound the memory
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        record = self.histogram.record
        for value, attributes in pending:
            record(value, attributes)


class MetricsHooks:
    """The engine's ``TracerHooks`` for metrics: per attempt, the dispatch latency and the
    attempt's duration (from the lease), appended for later recording."""

    def __init__(self, metrics: OrionMetrics) -> None:
        self._latency = metrics.dispatch_latency
        self._duration = metrics.attempt_duration

    def on_orion_start(self, orion: TaskOrion) -> None:
        return None

    def on_dispatch(self, orion: TaskOrion, task: TaskStar, attempt: int) -> dict[str, str]:
        return {}

    def on_attempt_end(self, orion: TaskOrion, task: TaskStar, lease: Lease,
                       outcome: LeaseOutcome) -> None:
        self._latency.observe(lease.queue_wait)
        outcome_name = "completed" if outcome.success else \
            ("cancelled" if outcome.reason == REASON_CANCELLED else "failed")
        self._duration.observe(max(0.0, time.time() - lease.started_at),
                               _OUTCOME_ATTRIBUTES[outcome_name])

    def on_orion_end(self, orion: TaskOrion, state: OrionState) -> None:
        return None


_OUTCOME_ATTRIBUTES = {name: {"outcome": name} for name in ("completed", "failed", "cancelled")}


class _EventCounter(IEventObserver):
    """Counts star and orion events (subscribed to the engine's bus; runs in its own task)."""

    def __init__(self, metrics: OrionMetrics) -> None:
        self.metrics = metrics
        self.stars: dict[EventType, int] = dict.fromkeys(STAR_COUNTERS, 0)
        self.orions_started = 0
        self.orions_finished: dict[str, int] = {}

    async def on_event(self, event: Event) -> None:
        kind = event.event_type
        if kind in self.stars:
            self.stars[kind] += 1
        elif kind is EventType.ORION_STARTED:
            self.orions_started += 1
        elif kind in ORION_END_EVENTS and isinstance(event, OrionEvent):
            state = event.orion_state or kind.value.removeprefix("orion_")
            self.orions_finished[state] = self.orions_finished.get(state, 0) + 1
        self.metrics.flush()  # record the durations the hooks appended for this attempt

    def __repr__(self) -> str:
        return "MetricsEventCounter"


class OrionMetrics:
    """A meter provider and Orion's instruments. ``attach(engine)`` starts measuring an engine;
    whoever creates it calls ``shutdown()`` at exit.

    ``reader`` (default: a ``PrometheusReader``) is what ``render()`` collects through; more
    readers (e.g. an OpenTelemetry ``PeriodicExportingMetricReader`` for OTLP) can be added.
    """

    def __init__(self, reader: MetricReader | None = None,
                 extra_readers: Iterable[MetricReader] = ()) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource

        from .prometheus import PrometheusReader

        self.reader = reader if reader is not None else PrometheusReader()
        self.provider: MeterProvider = MeterProvider(
            metric_readers=[self.reader, *extra_readers],
            resource=Resource.create({"service.name": "orion-server"}))
        meter = self.provider.get_meter(INSTRUMENTATION_NAME, __version__)
        self.meter = meter
        self.dispatch_latency = _DeferredHistogram(meter.create_histogram(
            "orion_star_dispatch_latency_seconds", unit="s",
            description="seconds a ready star waited in the scheduler's queue for its device "
                        "before its lease was sent",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS))
        self.attempt_duration = _DeferredHistogram(meter.create_histogram(
            "orion_star_attempt_duration_seconds", unit="s",
            description="seconds from an attempt's lease being sent to its result, by outcome",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS))
        self.store_latency = _DeferredHistogram(meter.create_histogram(
            "orion_store_operation_duration_seconds", unit="s",
            description="seconds an operation on the durable store took, by operation",
            explicit_bucket_boundaries_advisory=STORE_BUCKETS))
        self._histograms = (self.dispatch_latency, self.attempt_duration, self.store_latency)
        self._counter = _EventCounter(self)
        self._engine: OrionEngine | None = None
        self._subscribers: Callable[[], int] | None = None
        self._device_streams: Callable[[], int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._register_observables()

    # ------------------------------------------------------------------ wiring
    def attach(self, engine: OrionEngine, subscribers: Callable[[], int] | None = None,
               device_streams: Callable[[], int] | None = None) -> MetricsHooks:
        """Measure ``engine``: count its events, read its gauges; returns the engine hooks to
        install (``orchestrator.set_tracer_hooks``, combined with tracing's if any).
        ``subscribers`` counts the open event streams (the server's ``EventLog``),
        ``device_streams`` the open device streams (the DeviceService). Call it from the
        engine's event loop: its tasks are what ``orion_asyncio_tasks`` counts."""
        self._engine = engine
        self._subscribers = subscribers
        self._device_streams = device_streams
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        engine.bus.subscribe(self._counter, {*STAR_COUNTERS, EventType.ORION_STARTED,
                                             *ORION_END_EVENTS})
        return MetricsHooks(self)

    def detach(self) -> None:
        if self._engine is not None:
            self._engine.bus.unsubscribe(self._counter)

    # ------------------------------------------------------------------ the store hook
    def observe_store(self, operation: str, seconds: float) -> None:
        """A durable store reports how long ``operation`` (e.g. ``save_orion``) took."""
        self.store_latency.observe(seconds, {"operation": operation})

    @contextlib.contextmanager
    def time_store(self, operation: str) -> Iterator[None]:
        """``with metrics.time_store("save_orion"): ...`` -> ``observe_store``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_store(operation, time.perf_counter() - start)

    # ------------------------------------------------------------------ reading
    def flush(self) -> None:
        """Record the values the hot path appended (done before every collection, too)."""
        for histogram in self._histograms:
            if histogram.pending:
                histogram.flush()

    def render(self) -> str:
        """Everything in the Prometheus text exposition format (what ``/metrics`` serves)."""
        from .prometheus import PrometheusReader

        if not isinstance(self.reader, PrometheusReader):
            raise TypeError("render() needs the default PrometheusReader")
        self.flush()
        return self.reader.render()

    def shutdown(self) -> None:
        self.detach()
        self.flush()
        self.provider.shutdown()

    # ------------------------------------------------------------------ observables
    def _register_observables(self) -> None:
        meter = self.meter
        for kind, (name, description) in STAR_COUNTERS.items():
            meter.create_observable_counter(name, [self._star_callback(kind)], unit="{star}",
                                            description=description)
        meter.create_observable_counter(
            "orion_orions_started", [lambda _: [Observation(self._counter.orions_started)]],
            unit="{orion}", description="orion runs started")
        meter.create_observable_counter(
            "orion_orions_finished", [self._finished_orions], unit="{orion}",
            description="orion runs finished, by final state")
        meter.create_observable_gauge(
            "orion_stars_running", [self._engine_gauge(lambda e: e.devices.lease_count)],
            unit="{star}", description="attempts running on devices now")
        meter.create_observable_gauge(
            "orion_orions_running",
            [self._engine_gauge(lambda e: e.orchestrator.running_count)],
            unit="{orion}", description="orions running now")
        meter.create_observable_gauge(
            "orion_devices_connected", [self._devices], unit="{device}",
            description="devices connected now, by device type")
        meter.create_observable_gauge(
            "orion_event_subscribers", [self._event_subscribers], unit="{stream}",
            description="open WatchEvents streams")
        meter.create_observable_gauge(
            "orion_device_streams", [self._count(lambda: self._device_streams)],
            unit="{stream}", description="open DeviceService.Connect streams")
        meter.create_observable_gauge(
            "orion_asyncio_tasks", [self._asyncio_tasks], unit="{task}",
            description="asyncio tasks alive in the server's event loop")
        meter.create_observable_gauge(
            "process_resident_memory_bytes", [self._resident_memory], unit="By",
            description="resident set size of the server process (Linux)")

    def _star_callback(self, kind: EventType) -> Callable[[CallbackOptions], list[Observation]]:
        return lambda _: [Observation(self._counter.stars[kind])]

    def _finished_orions(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"state": state})
                for state, n in sorted(self._counter.orions_finished.items())]

    def _engine_gauge(self, read: Callable[[OrionEngine], int]
                      ) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(_: CallbackOptions) -> list[Observation]:
            return [] if self._engine is None else [Observation(read(self._engine))]
        return callback

    def _devices(self, _: CallbackOptions) -> list[Observation]:
        if self._engine is None:
            return []
        by_type: dict[str, int] = {}
        for info in self._engine.devices.get_online_devices():
            kind = info.device_type.value if info.device_type else (info.os or "unknown")
            by_type[kind] = by_type.get(kind, 0) + 1
        return [Observation(n, {"device_type": kind}) for kind, n in sorted(by_type.items())]

    @staticmethod
    def _count(source: Callable[[], Callable[[], int] | None]
               ) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(_: CallbackOptions) -> list[Observation]:
            read = source()
            return [] if read is None else [Observation(read())]
        return callback

    def _asyncio_tasks(self, _: CallbackOptions) -> list[Observation]:
        loop = self._loop
        if loop is None or loop.is_closed():
            return []
        return [Observation(len(asyncio.all_tasks(loop)))]

    @staticmethod
    def _resident_memory(_: CallbackOptions) -> list[Observation]:
        try:  # /proc/self/statm: size resident shared ... (in pages)
            with open("/proc/self/statm") as statm:
                pages = int(statm.read().split()[1])
        except (OSError, ValueError, IndexError):
            return []  # not Linux: no such gauge rather than a wrong one
        return [Observation(pages * os.sysconf("SC_PAGE_SIZE"))]

    def _event_subscribers(self, _: CallbackOptions) -> list[Observation]:
        return [] if self._subscribers is None else [Observation(self._subscribers())]
