"""SynchronizerService: a planner client edits a running orion over gRPC."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from api_support import EventWaiter, fleet

from orion_grpc.core import (
    AddDependency,
    AddTask,
    EventType,
    FailedPreconditionError,
    InvalidArgumentError,
    RemoveTask,
    TaskOrion,
    TaskStar,
    TaskStarLine,
    UpdateTask,
)
from orion_grpc.gen.orion.v1 import (
    event_pb2,
    synchronizer_service_pb2,
    synchronizer_service_pb2_grpc,
)


def star(task_id: str, **kw) -> TaskStar:
    return TaskStar(task_id, description=f"do {task_id}", target_device_id="d1", **kw)


def pair(orion_id: str) -> TaskOrion:
    orion = TaskOrion(orion_id=orion_id)
    orion.add_task(star("a"))
    orion.add_task(star("b"))
    orion.add_dependency(TaskStarLine("a", "b"))
    return orion


async def test_a_planner_acknowledges_and_grows_the_dag(server, client):
    await fleet(server, "d1")
    watch = client.watch_events("p", include_history=True,  # a fresh server: only this run
                                types=["EVENT_TYPE_TASK_COMPLETED",
                                       "EVENT_TYPE_ORION_COMPLETED"])
    run = asyncio.create_task(client.orchestrate_orion(pair("p"), enable_synchronization=True))
    seen = []
    async for event in watch:
        if event.type == event_pb2.EVENT_TYPE_ORION_COMPLETED:
            break
        seen.append(event.task_id)
        await server.engine.bus.flush()  # the synchronizer has seen it too
        assert await client.get_pending_task_ids("p") == [event.task_id]
        edits = []
        if event.task_id == "a":  # after "a": add "c" behind "b", and change "b"
            edits = [AddTask(star("c")), AddDependency(TaskStarLine("b", "c", line_id="b-c")),
                     UpdateTask("b", {"description": "do b, carefully"})]
        outcome = await client.edit_orion("p", edits, on_task_ids=[event.task_id])
        assert outcome.acknowledged_task_ids == [event.task_id]
        if edits:
            assert outcome.created_task_ids == ["c"] and outcome.created_line_ids == ["b-c"]
            assert outcome.version == 2
    result = await asyncio.wait_for(run, 5)
    assert seen == ["a", "b", "c"] and result["status"] == "completed"
    stats = await client.get_statistics()
    assert stats == {"total_modifications": 3, "completed_modifications": 3,
                     "timeout_modifications": 0}


async def test_orions_without_synchronization_never_wait(server, client):
    await fleet(server, "d1", capacity=2)
    await client.set_modification_timeout(30)
    events = EventWaiter(server)
    synced = asyncio.create_task(client.orchestrate_orion(pair("s"),
                                                          enable_synchronization=True))
    await events.wait(EventType.TASK_COMPLETED, "a")  # "s" now waits for a planner
    await server.engine.bus.flush()  # ... and the synchronizer has seen it
    plain = await asyncio.wait_for(client.orchestrate_orion(pair("plain")), 5)
    assert plain["status"] == "completed"
    assert await client.get_pending_task_ids() == ["a"]
    assert await client.get_pending_task_ids("plain") == []
    assert await client.wait_for_pending_modifications(timeout=0.05) is False
    assert await client.get_pending_task_ids() == ["a"]  # an observer's wait drops nothing
    assert await client.clear_pending_modifications("s") == 1
    await events.wait(EventType.TASK_COMPLETED, "b")
    await server.engine.bus.flush()
    await client.clear_pending_modifications()
    assert (await asyncio.wait_for(synced, 5))["status"] == "completed"


async def test_waiting_for_the_planner_ends_when_it_answers(server, client):
    await fleet(server, "d1", hang_task_ids={"b"})  # nothing else finishes meanwhile
    events = EventWaiter(server)
    run = asyncio.create_task(client.orchestrate_orion(pair("w"), enable_synchronization=True))
    await events.wait(EventType.TASK_COMPLETED, "a")
    await server.engine.bus.flush()
    waiting = asyncio.create_task(client.wait_for_pending_modifications(timeout=10))
    await client.edit_orion("w", [], on_task_ids="a")
    assert await asyncio.wait_for(waiting, 5) is True
    await events.wait(EventType.TASK_STARTED, "b")  # the scheduler went on
    assert await client.cancel_orion("w")
    assert (await asyncio.wait_for(run, 5))["status"] == "cancelled"


async def test_rejected_and_validate_only_edits_change_nothing(server, client):
    await fleet(server, "d1", hang_task_ids={"a"})
    events = EventWaiter(server)
    await client.submit_orion(pair("r"))
    await events.wait(EventType.TASK_STARTED, "a")
    with pytest.raises(FailedPreconditionError) as info:
        await client.edit_orion("r", [AddTask(star("x")), RemoveTask("a")])
    assert info.value.metadata["rule"] == "I3"
    checked = await client.edit_orion("r", [AddTask(star("y"))], validate_only=True)
    assert checked.created_task_ids == ["y"] and checked.orion.get_task("y") is None
    live = await client.get_current_orion("r")
    assert set(live.tasks) == {"a", "b"}
    with pytest.raises(InvalidArgumentError):
        await client.edit_orion("r", [UpdateTask("b", {"timeout": -1.0})])


async def test_merge_a_planner_copy(server, client):
    await fleet(server, "d1", hang_task_ids={"a"})
    events = EventWaiter(server)
    await client.submit_orion(pair("m"))
    await events.wait(EventType.TASK_STARTED, "a")
    copy = await client.get_current_orion("m")
    copy.add_task(star("z"))
    copy.add_dependency(TaskStarLine("b", "z", line_id="b-z"))
    merged = await client.merge_and_sync_orion(copy)
    assert set(merged.tasks) == {"a", "b", "z"}
    assert merged.get_task("a").status.value == "running"  # state never moves back
    assert (await client.get_orion("m")).get_task("z") is not None
    await events.wait(EventType.ORION_MODIFIED)


async def test_synchronizer_argument_errors(channel):
    stub = synchronizer_service_pb2_grpc.SynchronizerServiceStub(channel)
    for request, fragment in [
        (synchronizer_service_pb2.SetModificationTimeoutRequest(), "timeout"),
        (synchronizer_service_pb2.SetModificationTimeoutRequest(orion_id="o"), "per-orion"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetModificationTimeout(request, timeout=5)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in info.value.details()
    bad = synchronizer_service_pb2.SetModificationTimeoutRequest()
    bad.timeout.seconds = -5
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetModificationTimeout(bad, timeout=5)
    assert info.value.details() == "Timeout must be positive"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EditOrion(synchronizer_service_pb2.EditOrionRequest(orion_id="ghost"),
                             timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
