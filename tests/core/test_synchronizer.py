"""OrionModificationSynchronizer: a planner edits a running orion (SEMANTICS.md §8)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import fleet

from orion_grpc.core import (
    AddDependency,
    AddTask,
    DependencyType,
    EditOperation,
    EditRejectedError,
    Event,
    EventType,
    IEventObserver,
    NotFoundError,
    OrionEvent,
    OrionModificationSynchronizer,
    RemoveTask,
    TaskEvent,
    TaskOrion,
    TaskOrionOrchestrator,
    TaskPriority,
    TaskStar,
    TaskStarLine,
    TaskStatus,
    UpdateTask,
)

RUN_TIMEOUT = 10.0
FINISHED = {EventType.TASK_COMPLETED, EventType.TASK_FAILED}


def star(task_id: str, device: str | None = "d1", **kw: Any) -> TaskStar:
    return TaskStar(task_id, description=f"do {task_id}", target_device_id=device, **kw)


def chain(*ids: str) -> TaskOrion:
    orion = TaskOrion()
    for tid in ids:
        orion.add_task(star(tid))
    for src, dst in itertools.pairwise(ids):
        orion.add_dependency(TaskStarLine(src, dst))
    return orion


@pytest.fixture
def sync(orchestrator: TaskOrionOrchestrator) -> OrionModificationSynchronizer:
    synchronizer = OrionModificationSynchronizer(orchestrator)
    orchestrator.set_modification_synchronizer(synchronizer)
    return synchronizer


class Planner(IEventObserver):
    """Answers every finished star with ``edit_orion``; ``plan[task_id]`` gives the edits."""

    def __init__(self, sync: OrionModificationSynchronizer,
                 plan: dict[str, list[EditOperation] | Callable[[], list[EditOperation]]]
                 | None = None) -> None:
        self.sync = sync
        self.plan = plan or {}
        self.seen: list[str] = []
        self.rejected: list[EditRejectedError] = []
        self.pending_when_called: list[list[str]] = []

    async def on_event(self, event: Event) -> None:
        if event.event_type not in FINISHED:
            return
        task_id = event.task_id  # type: ignore[attr-defined]
        orion_id = event.data["orion_id"]
        self.seen.append(task_id)
        edits = self.plan.get(task_id, [])
        if callable(edits):
            edits = edits()
        try:
            self.sync.edit_orion(orion_id, edits, on_task_ids=[task_id])
        except EditRejectedError as exc:
            self.rejected.append(exc)
            self.sync.edit_orion(orion_id, [], on_task_ids=[task_id])  # acknowledge anyway


async def run(orch: TaskOrionOrchestrator, orion: TaskOrion, **kw: Any) -> dict[str, Any]:
    return await asyncio.wait_for(orch.orchestrate_orion(orion, **kw), RUN_TIMEOUT)


# ---------------------------------------------------------------------- growing the DAG
async def test_planner_grows_the_dag_while_it_runs(dm, bus, orchestrator, sync, recorder):
    (dev,) = await fleet(dm, "d1")
    planner = Planner(sync, {
        "a": [AddTask(star("b")), AddDependency(TaskStarLine("a", "b")),
              AddTask(star("c")), AddDependency(TaskStarLine("b", "c"))],
        "c": [AddTask(star("d")),
              AddDependency(TaskStarLine("c", "d", DependencyType.SUCCESS_ONLY))],
    })
    bus.subscribe(planner, FINISHED)
    orion = chain("a")

    result = await run(orchestrator, orion)

    assert result["status"] == "completed"
    assert result["total_tasks"] == 4
    assert [r.task_id for r in dev.received] == ["a", "b", "c", "d"]
    assert set(result["results"]) == {"a", "b", "c", "d"}
    assert all(v is not None for v in result["results"].values())
    assert planner.seen == ["a", "b", "c", "d"]
    stats = sync.get_statistics()
    assert stats["timeout_modifications"] == 0
    assert stats["completed_modifications"] == stats["total_modifications"] == 4
    assert not sync.has_pending_modifications()
    await bus.flush(recorder)
    modified = recorder.of_type(EventType.ORION_MODIFIED)
    assert [e.data["on_task_ids"] for e in modified] == [["a"], ["b"], ["c"], ["d"]]
    assert modified[0].data["edit_count"] == 4


async def test_scheduler_waits_for_the_planner_before_dispatching(dm, bus, orchestrator, sync):
    """b is ready while a runs; the planner's answer to a puts a new prerequisite before b.
    Had the scheduler dispatched b without waiting, b would run before `pre`."""
    (dev,) = await fleet(dm, "d1", capacity=1)
    planner = Planner(sync, {"a": [AddTask(star("pre", priority=TaskPriority.LOW)),
                                   AddDependency(TaskStarLine("pre", "b"))]})
    bus.subscribe(planner, FINISHED)
    orion = TaskOrion()
    orion.add_task(star("a", priority=TaskPriority.CRITICAL))
    orion.add_task(star("b", priority=TaskPriority.HIGH))

    result = await run(orchestrator, orion)

    assert result["status"] == "completed"
    assert [r.task_id for r in dev.received] == ["a", "pre", "b"]


async def test_planner_update_of_a_queued_star_is_honoured(dm, bus, orchestrator, sync):
    await fleet(dm, "d1", capacity=1, handler=lambda lease: lease.task_data)
    planner = Planner(sync, {"a": [UpdateTask("b", {"task_data": {"planned": True}})]})
    bus.subscribe(planner, FINISHED)
    orion = TaskOrion()
    orion.add_task(star("a", priority=TaskPriority.CRITICAL))
    orion.add_task(star("b"))
    result = await run(orchestrator, orion)
    assert result["results"]["b"] == {"planned": True}


async def test_orion_modified_with_a_single_id_string_completes_it(dm, bus, orchestrator, sync):
    class StringAck(IEventObserver):
        async def on_event(self, event: Event) -> None:
            if event.event_type in FINISHED:
                bus.publish(OrionEvent(
                    event_type=EventType.ORION_MODIFIED, source_id="planner",
                    timestamp=time.time(), data={"on_task_ids": event.task_id},  # type: ignore
                    orion_id=event.data["orion_id"], orion_state="executing"))

    await fleet(dm, "d1")
    bus.subscribe(StringAck(), FINISHED)
    assert sync.modification_timeout == 600.0  # a stall would blow RUN_TIMEOUT
    orion = chain("a", "b", "c")
    started = time.monotonic()
    result = await run(orchestrator, orion)
    assert result["status"] == "completed"
    assert time.monotonic() - started < RUN_TIMEOUT
    stats = sync.get_statistics()
    assert stats == {"total_modifications": 3, "completed_modifications": 3,
                     "timeout_modifications": 0}


async def test_modification_timeout_lets_the_run_finish(dm, orchestrator, sync):
    await fleet(dm, "d1")
    sync.set_modification_timeout(0.05)
    assert sync.modification_timeout == 0.05
    orion = chain("a", "b")  # nobody ever answers
    result = await run(orchestrator, orion)
    assert result["status"] == "completed"
    stats = sync.get_statistics()
    assert stats["timeout_modifications"] >= 1
    assert stats["completed_modifications"] == 0
    assert not sync.has_pending_modifications()


@pytest.mark.parametrize("bad", [0, -1, -0.5])
def test_set_modification_timeout_must_be_positive(orchestrator, bad):
    sync = OrionModificationSynchronizer(orchestrator)
    with pytest.raises(ValueError, match="Timeout must be positive"):
        sync.set_modification_timeout(bad)
    assert sync.modification_timeout == 600.0


async def test_cancel_while_waiting_for_the_planner(dm, orchestrator, sync, recorder):
    """cancel_orion must not sit out the 600 s modification timeout."""
    (dev,) = await fleet(dm, "d1")
    orion = chain("a", "b")  # no planner: after a, the scheduler waits for an answer
    runner = asyncio.create_task(orchestrator.orchestrate_orion(orion))
    await recorder.wait_for(EventType.TASK_COMPLETED)
    await orchestrator.event_bus.flush(sync)
    assert sync.get_pending_task_ids() == ["a"]

    assert await asyncio.wait_for(orchestrator.cancel_orion(orion.orion_id), RUN_TIMEOUT)
    result = await asyncio.wait_for(runner, RUN_TIMEOUT)
    assert result["status"] == "cancelled"
    assert orion.get_task("a").status is TaskStatus.COMPLETED
    assert orion.get_task("b").status is TaskStatus.CANCELLED
    assert [r.task_id for r in dev.received] == ["a"]


async def test_rejected_edit_leaves_the_live_orion_unchanged(dm, bus, orchestrator, sync):
    (dev,) = await fleet(dm, "d1")
    # Removing the finished star breaks I3; the AddTask before it must be rolled back.
    planner = Planner(sync, {"a": [AddTask(star("extra")), RemoveTask("a")]})
    bus.subscribe(planner, FINISHED)
    orion = chain("a", "b")
    before_deps = {d.line_id for d in orion.get_all_dependencies()}

    result = await run(orchestrator, orion)

    assert len(planner.rejected) == 1
    error = planner.rejected[0]
    assert error.rule == "I3" and error.edit_index == 1
    assert orion.get_task("extra") is None
    assert orion.get_task("a").status is TaskStatus.COMPLETED
    assert {d.line_id for d in orion.get_all_dependencies()} == before_deps
    assert result["total_tasks"] == 2 and result["status"] == "completed"
    assert [r.task_id for r in dev.received] == ["a", "b"]


async def test_edit_unknown_orion(sync):
    with pytest.raises(NotFoundError):
        sync.edit_orion("no-such-orion", [])


# ---------------------------------------------------------------------- pending bookkeeping
async def test_pending_count_ids_and_duplicates(sync):
    sync.attach("o1")
    sync.add_pending("a")
    sync.add_pending("b")
    sync.add_pending("a")  # duplicate ignored
    assert sync.has_pending_modifications()
    assert sync.get_pending_count() == 2
    assert sync.get_pending_task_ids() == ["a", "b"]
    assert sync.complete_modifications(["a", "zzz"]) == 1
    assert sync.get_pending_task_ids() == ["b"]
    assert sync.get_statistics() == {"total_modifications": 2, "completed_modifications": 1,
                                     "timeout_modifications": 0}


async def test_task_events_register_pending_for_the_tracked_orion_only(bus, sync):
    sync.attach("o1")

    def finished(task_id: str, orion_id: str | None,
                 kind: EventType = EventType.TASK_COMPLETED) -> Event:
        data = {} if orion_id is None else {"orion_id": orion_id}
        return TaskEvent(event_type=kind, source_id="t", timestamp=0.0, data=data,
                         task_id=task_id)

    bus.publish(finished("a", "o1"))
    bus.publish(finished("b", "other-orion"))
    bus.publish(finished("c", None))
    bus.publish(finished("d", "o1", EventType.TASK_FAILED))
    bus.publish(finished("e", "o1", EventType.TASK_STARTED))
    await bus.flush(sync)
    assert sync.get_pending_task_ids() == ["a", "d"]


async def test_clear_pending_modifications(sync):
    sync.attach("o1")
    sync.add_pending("a")
    sync.add_pending("b")
    waiter = asyncio.create_task(sync.wait_for_pending_modifications(timeout=RUN_TIMEOUT))
    await asyncio.sleep(0)  # let the waiter start waiting (a scheduling yield, not a delay)
    assert not waiter.done()
    sync.clear_pending_modifications()
    assert sync.get_pending_count() == 0 and not sync.has_pending_modifications()
    assert await asyncio.wait_for(waiter, RUN_TIMEOUT) is True
    assert await sync.wait_for_pending_modifications() is True  # nothing left: immediate


async def test_wait_batches_modifications_that_arrive_meanwhile(sync):
    sync.attach("o1")
    sync.add_pending("a")
    waiter = asyncio.create_task(sync.wait_for_pending_modifications(timeout=RUN_TIMEOUT))
    await asyncio.sleep(0)  # scheduling yield: the waiter is now blocked on "a"
    sync.add_pending("b")  # arrives while waiting: joins the batch
    sync.complete_modifications(["a"])
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()  # "a" alone does not end the wait
    assert sync.get_pending_task_ids() == ["b"]
    sync.complete_modifications(["b"])
    assert await asyncio.wait_for(waiter, RUN_TIMEOUT) is True
    assert sync.get_statistics()["completed_modifications"] == 2
    assert sync.get_statistics()["timeout_modifications"] == 0


async def test_wait_times_out_and_counts(sync):
    sync.attach("o1")
    sync.add_pending("a")
    sync.add_pending("b")
    assert await sync.wait_for_pending_modifications(timeout=0.02) is False
    assert sync.get_statistics()["timeout_modifications"] == 2
    assert not sync.has_pending_modifications()


# ---------------------------------------------------------------------- merging a planner copy
def _planner_copy(live: TaskOrion) -> TaskOrion:
    return TaskOrion.from_dict(live.to_dict())


async def test_merge_and_sync_orion_states(orchestrator, sync):
    live = TaskOrion()
    for tid in ("a", "b", "c"):
        live.add_task(star(tid))
    live.add_dependency(TaskStarLine("a", "b"))
    live.add_dependency(TaskStarLine("b", "c"))
    live.finish_task("a", True, {"n": 1})
    orchestrator.orion_manager.register_orion(live)
    sync.attach(live.orion_id)
    assert sync.get_current_orion() is live

    copy = _planner_copy(live)
    copy.add_task(TaskStar("x", description="planned", target_device_id="d1"))
    copy.add_dependency(TaskStarLine("b", "x", DependencyType.SUCCESS_ONLY, line_id="b-x"))
    copy.finish_task("b", True, {"by": "planner"})  # the planner moved b forward
    copy.get_task("c").description = "reworded"
    sync._on_orion_event(OrionEvent(
        event_type=EventType.ORION_MODIFIED, source_id="planner", timestamp=0.0,
        data={"on_task_ids": ["a"], "new_orion": copy}, orion_id=live.orion_id,
        orion_state="executing"))
    assert sync.get_current_orion() is copy

    merged = sync.merge_and_sync_orion_states(live)

    assert merged is live
    assert live.get_task("x") is not None and live.get_task("x") is not copy.get_task("x")
    assert live.get_dependency("b-x").dependency_type is DependencyType.SUCCESS_ONLY
    assert live.get_task("b").status is TaskStatus.COMPLETED
    assert live.get_task("b").result == {"by": "planner"}
    assert live.get_task("c").description == "reworded"
    assert {t.task_id for t in live.get_ready_tasks()} == {"c", "x"}
    assert live.get_task("a").result == {"n": 1}  # untouched
    assert sync.get_current_orion() is live  # the copy was consumed


async def test_merge_never_moves_state_backwards(orchestrator, sync):
    live = TaskOrion()
    live.add_task(star("a"))
    live.add_task(star("b"))
    sync.attach(live.orion_id)
    copy = _planner_copy(live)  # both pending in the copy
    live.finish_task("a", True, "live result")
    sync._current_orion = copy
    sync.merge_and_sync_orion_states(live)
    assert live.get_task("a").status is TaskStatus.COMPLETED
    assert live.get_task("a").result == "live result"
    assert live.get_task("b").status is TaskStatus.PENDING


async def test_planner_copy_is_merged_during_a_run(dm, bus, orchestrator, sync):
    (dev,) = await fleet(dm, "d1")

    class CopyPlanner(IEventObserver):
        async def on_event(self, event: Event) -> None:
            if event.event_type is not EventType.TASK_COMPLETED or event.task_id != "a":
                if event.event_type in FINISHED:
                    sync.complete_modifications([event.task_id])  # type: ignore[attr-defined]
                return
            copy = _planner_copy(event.data["orion"])
            copy.add_task(star("x"))
            copy.add_dependency(TaskStarLine("a", "x"))
            copy.finish_task("p", True, {"done_by": "planner"})
            bus.publish(OrionEvent(
                event_type=EventType.ORION_MODIFIED, source_id="planner", timestamp=0.0,
                data={"on_task_ids": ["a"], "new_orion": copy}, orion_id=copy.orion_id,
                orion_state="executing"))

    bus.subscribe(CopyPlanner(), FINISHED)
    orion = chain("a", "p")

    result = await run(orchestrator, orion)

    assert result["status"] == "completed"
    assert [r.task_id for r in dev.received] == ["a", "x"]  # p was done by the planner
    assert result["results"]["p"] == {"done_by": "planner"}
    assert orion.get_task("x").status is TaskStatus.COMPLETED


async def test_sync_observes_runs_started_after_it(dm, orchestrator, sync, recorder):
    await fleet(dm, "d1")
    sync.set_modification_timeout(0.02)
    first, second = chain("a"), chain("b")
    await run(orchestrator, first)
    assert sync.tracks(first.orion_id)
    await run(orchestrator, second)
    assert sync.tracks(second.orion_id)
    assert sync.get_current_orion() is second
    assert sync.get_statistics()["timeout_modifications"] == 2
