"""Property tests: random DAGs run by the orchestrator agree with a pure reference model.

Each example builds a random layered DAG (1-40 stars) with random dependency types
(CONDITIONAL ones carry expressions over a deterministic handler result), random
per-star failures (always, or the first k attempts) and retry counts, on 1-4 FakeDevices
of capacity 1-3, runs ``orchestrate_orion`` and checks:

- every star ends terminal, with the status the reference simulation predicts
  (SEMANTICS.md §3: a star runs iff all its in-edges are satisfied; an unsatisfiable edge
  cancels it; a cancelled prerequisite satisfies UNCONDITIONAL / COMPLETION_ONLY only);
- no star was dispatched before all its prerequisites were terminal (checked at dispatch
  time on the device, and again on the event order);
- each star was attempted exactly as often as its failures and retries imply;
- results, the orion's final status, and device capacities are as expected.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conftest import Recorder
from hypothesis import given, settings
from hypothesis import strategies as st

from orion_grpc.core import (
    DependencyType,
    EventBus,
    EventType,
    FakeDevice,
    OrionDeviceManager,
    TaskOrion,
    TaskOrionOrchestrator,
    TaskPriority,
    TaskStar,
    TaskStarLine,
    TaskStatus,
)

COMPLETED, FAILED, CANCELLED = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED
TERMINAL_EVENTS = {EventType.TASK_COMPLETED, EventType.TASK_FAILED, EventType.TASK_CANCELLED}


@dataclass(frozen=True)
class EdgeKind:
    dep_type: DependencyType
    condition: str | None
    # Reference semantics for a finished (COMPLETED / FAILED) prerequisite with this score.
    holds: Callable[[TaskStatus, float], bool]
    satisfied_by_cancelled: bool


EDGE_KINDS = [
    EdgeKind(DependencyType.UNCONDITIONAL, None, lambda s, x: True, True),
    EdgeKind(DependencyType.COMPLETION_ONLY, None, lambda s, x: True, True),
    EdgeKind(DependencyType.SUCCESS_ONLY, None, lambda s, x: s is COMPLETED, False),
    EdgeKind(DependencyType.CONDITIONAL, None, lambda s, x: s is COMPLETED, False),
    # A failed prerequisite has no result: selecting a field of null is an evaluation
    # error, which leaves the edge unsatisfied.
    EdgeKind(DependencyType.CONDITIONAL, "result.score > 0.5",
             lambda s, x: s is COMPLETED and x > 0.5, False),
    EdgeKind(DependencyType.CONDITIONAL, 'success && result.score < 0.5',
             lambda s, x: s is COMPLETED and x < 0.5, False),
    EdgeKind(DependencyType.CONDITIONAL, 'status == "failed"', lambda s, x: s is FAILED, False),
]


@dataclass(frozen=True)
class StarSpec:
    parents: tuple[tuple[int, int], ...]  # (parent index, EDGE_KINDS index)
    outcome: str  # "ok", "fail" (every attempt), "flaky" (the first `flaky` attempts)
    flaky: int
    retry_count: int
    score: float
    priority: TaskPriority
    device: int


@dataclass(frozen=True)
class Scenario:
    stars: tuple[StarSpec, ...]
    capacities: tuple[int, ...]
    latencies: tuple[float, ...]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n_devices = draw(st.integers(1, 4))
    capacities = tuple(draw(st.lists(st.integers(1, 3), min_size=n_devices,
                                     max_size=n_devices)))
    latencies = tuple(draw(st.lists(st.sampled_from([0.0, 0.0005, 0.001]),
                                    min_size=n_devices, max_size=n_devices)))
    n = draw(st.integers(1, 40))
    n_layers = draw(st.integers(1, min(n, 8)))
    layers = sorted(draw(st.lists(st.integers(0, n_layers - 1), min_size=n, max_size=n)))
    stars = []
    for i in range(n):
        earlier = [j for j in range(i) if layers[j] < layers[i]]
        parents: list[int] = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) \
            if earlier else []
        kinds = [draw(st.integers(0, len(EDGE_KINDS) - 1)) for _ in parents]
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "flaky"]))
        stars.append(StarSpec(
            parents=tuple(zip(parents, kinds, strict=True)),
            outcome=outcome,
            flaky=draw(st.integers(1, 3)) if outcome == "flaky" else 0,
            retry_count=draw(st.integers(0, 2)),
            score=draw(st.sampled_from([0.2, 0.8])),
            priority=draw(st.sampled_from(list(TaskPriority))),
            device=draw(st.integers(0, n_devices - 1)),
        ))
    return Scenario(tuple(stars), capacities, latencies)


def tid(i: int) -> str:
    return f"s{i:02d}"


# ---------------------------------------------------------------------- reference model
def own_outcome(spec: StarSpec) -> TaskStatus:
    if spec.outcome == "fail":
        return FAILED
    if spec.outcome == "flaky" and spec.flaky > spec.retry_count:
        return FAILED
    return COMPLETED


def expected_attempts(spec: StarSpec, status: TaskStatus) -> int:
    if status is CANCELLED:
        return 0
    if spec.outcome == "fail":
        return spec.retry_count + 1
    if spec.outcome == "flaky":
        return min(spec.flaky, spec.retry_count) + 1
    return 1


def reference(scn: Scenario) -> list[TaskStatus]:
    """Statuses by pure simulation in index order (which is a topological order)."""
    status: list[TaskStatus] = []
    for spec in scn.stars:
        runs = True
        for parent, kind_index in spec.parents:
            kind, ps = EDGE_KINDS[kind_index], status[parent]
            ok = kind.satisfied_by_cancelled if ps is CANCELLED \
                else kind.holds(ps, scn.stars[parent].score)
            runs = runs and ok
        status.append(own_outcome(spec) if runs else CANCELLED)
    return status


def expected_orion_status(statuses: list[TaskStatus]) -> str:
    failed, completed = FAILED in statuses, COMPLETED in statuses
    if failed and completed:
        return "partially_failed"
    return "failed" if failed else "completed"


# ---------------------------------------------------------------------- running it
async def execute(scn: Scenario) -> tuple[TaskOrion, dict[str, Any], list[FakeDevice],
                                          Recorder, list[str]]:
    bus = EventBus()
    dm = OrionDeviceManager(event_bus=bus)
    recorder = Recorder()
    bus.subscribe(recorder)
    orion = TaskOrion()
    violations: list[str] = []

    def checked_latency(delay: float) -> Callable[[Any], float]:
        def latency(lease: Any) -> float:
            task = orion.get_task(lease.task_id)
            if task is None or task.status is not TaskStatus.RUNNING:
                violations.append(f"{lease.task_id} dispatched while {task and task.status}")
            for line in orion.get_task_dependencies(lease.task_id):
                prereq = orion.get_task(line.from_task_id)
                if not prereq.is_terminal:
                    violations.append(f"{lease.task_id} dispatched before {prereq.task_id} "
                                      f"finished ({prereq.status.value})")
            return delay
        return latency

    def handler(lease: Any) -> dict[str, float]:
        return {"score": lease.task_data["score"]}

    devices = []
    for k, (capacity, delay) in enumerate(zip(scn.capacities, scn.latencies, strict=True)):
        mine = [i for i, s in enumerate(scn.stars) if s.device == k]
        device = FakeDevice(
            f"d{k}", capacity=capacity, latency=checked_latency(delay), handler=handler,
            fail_task_ids={tid(i) for i in mine if scn.stars[i].outcome == "fail"},
            fail_attempts={tid(i): scn.stars[i].flaky for i in mine
                           if scn.stars[i].outcome == "flaky"})
        devices.append(await device.connect(dm))

    for i, spec in enumerate(scn.stars):
        orion.add_task(TaskStar(tid(i), description=f"star {i}", target_device_id=f"d{spec.device}",
                                priority=spec.priority, retry_count=spec.retry_count,
                                task_data={"score": spec.score}))
    for i, spec in enumerate(scn.stars):
        for parent, kind_index in spec.parents:
            kind = EDGE_KINDS[kind_index]
            orion.add_dependency(TaskStarLine(tid(parent), tid(i), kind.dep_type,
                                              condition=kind.condition))

    orch = TaskOrionOrchestrator(dm, event_bus=bus, retry_backoff_base=0.0,
                                 device_grace_period=0.0)
    try:
        result = await asyncio.wait_for(orch.orchestrate_orion(orion), 30)
        await asyncio.wait_for(bus.flush(recorder), 10)
    finally:
        await bus.close()
    return orion, result, devices, recorder, violations


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_random_dags_match_the_reference(scn: Scenario) -> None:
    orion, result, devices, recorder, violations = asyncio.run(execute(scn))
    expected = reference(scn)
    ids = [tid(i) for i in range(len(scn.stars))]

    # Every star is terminal, with the reference status.
    actual = [orion.get_task(t).status for t in ids]
    assert all(s in (COMPLETED, FAILED, CANCELLED) for s in actual), actual
    mismatches = {t: (a.value, e.value) for t, a, e in zip(ids, actual, expected, strict=True)
                  if a is not e}
    assert not mismatches, mismatches

    # No star was dispatched before its prerequisites were terminal.
    assert not violations, violations
    finished_at: dict[str, int] = {}
    for index, event in enumerate(recorder.events):
        if event.event_type in TERMINAL_EVENTS:
            finished_at.setdefault(event.task_id, index)  # type: ignore[attr-defined]
        elif event.event_type is EventType.TASK_STARTED:
            for line in orion.get_task_dependencies(event.task_id):  # type: ignore[attr-defined]
                assert finished_at.get(line.from_task_id, index) < index, \
                    (event.task_id, line.from_task_id)  # type: ignore[attr-defined]

    # Attempts: retries really happen, cancelled stars never reach a device.
    attempts = Counter(r.task_id for d in devices for r in d.received)
    for i, spec in enumerate(scn.stars):
        assert attempts[tid(i)] == expected_attempts(spec, expected[i]), (tid(i), spec)
    started = Counter(recorder.task_ids(EventType.TASK_STARTED))
    assert started == +attempts

    # Results and the orion's outcome.
    assert result["total_tasks"] == len(ids)
    assert result["status"] == expected_orion_status(expected)
    for i, t in enumerate(ids):
        if expected[i] is COMPLETED:
            assert result["results"][t] == {"score": scn.stars[i].score}
        else:
            assert result["results"][t] is None
            assert t in result["errors"]
    assert result["statistics"]["task_status_counts"] == {
        s.value: n for s, n in Counter(expected).items()}
    for device, capacity in zip(devices, scn.capacities, strict=True):
        assert device.max_running <= capacity
        assert device.running == 0
