"""TaskOrionOrchestrator end to end on FakeDevices (SEMANTICS.md §2, §3, §5, §9, §10)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import fleet

from orion_grpc.core import (
    AlreadyExistsError,
    DependencyType,
    Event,
    EventBus,
    EventType,
    FailedPreconditionError,
    FakeDevice,
    IEventObserver,
    InvalidArgumentError,
    OrionDeviceManager,
    OrionState,
    TaskExecutionError,
    TaskOrion,
    TaskOrionOrchestrator,
    TaskPriority,
    TaskStar,
    TaskStarLine,
    TaskStatus,
    UnavailableError,
)

RUN_TIMEOUT = 10.0


def star(task_id: str, device: str | None = "d1", **kw: Any) -> TaskStar:
    return TaskStar(task_id, description=f"do {task_id}", target_device_id=device, **kw)


def make_orion(*stars: TaskStar, edges: tuple[tuple[Any, ...], ...] = (),
               name: str | None = None) -> TaskOrion:
    """``edges``: (from, to) or (from, to, DependencyType) or (from, to, type, condition)."""
    orion = TaskOrion(name=name)
    for s in stars:
        orion.add_task(s)
    for edge in edges:
        src, dst, *rest = edge
        dep_type = rest[0] if rest else DependencyType.UNCONDITIONAL
        condition = rest[1] if len(rest) > 1 else None
        orion.add_dependency(TaskStarLine(src, dst, dep_type, condition=condition))
    return orion


async def run(orch: TaskOrionOrchestrator, orion: TaskOrion, **kw: Any) -> dict[str, Any]:
    return await asyncio.wait_for(orch.orchestrate_orion(orion, **kw), RUN_TIMEOUT)


def score_handler(lease: Any) -> dict[str, Any]:
    return {"score": lease.task_data.get("score", 0.0), "task": lease.task_id}


def status_of(orion: TaskOrion) -> dict[str, TaskStatus]:
    return {t.task_id: t.status for t in orion.get_all_tasks()}


# ---------------------------------------------------------------------- return value
async def test_return_value_has_real_results_errors_status_and_statistics(dm, orchestrator):
    await fleet(dm, "d1")
    await fleet(dm, "d2", fail_task_ids={"bad"})
    orion = make_orion(star("a"), star("b", "d2"), star("c"), star("bad", "d2"),
                       edges=(("a", "b"), ("a", "c"), ("b", "bad")), name="ret")

    result = await run(orchestrator, orion)

    assert set(result) >= {"results", "errors", "status", "total_tasks", "statistics"}
    assert result["total_tasks"] == 4
    assert result["status"] == OrionState.PARTIALLY_FAILED.value
    assert result["results"]["a"] == {"device_id": "d1", "task_id": "a", "status": "ok"}
    assert result["results"]["b"] == {"device_id": "d2", "task_id": "b", "status": "ok"}
    assert result["results"]["bad"] is None
    assert set(result["errors"]) == {"bad"}
    assert "bad fails on d2" in result["errors"]["bad"]
    stats = result["statistics"]
    assert stats["orion_id"] == orion.orion_id and stats["name"] == "ret"
    assert stats["total_tasks"] == 4 and stats["total_dependencies"] == 3
    assert stats["task_status_counts"] == {"completed": 3, "failed": 1}
    assert stats["longest_path_length"] == 3
    assert stats["longest_path_tasks"] == ["a", "b", "bad"]
    assert stats["max_width"] == 2
    assert stats["parallelism_calculation_mode"] == "actual_time"
    assert stats["execution_duration"] is not None and stats["execution_duration"] >= 0
    assert stats["execution_start_time"] and stats["execution_end_time"]
    assert stats["state"] == "partially_failed"


async def test_all_success_status_completed(dm, orchestrator):
    await fleet(dm, "d1")
    orion = make_orion(star("a"), star("b"), edges=(("a", "b"),))
    result = await run(orchestrator, orion)
    assert result["status"] == "completed"
    assert result["errors"] == {}
    assert all(t.status is TaskStatus.COMPLETED for t in orion.get_all_tasks())
    assert orion.state is OrionState.COMPLETED


# ---------------------------------------------------------------------- dependency types
DEP_CASES = [
    # (type, condition, parent fails, parent score, expected child status)
    (DependencyType.UNCONDITIONAL, None, False, 0.9, TaskStatus.COMPLETED),
    (DependencyType.UNCONDITIONAL, None, True, 0.9, TaskStatus.COMPLETED),
    (DependencyType.SUCCESS_ONLY, None, False, 0.9, TaskStatus.COMPLETED),
    (DependencyType.SUCCESS_ONLY, None, True, 0.9, TaskStatus.CANCELLED),
    (DependencyType.COMPLETION_ONLY, None, False, 0.9, TaskStatus.COMPLETED),
    (DependencyType.COMPLETION_ONLY, None, True, 0.9, TaskStatus.COMPLETED),
    (DependencyType.CONDITIONAL, "result.score > 0.5", False, 0.9, TaskStatus.COMPLETED),
    (DependencyType.CONDITIONAL, "result.score > 0.5", False, 0.2, TaskStatus.CANCELLED),
    (DependencyType.CONDITIONAL, "result.score > 0.5", True, 0.9, TaskStatus.CANCELLED),
    (DependencyType.CONDITIONAL, 'status == "failed"', True, 0.9, TaskStatus.COMPLETED),
    (DependencyType.CONDITIONAL, None, False, 0.9, TaskStatus.COMPLETED),
    (DependencyType.CONDITIONAL, None, True, 0.9, TaskStatus.CANCELLED),
]


@pytest.mark.parametrize(("dep_type", "condition", "parent_fails", "score", "expected"),
                         DEP_CASES)
async def test_dependency_type_at_run_level(dm, orchestrator, recorder, dep_type, condition,
                                            parent_fails, score, expected):
    (dev,) = await fleet(dm, "d1", handler=score_handler,
                         fail_task_ids={"parent"} if parent_fails else set())
    orion = make_orion(star("parent", task_data={"score": score}), star("child"),
                       edges=(("parent", "child", dep_type, condition),))

    result = await run(orchestrator, orion)

    parent, child = orion.get_task("parent"), orion.get_task("child")
    assert parent.status is (TaskStatus.FAILED if parent_fails else TaskStatus.COMPLETED)
    assert child.status is expected
    received = [r.task_id for r in dev.received]
    if expected is TaskStatus.COMPLETED:
        assert received == ["parent", "child"]
        assert result["results"]["child"] == {"score": 0.0, "task": "child"}
    else:
        assert received == ["parent"]  # the child never reached a device
        assert "parent" in str(child.error), child.error  # the reason names the prerequisite
        assert "child" in result["errors"]
        await orchestrator.event_bus.flush(recorder)
        cancelled = recorder.of_type(EventType.TASK_CANCELLED)
        assert [e.task_id for e in cancelled] == ["child"]
        assert cancelled[0].status == "cancelled"
    if not parent_fails:
        assert result["results"]["parent"] == {"score": score, "task": "parent"}


async def test_unsatisfiable_edge_cancels_transitively_but_unconditional_edge_runs(
        dm, orchestrator):
    (dev,) = await fleet(dm, "d1", fail_task_ids={"a"})
    orion = make_orion(star("a"), star("b"), star("c"), star("d"),
                       edges=(("a", "b", DependencyType.SUCCESS_ONLY),
                              ("b", "c", DependencyType.SUCCESS_ONLY),
                              ("c", "d", DependencyType.UNCONDITIONAL)))
    result = await run(orchestrator, orion)
    assert status_of(orion) == {"a": TaskStatus.FAILED, "b": TaskStatus.CANCELLED,
                                "c": TaskStatus.CANCELLED, "d": TaskStatus.COMPLETED}
    assert "a" in str(orion.get_task("b").error)
    assert "b" in str(orion.get_task("c").error)
    assert [r.task_id for r in dev.received] == ["a", "d"]
    assert result["status"] == "partially_failed"


# ---------------------------------------------------------------------- ordering
async def test_no_star_starts_before_its_prerequisites_finish(dm, orchestrator, recorder):
    devices = await fleet(dm, "d1", "d2", "d3", capacity=2, latency=0.002)
    # A diamond-of-diamonds: every star's device order differs from its DAG order.
    ids = [f"s{i}" for i in range(12)]
    edges = (("s0", "s1"), ("s0", "s2"), ("s1", "s3"), ("s2", "s3"), ("s3", "s4"),
             ("s3", "s5"), ("s3", "s6"), ("s4", "s7"), ("s5", "s7"), ("s6", "s8"),
             ("s7", "s9"), ("s8", "s9"), ("s9", "s10"), ("s9", "s11"))
    orion = make_orion(*(star(t, f"d{i % 3 + 1}") for i, t in enumerate(ids)), edges=edges)

    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    assert result["status"] == "completed"
    position: dict[tuple[EventType, str], int] = {}
    for index, event in enumerate(recorder.events):
        if event.event_type in (EventType.TASK_STARTED, EventType.TASK_COMPLETED):
            position.setdefault((event.event_type, event.task_id), index)
    for src, dst in edges:
        assert position[(EventType.TASK_COMPLETED, src)] < position[(EventType.TASK_STARTED, dst)]
    # And from the devices' point of view: each device saw every star exactly once.
    assert sorted(r.task_id for d in devices for r in d.received) == sorted(ids)


async def test_ready_stars_dispatch_highest_priority_first(dm, orchestrator):
    (dev,) = await fleet(dm, "d1", capacity=1)
    orion = make_orion(star("low", priority=TaskPriority.LOW),
                       star("critical", priority=TaskPriority.CRITICAL),
                       star("medium", priority=TaskPriority.MEDIUM),
                       star("high", priority=TaskPriority.HIGH),
                       star("low2", priority=TaskPriority.LOW))
    await run(orchestrator, orion)
    assert [r.task_id for r in dev.received] == ["critical", "high", "medium", "low", "low2"]


async def test_priority_applies_to_stars_that_become_ready_together(dm, orchestrator):
    (dev,) = await fleet(dm, "d1", capacity=1)
    orion = make_orion(star("root"), star("x", priority=TaskPriority.LOW),
                       star("y", priority=TaskPriority.CRITICAL),
                       star("z", priority=TaskPriority.HIGH),
                       edges=(("root", "x"), ("root", "y"), ("root", "z")))
    await run(orchestrator, orion)
    assert [r.task_id for r in dev.received] == ["root", "y", "z", "x"]


# ---------------------------------------------------------------------- capacity
async def test_device_capacity_is_never_exceeded(dm, orchestrator):
    d1, d2 = await fleet(dm, "d1", "d2", capacity=2, latency=0.01)
    orion = make_orion(*(star(f"t{i}", "d1" if i % 2 else "d2") for i in range(10)))
    result = await run(orchestrator, orion)
    assert result["status"] == "completed"
    assert d1.max_running == 2 and d2.max_running == 2  # used fully, never exceeded
    assert len(d1.received) == 5 and len(d2.received) == 5


async def test_capacity_one_serialises(dm, orchestrator):
    (dev,) = await fleet(dm, "d1", capacity=1, latency=0.005)
    orion = make_orion(*(star(f"t{i}") for i in range(5)))
    await run(orchestrator, orion)
    assert dev.max_running == 1
    assert len(dev.received) == 5


async def test_max_concurrent_tasks_caps_running_stars(dm, bus):
    running = 0
    peak = 0

    def latency(lease: Any) -> float:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        return 0.005

    def handler(lease: Any) -> str:
        nonlocal running
        running -= 1
        return lease.task_id

    await fleet(dm, "d1", "d2", capacity=3, latency=latency, handler=handler)
    orch = TaskOrionOrchestrator(dm, event_bus=bus, retry_backoff_base=0.0,
                                 device_grace_period=0.0, max_concurrent_tasks=2)
    orion = make_orion(*(star(f"t{i}", "d1" if i < 6 else "d2") for i in range(10)))
    result = await run(orch, orion)
    assert result["status"] == "completed"
    assert peak == 2
    assert result["results"] == {f"t{i}": f"t{i}" for i in range(10)}


# ---------------------------------------------------------------------- retries and timeouts
async def test_retries_really_happen_and_succeed(dm, orchestrator, recorder):
    (dev,) = await fleet(dm, "d1", fail_attempts={"t": 2})
    orion = make_orion(star("t", retry_count=2))
    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    task = orion.get_task("t")
    assert task.status is TaskStatus.COMPLETED
    assert task.current_retry == 2
    assert [(r.task_id, r.attempt) for r in dev.received] == [("t", 0), ("t", 1), ("t", 2)]
    assert result["status"] == "completed"
    retrying = recorder.of_type(EventType.TASK_RETRYING)
    assert len(retrying) == 2
    assert [e.data["reason"] for e in retrying] == ["task_error", "task_error"]
    assert all(e.task_id == "t" and e.data["orion_id"] == orion.orion_id for e in retrying)
    assert recorder.task_ids(EventType.TASK_STARTED) == ["t", "t", "t"]
    assert recorder.task_ids(EventType.TASK_COMPLETED) == ["t"]
    assert recorder.task_ids(EventType.TASK_FAILED) == []


async def test_retries_exhausted_fails(dm, orchestrator, recorder):
    (dev,) = await fleet(dm, "d1", fail_attempts={"t": 2})
    orion = make_orion(star("t", retry_count=1), star("after"),
                       edges=(("t", "after", DependencyType.SUCCESS_ONLY),))
    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    task = orion.get_task("t")
    assert task.status is TaskStatus.FAILED
    assert task.current_retry == 1
    assert len(dev.received) == 2
    assert orion.get_task("after").status is TaskStatus.CANCELLED
    assert result["status"] == "failed"
    assert len(recorder.of_type(EventType.TASK_RETRYING)) == 1
    failed = recorder.of_type(EventType.TASK_FAILED)
    assert [e.task_id for e in failed] == ["t"]
    assert failed[0].data["reason"] == "task_error"


async def test_timeout_fails_attempt_retries_and_cancels_on_device(dm, orchestrator, recorder):
    (dev,) = await fleet(dm, "d1", hang_task_ids={"t"})
    orion = make_orion(star("t", timeout=0.05, retry_count=1))
    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    task = orion.get_task("t")
    assert task.status is TaskStatus.FAILED
    assert getattr(task.error, "reason", None) == "timeout"
    assert "timed out" in result["errors"]["t"]
    assert [r.attempt for r in dev.received] == [0, 1]  # retried once
    assert [reason for _, reason in dev.cancelled] == ["timeout", "timeout"]
    assert {lease for lease, _ in dev.cancelled} == {r.lease_id for r in dev.received}
    assert dev.running == 0
    assert [e.data["reason"] for e in recorder.of_type(EventType.TASK_RETRYING)] == ["timeout"]
    assert recorder.of_type(EventType.TASK_FAILED)[0].data["reason"] == "timeout"
    assert dm.running_count("d1") == 0


async def test_timeout_does_not_fire_for_fast_star(dm, orchestrator):
    (dev,) = await fleet(dm, "d1", latency=0.001)
    orion = make_orion(star("t", timeout=5.0))
    await run(orchestrator, orion)
    assert orion.get_task("t").status is TaskStatus.COMPLETED
    assert dev.cancelled == []


async def test_a_rejected_star_is_retried_on_another_eligible_device(dm, orchestrator, recorder):
    picky, other = await fleet(dm, "picky", "other")
    picky.reject_task_ids = {"t"}
    orion = make_orion(star("t", "picky", retry_count=1), star("u", "picky"))
    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    assert result["status"] == "completed", result["errors"]
    retrying = recorder.of_type(EventType.TASK_RETRYING)
    assert [(e.task_id, e.data["reason"], e.data["failed_device_id"]) for e in retrying] == \
        [("t", "rejected", "picky")]
    assert [(r.task_id, r.attempt) for r in other.received] == [("t", 1)]
    assert orion.get_task("t").target_device_id == "other"
    # Only the refused star moved: the device still runs what it accepts.
    assert sorted(r.task_id for r in picky.received) == ["t", "u"]
    assert orion.get_task("u").target_device_id == "picky"


async def test_a_rejected_star_goes_back_to_its_device_when_no_other_is_eligible(
        dm, orchestrator, recorder):
    (picky,) = await fleet(dm, "picky", reject_task_ids={"t"})
    windows = await FakeDevice("win", "windows").connect(dm)
    orion = make_orion(star("t", "picky", retry_count=2, device_type="linux"))
    result = await run(orchestrator, orion)

    assert result["status"] == "failed"
    assert getattr(orion.get_task("t").error, "reason", None) == "rejected"
    assert [r.attempt for r in picky.received] == [0, 1, 2]
    assert windows.received == []  # never eligible for a linux star


async def test_a_star_every_eligible_device_rejects_fails_after_its_retries(
        dm, orchestrator, recorder):
    a, b = await fleet(dm, "a", "b", reject_task_ids={"t"})
    orion = make_orion(star("t", "a", retry_count=3))
    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    assert result["status"] == "failed"
    assert getattr(orion.get_task("t").error, "reason", None) == "rejected"
    # a refused, then b, then neither is left unrefused: back to the assigned order.
    assert [e.data["device_id"] for e in recorder.of_type(EventType.TASK_STARTED)][:2] == \
        ["a", "b"]
    assert len(a.received) + len(b.received) == 4


# ---------------------------------------------------------------------- device loss
async def test_device_disconnect_mid_run_retries_on_another_device(dm, orchestrator, recorder):
    d1, d2 = await fleet(dm, "d1", "d2")
    d1.disconnect_after = 1
    orion = make_orion(star("t", "d1", retry_count=1), star("queued", "d1"),
                       star("later", "d1"), edges=(("t", "later"),))
    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    assert result["status"] == "completed", result["errors"]
    retrying = recorder.of_type(EventType.TASK_RETRYING)
    assert [(e.task_id, e.data["reason"], e.data["failed_device_id"]) for e in retrying] == \
        [("t", "device_disconnection", "d1")]
    assert len(d1.received) == 1
    # t was retried elsewhere, and the stars waiting for d1 moved to d2 as well.
    assert sorted(r.task_id for r in d2.received) == ["later", "queued", "t"]
    assert orion.get_task("t").target_device_id == "d2"
    assert orion.get_task("t").current_retry == 1
    assert d1.closed_reason is not None
    assert not dm.is_online("d1")


async def test_device_disconnect_without_retries_fails_the_star(dm, orchestrator):
    d1, d2 = await fleet(dm, "d1", "d2")
    d1.disconnect_after = 1
    orion = make_orion(star("t", "d1"))
    result = await run(orchestrator, orion)
    task = orion.get_task("t")
    assert task.status is TaskStatus.FAILED
    assert getattr(task.error, "reason", None) == "device_disconnection"
    assert result["status"] == "failed"
    assert d2.received == []


async def test_device_disconnect_with_no_other_device_fails(dm, orchestrator, recorder):
    (d1,) = await fleet(dm, "d1", disconnect_after=1)
    orion = make_orion(star("t", retry_count=2), star("u"))
    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    assert result["status"] == "failed"
    for tid in ("t", "u"):
        task = orion.get_task(tid)
        assert task.status is TaskStatus.FAILED
        assert getattr(task.error, "reason", None) == "device_disconnection", tid
    assert len(d1.received) == 1
    failed = recorder.of_type(EventType.TASK_FAILED)
    assert sorted(e.task_id for e in failed) == ["t", "u"]
    assert {e.data["reason"] for e in failed} == {"device_disconnection"}


# ---------------------------------------------------------------------- cancellation
async def test_cancel_orion_mid_run(dm, orchestrator, recorder):
    (dev,) = await fleet(dm, "d1", hang_task_ids={"slow"})
    orion = make_orion(star("slow"), star("next"), star("other"),
                       edges=(("slow", "next"), ("slow", "other")))
    runner = asyncio.create_task(orchestrator.orchestrate_orion(orion))
    started = await recorder.wait_for(EventType.TASK_STARTED)
    assert started.task_id == "slow"
    assert orchestrator.is_running(orion.orion_id)

    assert await asyncio.wait_for(orchestrator.cancel_orion(orion.orion_id), RUN_TIMEOUT)
    result = await asyncio.wait_for(runner, RUN_TIMEOUT)

    assert result["status"] == "cancelled"
    assert orion.state is OrionState.CANCELLED
    assert set(status_of(orion).values()) == {TaskStatus.CANCELLED}
    assert [lease for lease, _ in dev.cancelled] == [dev.received[0].lease_id]
    assert dev.running == 0 and dm.running_count("d1") == 0
    assert not orchestrator.is_running(orion.orion_id)
    event = await recorder.wait_for(EventType.ORION_CANCELLED)
    assert event.orion_id == orion.orion_id and event.orion_state == "cancelled"
    assert await orchestrator.cancel_orion(orion.orion_id) is False  # no longer running

    # The orchestrator stays usable.
    again = make_orion(star("a"), star("b"), edges=(("a", "b"),))
    assert (await run(orchestrator, again))["status"] == "completed"


async def test_cancelling_the_awaiting_task_cancels_the_orion(dm, orchestrator, recorder):
    (dev,) = await fleet(dm, "d1", hang_task_ids={"slow"})
    orion = make_orion(star("slow"), star("next"), edges=(("slow", "next"),))
    runner = asyncio.create_task(orchestrator.orchestrate_orion(orion))
    await recorder.wait_for(EventType.TASK_STARTED)

    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, RUN_TIMEOUT)

    assert orion.state is OrionState.CANCELLED
    assert set(status_of(orion).values()) == {TaskStatus.CANCELLED}
    assert [lease for lease, _ in dev.cancelled] == [dev.received[0].lease_id]
    assert dm.running_count("d1") == 0
    assert not orchestrator.is_running(orion.orion_id)
    event = await recorder.wait_for(EventType.ORION_CANCELLED)
    assert event.orion_id == orion.orion_id
    again = make_orion(star("a"))
    assert (await run(orchestrator, again))["status"] == "completed"


async def test_cancel_unknown_orion_returns_false(orchestrator):
    assert await orchestrator.cancel_orion("no-such-orion") is False


# ---------------------------------------------------------------------- validation
async def test_invalid_dag_is_rejected(dm, orchestrator):
    await fleet(dm, "d1")
    orion = make_orion(star("a"), star("b"), edges=(("a", "b"),))
    # add_dependency refuses cycles, so plant one below the public API.
    orion._link(TaskStarLine("b", "a"))
    with pytest.raises(InvalidArgumentError, match="DAG contains cycles"):
        await run(orchestrator, orion)
    assert orchestrator.orion_manager.get_orion(orion.orion_id) is None


async def test_no_device_manager(bus):
    orch = TaskOrionOrchestrator(event_bus=bus)
    with pytest.raises(FailedPreconditionError, match="OrionDeviceManager not set"):
        await orch.orchestrate_orion(make_orion(star("a")))


async def test_missing_assignments_message(dm, orchestrator):
    await fleet(dm, "d1", "d2")
    orion = make_orion(star("a", None), star("b", "d1"), star("c", "ghost"))
    with pytest.raises(ValueError) as info:
        await run(orchestrator, orion)
    message = str(info.value)
    assert "Tasks without device assignment" in message and "'a'" in message
    assert "Available devices" in message and "d1" in message and "d2" in message
    assert "ghost" in message
    assert orion.get_task("a").status is TaskStatus.PENDING  # nothing ran


async def test_unknown_strategy(dm, orchestrator):
    await fleet(dm, "d1")
    with pytest.raises(ValueError, match="Unknown assignment strategy: bogus"):
        await run(orchestrator, make_orion(star("a", None)), assignment_strategy="bogus")


async def test_strategy_assigns_devices_when_none_given(dm, orchestrator):
    d1, d2 = await fleet(dm, "d1", "d2")
    orion = make_orion(star("a", None), star("b", None), star("c", None), star("d", None))
    result = await run(orchestrator, orion, assignment_strategy="round_robin")
    assert result["status"] == "completed"
    assert [r.task_id for r in d1.received] == ["a", "c"]
    assert [r.task_id for r in d2.received] == ["b", "d"]


async def test_explicit_device_assignments(dm, orchestrator):
    d1, d2 = await fleet(dm, "d1", "d2")
    orion = make_orion(star("a", None), star("b", "d1"))
    await run(orchestrator, orion, device_assignments={"a": "d2", "b": "d2"})
    assert d1.received == []
    assert sorted(r.task_id for r in d2.received) == ["a", "b"]


async def test_same_orion_twice_concurrently(dm, orchestrator, recorder):
    await fleet(dm, "d1", hang_task_ids={"slow"})
    orion = make_orion(star("slow"))
    runner = asyncio.create_task(orchestrator.orchestrate_orion(orion))
    await recorder.wait_for(EventType.TASK_STARTED)
    with pytest.raises(AlreadyExistsError):
        await orchestrator.orchestrate_orion(orion)
    assert orchestrator.is_running(orion.orion_id)  # the first run is untouched
    await orchestrator.cancel_orion(orion.orion_id)
    assert (await asyncio.wait_for(runner, RUN_TIMEOUT))["status"] == "cancelled"


# ---------------------------------------------------------------------- manager & events
async def test_manager_has_the_orion_after_the_run(dm, orchestrator):
    await fleet(dm, "d1")
    orion = make_orion(star("a"), star("b"), edges=(("a", "b"),))
    await run(orchestrator, orion, metadata={"owner": "tests"})
    status = await orchestrator.orion_manager.get_orion_status(orion.orion_id)
    assert status is not None
    assert status["state"] == "completed"
    assert status["completed_tasks"] == ["a", "b"]
    assert status["failed_tasks"] == [] and status["running_tasks"] == []
    assert status["metadata"] == {"owner": "tests"}
    assert (await orchestrator.get_orion_status(orion.orion_id))["state"] == "completed"
    listed = orchestrator.orion_manager.list_orions()
    assert [o["orion_id"] for o in listed] == [orion.orion_id]


async def test_orion_events_published_with_payloads(dm, orchestrator, recorder):
    await fleet(dm, "d1")
    orion = make_orion(star("a"), star("b"), edges=(("a", "b"),))
    await run(orchestrator, orion, metadata={"origin": "test"})
    await orchestrator.event_bus.flush(recorder)

    started = recorder.of_type(EventType.ORION_STARTED)
    assert len(started) == 1
    assert started[0].orion_id == orion.orion_id
    assert started[0].data["total_tasks"] == 2
    assert started[0].data["device_assignments"] == {"a": "d1", "b": "d1"}
    assert started[0].data["origin"] == "test"
    done = recorder.of_type(EventType.ORION_COMPLETED)
    assert len(done) == 1 and not recorder.of_type(EventType.ORION_FAILED)
    assert done[0].orion_state == "completed"
    assert done[0].data["total_tasks"] == 2
    assert done[0].data["statistics"]["task_status_counts"] == {"completed": 2}
    assert done[0].data["execution_duration"] is not None
    # ORION_STARTED comes first and ORION_COMPLETED last among this run's events.
    types = [e.event_type for e in recorder.events
             if e.event_type.value.startswith(("task_", "orion_"))]
    assert types[0] is EventType.ORION_STARTED and types[-1] is EventType.ORION_COMPLETED


@pytest.mark.parametrize("fail", [{"a"}, {"a", "b"}])
async def test_orion_failed_published_when_any_star_failed(dm, orchestrator, recorder, fail):
    await fleet(dm, "d1", fail_task_ids=fail)
    orion = make_orion(star("a"), star("b"))
    result = await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)
    expected = "failed" if len(fail) == 2 else "partially_failed"
    assert result["status"] == expected
    failed = recorder.of_type(EventType.ORION_FAILED)
    assert len(failed) == 1 and not recorder.of_type(EventType.ORION_COMPLETED)
    assert failed[0].orion_state == expected
    assert failed[0].data["statistics"]["task_status_counts"]["failed"] == len(fail)


async def test_task_events_carry_fields(dm, orchestrator, recorder):
    await fleet(dm, "d1", fail_task_ids={"bad"})
    orion = make_orion(star("good"), star("bad"))
    await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)

    started = {e.task_id: e for e in recorder.of_type(EventType.TASK_STARTED)}
    assert set(started) == {"good", "bad"}
    assert started["good"].status == "running"
    assert started["good"].data["orion_id"] == orion.orion_id
    assert started["good"].data["device_id"] == "d1"
    (completed,) = recorder.of_type(EventType.TASK_COMPLETED)
    assert completed.task_id == "good" and completed.status == "completed"
    assert completed.result == {"device_id": "d1", "task_id": "good", "status": "ok"}
    assert completed.error is None
    assert completed.data["orion_id"] == orion.orion_id
    assert completed.source_id and completed.timestamp > 0
    (failed,) = recorder.of_type(EventType.TASK_FAILED)
    assert failed.task_id == "bad" and failed.status == "failed"
    assert failed.result is None
    assert "bad fails on d1" in failed.error
    assert failed.data["orion_id"] == orion.orion_id


async def test_newly_ready_tasks_in_completion_event(dm, orchestrator, recorder):
    await fleet(dm, "d1")
    orion = make_orion(star("a"), star("b"), star("c"), edges=(("a", "b"), ("a", "c")))
    await run(orchestrator, orion)
    await orchestrator.event_bus.flush(recorder)
    first = recorder.of_type(EventType.TASK_COMPLETED)[0]
    assert first.task_id == "a"
    assert sorted(first.data["newly_ready_tasks"]) == ["b", "c"]


class _SlowObserver(IEventObserver):
    def __init__(self) -> None:
        self.never = asyncio.Event()
        self.seen = 0

    async def on_event(self, event: Event) -> None:
        self.seen += 1
        await self.never.wait()


class _RaisingObserver(IEventObserver):
    def __init__(self) -> None:
        self.calls = 0

    async def on_event(self, event: Event) -> None:
        self.calls += 1
        raise RuntimeError("observer is broken")


async def test_slow_and_raising_observers_do_not_block_the_run(dm, bus, orchestrator, recorder):
    slow, broken = _SlowObserver(), _RaisingObserver()
    bus.subscribe(slow)
    bus.subscribe(broken)
    await fleet(dm, "d1", "d2")
    orion = make_orion(*(star(f"t{i}", f"d{i % 2 + 1}") for i in range(6)),
                       edges=(("t0", "t2"), ("t1", "t3"), ("t2", "t4"), ("t3", "t5")))
    result = await run(orchestrator, orion)
    assert result["status"] == "completed"
    await bus.flush(recorder)
    await bus.flush(broken)
    assert slow.seen == 1  # stuck on its first event the whole time
    assert broken.calls == len(recorder.events) > 6  # kept receiving despite raising
    assert len(recorder.of_type(EventType.TASK_COMPLETED)) == 6


# ---------------------------------------------------------------------- execute_single_task
async def test_execute_single_task_returns_result(dm, orchestrator):
    (dev,) = await fleet(dm, "d1")
    result = await orchestrator.execute_single_task(TaskStar("s", description="single"))
    assert result == {"device_id": "d1", "task_id": "s", "status": "ok"}
    assert [r.task_id for r in dev.received] == ["s"]


async def test_execute_single_task_on_named_device(dm, orchestrator):
    d1, _d2 = await fleet(dm, "d1", "d2")
    result = await orchestrator.execute_single_task(TaskStar("s", description="x"), "d2")
    assert result["device_id"] == "d2"
    assert d1.received == []


async def test_execute_single_task_without_devices(orchestrator):
    with pytest.raises(UnavailableError, match="No available devices for task execution"):
        await orchestrator.execute_single_task(TaskStar("s", description="x"))


async def test_execute_single_task_honours_retries(dm, orchestrator):
    (dev,) = await fleet(dm, "d1", fail_attempts={"s": 2})
    result = await orchestrator.execute_single_task(
        TaskStar("s", description="x", retry_count=2))
    assert result["task_id"] == "s"
    assert len(dev.received) == 3


async def test_execute_single_task_raises_after_failure(dm, orchestrator):
    (dev,) = await fleet(dm, "d1", fail_attempts={"s": 2})
    with pytest.raises(TaskExecutionError) as info:
        await orchestrator.execute_single_task(TaskStar("s", description="x", retry_count=1))
    assert info.value.task_id == "s"
    assert info.value.reason == "task_error"
    assert len(dev.received) == 2


# ---------------------------------------------------------------------- misc
async def test_orchestrator_takes_event_bus_from_device_manager():
    private_bus = EventBus()
    dm = OrionDeviceManager(event_bus=private_bus)
    orch = TaskOrionOrchestrator(dm)
    assert orch.event_bus is private_bus
    await private_bus.close()


async def test_two_orions_run_concurrently_on_one_orchestrator(dm, orchestrator):
    d1, d2 = await fleet(dm, "d1", "d2", latency=0.002)
    first = make_orion(star("a1", "d1"), star("a2", "d2"), edges=(("a1", "a2"),))
    second = make_orion(star("b1", "d2"), star("b2", "d1"), edges=(("b1", "b2"),))
    r1, r2 = await asyncio.wait_for(asyncio.gather(orchestrator.orchestrate_orion(first),
                                                   orchestrator.orchestrate_orion(second)),
                                    RUN_TIMEOUT)
    assert r1["status"] == r2["status"] == "completed"
    assert d1.max_running == 1 and d2.max_running == 1  # capacity shared across orions
