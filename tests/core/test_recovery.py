"""Recovery: an engine restarted on what its store committed continues every orion — running
stars stay leased to their (offline) device until it reconnects, a result replayed by the
device is accepted exactly once, devices that never return are handled by the retry rules.

A crash is modelled by ``MemoryStore.crash_copy()``: exactly what was committed at that
moment (the real-process version, with SIGKILL, is tests/faults/test_restart.py)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from orion_grpc.core import (
    EngineConfig,
    EventRecorder,
    EventType,
    FakeDevice,
    OrionEngine,
    TaskOrion,
    TaskStar,
    TaskStarLine,
    TaskStatus,
)
from orion_grpc.core.recovery import RecoveredRun, restore
from orion_grpc.core.store import MemoryStore

CONFIG = EngineConfig(retry_backoff_base=0.0, device_grace_period=0.0)
WAIT = 10.0


def chain(*ids: str, device: str = "d1", **kw: Any) -> TaskOrion:
    orion = TaskOrion("chain")
    for task_id in ids:
        orion.add_task(TaskStar(task_id, description=f"do {task_id}", target_device_id=device,
                                **kw))
    for src, dst in itertools.pairwise(ids):
        orion.add_dependency(TaskStarLine(src, dst, "success_only"))
    return orion


def statuses(orion: TaskOrion) -> dict[str, TaskStatus]:
    return {t.task_id: t.status for t in orion.get_all_tasks()}


async def crash_while(orion: TaskOrion, *devices: FakeDevice, until_started: str
                      ) -> tuple[MemoryStore, str]:
    """Run ``orion`` on a fresh engine until ``until_started`` is dispatched, then "crash":
    returns what the store holds at that point and the lease id of that star."""
    store = MemoryStore()
    engine = OrionEngine(CONFIG, store=store)
    assert restore(engine, store.load(0), hold=1.0) == []  # a first start (boot 1)
    recorder = EventRecorder()
    engine.bus.subscribe(recorder)
    for device in devices:
        await device.connect(engine.devices)
    run = asyncio.create_task(engine.orchestrator.orchestrate_orion(orion))
    started = await recorder.wait_for(lambda e: e.event_type is EventType.TASK_STARTED
                                      and getattr(e, "task_id", "") == until_started, WAIT)
    assert engine.journal is not None
    await engine.journal.barrier()
    crashed = store.crash_copy()
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    await engine.close()
    return crashed, started.data["lease_id"]


def restart(store: MemoryStore, hold: float) -> tuple[OrionEngine, list[RecoveredRun],
                                                       EventRecorder]:
    engine = OrionEngine(CONFIG, store=store)
    recorder = EventRecorder()
    engine.bus.subscribe(recorder)
    return engine, restore(engine, store.load(1000), hold=hold), recorder


def resume(engine: OrionEngine, run: RecoveredRun, grace: float) -> asyncio.Task[Any]:
    return asyncio.ensure_future(engine.orchestrator.resume_run(
        run.orion, run.strategy, run.metadata, synchronize=run.synchronize, grace=grace))


async def test_restart_restores_states_and_a_replayed_result_is_accepted_exactly_once():
    store, lease_id = await crash_while(chain("a", "b", "c"),
                                        FakeDevice("d1", hang_task_ids={"b"}),
                                        until_started="b")
    engine, runs, events = restart(store, hold=5.0)
    [run] = runs
    orion = run.orion
    assert engine.manager.get_orion("chain") is orion
    assert statuses(orion) == {"a": TaskStatus.COMPLETED, "b": TaskStatus.RUNNING,
                               "c": TaskStatus.WAITING_DEPENDENCY}
    assert orion.get_task("a").result == {"device_id": "d1", "task_id": "a", "status": "ok"}
    lease = engine.devices.get_lease(lease_id)
    assert lease is not None and lease.device_id == "d1" and lease.task_id == "b"
    assert engine.devices.is_holding("d1") and not engine.devices.is_online("d1")

    task = resume(engine, run, grace=5.0)
    await FakeDevice("d1").connect(engine.devices)  # the device is back ...
    assert not engine.devices.is_holding("d1")
    # ... and replays the result it finished while the server was down, twice (as after a
    # lost ack): the first is accepted, the second fenced off.
    assert engine.devices.complete_lease("d1", lease_id, True, {"replayed": True})
    assert not engine.devices.complete_lease("d1", lease_id, True, {"replayed": True})
    result = await asyncio.wait_for(task, WAIT)

    assert result["status"] == "completed"
    assert result["results"]["b"] == {"replayed": True}
    assert [e.task_id for e in events.of_type(EventType.TASK_COMPLETED)] == ["b", "c"]
    assert not events.of_type(EventType.ORION_STARTED)  # continued, not started again
    [c_started] = [e for e in events.of_type(EventType.TASK_STARTED) if e.task_id == "c"]
    assert c_started.data["lease_id"].startswith("d1:r2.")  # no lease id is ever reused
    await engine.close()


async def test_a_lease_the_device_does_not_report_fails_and_is_retried_on_it():
    store, lease_id = await crash_while(chain("a", "b", retry_count=1),
                                        FakeDevice("d1", hang_task_ids={"b"}),
                                        until_started="b")
    engine, [run], events = restart(store, hold=5.0)
    task = resume(engine, run, grace=5.0)
    await FakeDevice("d1").connect(engine.devices)
    # The device restarted too and lost the attempt: the device link fails the lease.
    assert engine.devices.complete_lease("d1", lease_id, False, None, "not running any more",
                                         "device_disconnection")
    result = await asyncio.wait_for(task, WAIT)
    assert result["status"] == "completed"
    [retrying] = events.of_type(EventType.TASK_RETRYING)
    assert retrying.task_id == "b" and retrying.data["reason"] == "device_disconnection"
    await engine.close()


async def test_stars_of_a_device_that_never_returns_move_to_another_after_the_hold():
    store, _ = await crash_while(chain("a", "b", retry_count=1),
                                 FakeDevice("d1", hang_task_ids={"b"}), until_started="b")
    engine, [run], events = restart(store, hold=0.05)
    task = resume(engine, run, grace=0.05)
    other = await FakeDevice("d2").connect(engine.devices)  # d1 never comes back
    result = await asyncio.wait_for(task, WAIT)
    assert result["status"] == "completed"
    assert result["results"]["b"]["device_id"] == "d2"
    assert [r.task_id for r in other.received] == ["b"]
    [retrying] = events.of_type(EventType.TASK_RETRYING)
    assert retrying.data["reason"] == "device_disconnection"
    assert "did not come back within 0.05s" in retrying.data["error"]
    await engine.close()


async def test_without_retries_left_the_star_fails_with_device_disconnection():
    store, _ = await crash_while(chain("a", "b", "c"), FakeDevice("d1", hang_task_ids={"b"}),
                                 until_started="b")
    engine, [run], _events = restart(store, hold=0.05)
    result = await asyncio.wait_for(resume(engine, run, grace=0.05), WAIT)
    assert result["status"] == "partially_failed"
    assert statuses(run.orion) == {"a": TaskStatus.COMPLETED, "b": TaskStatus.FAILED,
                                   "c": TaskStatus.CANCELLED}
    assert run.orion.get_task("b").error.reason == "device_disconnection"
    await engine.close()


async def test_pending_stars_wait_for_their_device_to_reconnect():
    store, _ = await crash_while(chain("a", "b", "c"), FakeDevice("d1", hang_task_ids={"b"}),
                                 until_started="b")
    stored = store.load(0)
    stored.stars["chain"]["b"].update(status="pending", execution_start_time=None)
    stored.leases.clear()  # as if the crash came before b's dispatch was committed
    engine = OrionEngine(CONFIG, store=MemoryStore())
    [run] = restore(engine, stored, hold=5.0)
    task = resume(engine, run, grace=5.0)
    await asyncio.sleep(0.05)  # nothing happens while d1 is away (not even a failure) ...
    assert statuses(run.orion)["b"] is TaskStatus.PENDING
    device = await FakeDevice("d1").connect(engine.devices)  # ... until it is back
    result = await asyncio.wait_for(task, WAIT)
    assert result["status"] == "completed"
    assert [r.task_id for r in device.received] == ["b", "c"]
    await engine.close()


async def test_a_run_that_had_finished_its_stars_just_ends_and_finished_orions_stay():
    store = MemoryStore()
    engine = OrionEngine(CONFIG, store=store)
    await FakeDevice("d1").connect(engine.devices)
    done = await engine.orchestrator.orchestrate_orion(chain("a", "b"))
    assert done["status"] == "completed"
    await engine.close()
    stored = store.load(0)
    assert stored.orions["chain"]["execution_end_time"] is not None
    stored.orions["chain"]["execution_end_time"] = None  # crashed before the end was noted
    stored.orions["kept"] = {**stored.orions["chain"], "orion_id": "kept", "name": "kept",
                             "execution_end_time": "2024-01-01T00:00:00+00:00"}
    stored.stars["kept"] = stored.stars["chain"]
    engine = OrionEngine(CONFIG, store=MemoryStore())
    events = EventRecorder()
    engine.bus.subscribe(events)
    runs = restore(engine, stored, hold=1.0)
    assert [r.orion.orion_id for r in runs] == ["chain"]
    assert engine.manager.get_orion("kept").state.value == "completed"
    result = await asyncio.wait_for(resume(engine, runs[0], 1.0), WAIT)
    assert result["status"] == "completed"
    assert [e.event_type for e in events.events] == [EventType.ORION_COMPLETED]
    await engine.close()


async def test_a_graceful_close_keeps_running_orions_as_they_were():
    store = MemoryStore()
    engine = OrionEngine(CONFIG, store=store)
    recorder = EventRecorder()
    engine.bus.subscribe(recorder)
    await FakeDevice("d1", hang_task_ids={"b"}).connect(engine.devices)
    run = asyncio.create_task(engine.orchestrator.orchestrate_orion(chain("a", "b")))
    await recorder.wait_for(lambda e: e.event_type is EventType.TASK_STARTED
                            and getattr(e, "task_id", "") == "b", WAIT)
    await engine.close()  # cancels the run in memory; the store keeps it running
    await asyncio.gather(run, return_exceptions=True)
    stored = store.load(0)
    assert stored.stars["chain"]["b"]["status"] == "running"
    assert not stored.orions["chain"]["cancelled"] and len(stored.leases) == 1
