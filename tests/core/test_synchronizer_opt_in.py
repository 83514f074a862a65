"""Engine hooks the gRPC server needs: per-run synchronization, many waiters, explicit merge."""

from __future__ import annotations

import asyncio

import pytest
from conftest import fleet

from orion_grpc.core import (
    EditRejectedError,
    EventType,
    OrionModificationSynchronizer,
    TaskOrion,
    TaskOrionOrchestrator,
    TaskStar,
    TaskStarLine,
    TaskStatus,
)


def pair() -> TaskOrion:
    orion = TaskOrion()
    orion.add_task(TaskStar("a", description="a", target_device_id="d1"))
    orion.add_task(TaskStar("b", description="b", target_device_id="d1"))
    orion.add_dependency(TaskStarLine("a", "b"))
    return orion


@pytest.fixture
def sync(orchestrator: TaskOrionOrchestrator) -> OrionModificationSynchronizer:
    synchronizer = OrionModificationSynchronizer(orchestrator)
    synchronizer.set_modification_timeout(30)
    orchestrator.set_modification_synchronizer(synchronizer)
    return synchronizer


async def test_a_run_without_synchronization_never_waits_for_a_planner(dm, orchestrator, sync):
    await fleet(dm, "d1")
    orion = pair()
    await orchestrator.prepare_orion(orion)
    result = await asyncio.wait_for(orchestrator.run_prepared(orion, synchronize=False), 5)
    assert result["status"] == "completed"
    assert not sync.tracks(orion.orion_id)
    assert sync.get_pending_count() == 0


async def test_many_callers_can_wait_for_the_planner_at_once(dm, orchestrator, sync, bus,
                                                            recorder):
    await fleet(dm, "d1")
    orion = pair()
    await orchestrator.prepare_orion(orion)
    run = asyncio.create_task(orchestrator.run_prepared(orion))
    await recorder.wait_for(EventType.TASK_COMPLETED)
    await bus.flush()  # the synchronizer has seen "a" finish
    assert sync.get_pending_task_ids() == ["a"]
    waiters = [asyncio.create_task(sync.wait_until_settled(10)) for _ in range(3)]
    await asyncio.sleep(0)
    sync.edit_orion(orion.orion_id, [], on_task_ids=["a"])
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True, True, True]
    await bus.flush()
    sync.edit_orion(orion.orion_id, [], on_task_ids=["b"])
    assert (await asyncio.wait_for(run, 5))["status"] == "completed"
    assert sync.get_statistics()["timeout_modifications"] == 0


async def test_wait_until_settled_gives_up_without_dropping_anything(sync):
    sync.attach("o")
    sync.add_pending("x")
    assert await sync.wait_until_settled(0.01) is False
    assert sync.get_pending_task_ids() == ["x"]
    assert sync.get_statistics()["timeout_modifications"] == 0


async def test_merge_orion_raises_instead_of_logging(orchestrator, sync):
    live = pair()
    planner = TaskOrion.from_dict(live.to_dict())
    planner.add_task(TaskStar("c", description="c", target_device_id="d1"))
    planner.add_dependency(TaskStarLine("c", "a"))
    live.start_execution()
    live.start_task("a")
    with pytest.raises(EditRejectedError):
        sync.merge_orion(live, planner)  # a new edge into the RUNNING star "a" breaks I3
    assert live.get_task("a").status is TaskStatus.RUNNING
