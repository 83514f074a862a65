"""OrchestratorService and ManagerService over a real loopback server."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest
from api_support import EventWaiter, fleet

from orion_grpc.api.convert import orion_to_pb
from orion_grpc.client import RpcError
from orion_grpc.client.files import load_orion
from orion_grpc.core import (
    EventType,
    InvalidArgumentError,
    TaskExecutionError,
    TaskOrion,
    TaskStar,
    TaskStarLine,
    UnavailableError,
)
from orion_grpc.gen.orion.v1 import (
    manager_service_pb2,
    manager_service_pb2_grpc,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    orion_pb2,
    task_star_pb2,
)


def example() -> TaskOrion:
    """The demo's orion (examples/release_pipeline.json, packaged)."""
    from orion_grpc.demo import example_path
    return load_orion(example_path())[0]


def answer(lease):
    """Results as the demo daemons give them: the star's task_data.result."""
    return lease.task_data.get("result") or {"status": "ok", "task": lease.task_id, "n": 3}


def chain(orion_id: str, *ids: str, device: str | None = "d1") -> TaskOrion:
    orion = TaskOrion(orion_id=orion_id)
    for tid in ids:
        orion.add_task(TaskStar(tid, description=f"do {tid}", target_device_id=device))
    for src, dst in itertools.pairwise(ids):
        orion.add_dependency(TaskStarLine(src, dst))
    return orion


async def test_orchestrate_runs_the_example_to_completion(server, client):
    await fleet(server, "linux-1", device_type="linux", capabilities=["python", "docker"],
                handler=answer)
    await fleet(server, "win-1", device_type="windows", capabilities=["msbuild", "office"],
                handler=answer)
    await fleet(server, "phone-1", device_type="android", capabilities=["adb", "camera"],
                handler=answer)
    result = await client.orchestrate_orion(example(), assignment_strategy="capability_match",
                                            metadata={"requested_by": "test"})
    assert result["status"] == "completed" and result["total_tasks"] == 10
    assert result["results"]["unit_tests"] == {"status": "ok", "passed": 412, "failed": 0,
                                               "coverage": 0.87}
    assert isinstance(result["results"]["unit_tests"]["passed"], int)
    assert result["results"]["coverage"] == {"status": "ok", "task": "coverage", "n": 3}
    # The tests passed, so the conditional "triage" branch is skipped; the rest ran.
    assert result["statistics"]["task_status_counts"] == {"completed": 9, "cancelled": 1}
    status = await client.get_orion_status("release_pipeline")
    assert status["state"] == "completed" and len(status["completed_tasks"]) == 9
    assert status["cancelled_tasks"] == ["triage"]
    assert status["metadata"] == {"requested_by": "test"}


async def test_submit_returns_at_once_and_cancel_reaches_the_run(server, client):
    (device,) = await fleet(server, "d1", hang_task_ids={"b"})
    events = EventWaiter(server)
    waiter = asyncio.create_task(client.orchestrate_orion(chain("w", "a", "b", "c"),
                                                          request_id="run-w"))
    await events.wait(EventType.TASK_STARTED, "b")
    status = await client.get_orion_status("w")
    assert (status["state"], status["running_tasks"]) == ("executing", ["b"])
    assert await client.cancel_orion("w", reason="operator said stop") is True
    result = await asyncio.wait_for(waiter, 5)
    assert result["status"] == "cancelled"
    assert "operator said stop" in result["errors"]["c"]
    assert device.cancelled and device.cancelled[0][1] == "operator said stop"
    assert await client.cancel_orion("w") is False  # already ended


async def test_cancel_reports_the_stars_it_cancelled(server, channel):
    await fleet(server, "d1", hang_task_ids={"a"})
    events = EventWaiter(server)
    stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
    await stub.SubmitOrion(orchestrator_service_pb2.SubmitOrionRequest(
        orion=orion_to_pb(chain("c", "a", "b"))), timeout=5)
    await events.wait(EventType.TASK_STARTED, "a")
    response = await stub.CancelOrion(orchestrator_service_pb2.CancelOrionRequest(orion_id="c"),
                                      timeout=5)
    assert response.cancelled and response.state == orion_pb2.ORION_STATE_CANCELLED
    assert sorted(response.cancelled_task_ids) == ["a", "b"]


async def test_submit_is_idempotent_per_request_id(server, client):
    await fleet(server, "d1", hang_task_ids={"a"})
    orion = orion_pb2.TaskOrion(tasks=[task_star_pb2.TaskStar(task_id="a",
                                                              target_device_id="d1")])
    first = await client.submit_orion(orion, request_id="req-1")
    again = await client.submit_orion(orion, request_id="req-1")
    assert first == again  # the server assigned the id once
    assert len(await client.list_orions()) == 1
    other = orion_pb2.TaskOrion(name="different", tasks=orion.tasks)
    with pytest.raises(InvalidArgumentError) as info:
        await client.submit_orion(other, request_id="req-1")
    assert info.value.reason == "REQUEST_ID_REUSED"
    assert await client.submit_orion(orion) != first  # no request_id: a new orion


async def test_explicit_assignments_win_and_the_strategy_fills_the_rest(server, client):
    await fleet(server, "lin-1", device_type="linux")
    await fleet(server, "lin-2", device_type="linux")
    orion = TaskOrion(orion_id="mix")
    orion.add_task(TaskStar("pinned", description="p", device_type="linux"))
    orion.add_task(TaskStar("own", description="o", target_device_id="lin-2"))
    orion.add_task(TaskStar("free", description="f", device_type="linux"))
    result = await client.orchestrate_orion(orion, device_assignments={"pinned": "lin-2"},
                                            assignment_strategy="load_balance")
    assert result["status"] == "completed"
    placed = {t: (await client.get_task_device_info("mix", t))["device_id"]
              for t in ("pinned", "own", "free")}
    assert placed["pinned"] == "lin-2" and placed["own"] == "lin-2"
    with pytest.raises(InvalidArgumentError) as info:
        await client.submit_orion(chain("x", "a"), device_assignments={"ghost": "lin-1"})
    assert info.value.reason == "UNKNOWN_TASK"


async def test_execute_single_task(server, client):
    with pytest.raises(UnavailableError) as info:
        await client.execute_single_task(TaskStar("solo", description="x"))
    assert info.value.reason == "NO_DEVICE_AVAILABLE"
    await fleet(server, "d1", fail_task_ids={"bad"})
    assert await client.execute_single_task({"task_id": "solo", "description": "x"}) == \
        {"status": "ok", "task": "solo", "n": 3}
    with pytest.raises(TaskExecutionError) as failed:
        await client.execute_single_task(TaskStar("bad", description="x"), "d1")
    assert "bad fails on d1" in str(failed.value) and failed.value.reason == "task_error"
    (gone,) = await fleet(server, "d2")
    gone.disconnect()
    with pytest.raises(UnavailableError) as offline:
        await client.execute_single_task(TaskStar("solo", description="x"), "d2")
    assert offline.value.reason == "DEVICE_NOT_CONNECTED"


async def test_a_retried_orchestrate_waits_for_the_same_run(server, client):
    (device,) = await fleet(server, "d1", hang_task_ids={"a"})
    events = EventWaiter(server)
    orion = orion_to_pb(chain("once", "a"))
    with pytest.raises(RpcError) as expired:  # the caller gives up; the run goes on
        await client.orchestrate_orion(orion, request_id="r-1", timeout=0.3)
    assert expired.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    await events.wait(EventType.TASK_STARTED, "a")
    retry = asyncio.create_task(client.orchestrate_orion(orion, request_id="r-1"))
    server.engine.devices.complete_lease("d1", device.received[0].lease_id, True, {"v": 1})
    result = await asyncio.wait_for(retry, 5)
    assert result["status"] == "completed" and result["results"]["a"] == {"v": 1}
    assert len(device.received) == 1  # ran once


async def test_devices_are_listed_page_by_page(server, channel):
    await fleet(server, *(f"dev-{i}" for i in range(5)), capabilities=["x"])
    stub = manager_service_pb2_grpc.ManagerServiceStub(channel)
    seen, token, pages = [], "", 0
    while True:
        page = await stub.GetAvailableDevices(
            manager_service_pb2.ManagerServiceGetAvailableDevicesRequest(page_size=2,
                                                                        page_token=token),
            timeout=5)
        seen += [d.device_id for d in page.devices]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"dev-{i}" for i in range(5)] and pages == 3
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetAvailableDevices(
            manager_service_pb2.ManagerServiceGetAvailableDevicesRequest(page_token="garbage"),
            timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_manager_registry_round_trip(server, client, channel):
    await fleet(server, "d1", device_type="linux")
    for i in range(5):
        await client.register_orion(chain(f"o{i}", "a", "b", device=None), {"batch": i})
    stub = manager_service_pb2_grpc.ManagerServiceStub(channel)
    first = await stub.ListOrions(manager_service_pb2.ListOrionsRequest(page_size=3), timeout=5)
    assert [o.orion_id for o in first.orions] == ["o0", "o1", "o2"] and first.total_size == 5
    await client.unregister_orion("o0")  # removing an earlier row does not skip later ones
    rest = await stub.ListOrions(manager_service_pb2.ListOrionsRequest(
        page_size=3, page_token=first.next_page_token), timeout=5)
    assert [o.orion_id for o in rest.orions] == ["o3", "o4"] and not rest.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListOrions(manager_service_pb2.ListOrionsRequest(
            page_token=first.next_page_token, states=[orion_pb2.ORION_STATE_READY]), timeout=5)
    assert "different filters" in info.value.details()

    assert await client.validate_orion_assignments("o1") == (
        False, ["Task 'a' has no device assignment", "Task 'b' has no device assignment"])
    assert await client.assign_devices_automatically("o1", "round_robin") == \
        {"a": "d1", "b": "d1"}
    assert (await client.validate_orion_assignments("o1"))[0] is True
    assert await client.get_device_utilization("o1") == {"d1": 2}
    assert await client.reassign_task_device("o1", "b", "d2") is True
    assert await client.reassign_task_device("o1", "nope", "d2") is False
    assert (await client.get_orion("o1")).get_task("b").target_device_id == "d2"
    assert await client.get_task_device_info("o1", "b") is None  # d2 is unknown to the registry
    assert await client.clear_device_assignments("o1") == 2
    assert await client.get_orion("missing") is None
    rows = await client.list_orions(states=["ready"])
    assert [r["orion_id"] for r in rows] == ["o1", "o2", "o3", "o4"]
    assert rows[0]["metadata"] == {"batch": 1}
    inline = chain("inline", "x", device=None)
    assert await client.assign_devices_automatically(inline, "capability_match") == {"x": "d1"}
    assert inline.get_task("x").target_device_id == "d1"
    assert await client.get_orion("inline") is None  # inline orions are not stored


async def test_unspecified_required_enums_are_rejected(channel):
    stub = manager_service_pb2_grpc.ManagerServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AssignDevicesAutomatically(
            manager_service_pb2.AssignDevicesAutomaticallyRequest(orion_id="x"), timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "strategy" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListOrions(manager_service_pb2.ListOrionsRequest(states=[0, 99]), timeout=5)
    assert "states[0]" in info.value.details() and "states[1]" in info.value.details()
