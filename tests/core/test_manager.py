"""Unit tests for orion_grpc.core.manager.OrionManager against a real OrionDeviceManager."""

from __future__ import annotations

from typing import Any

import pytest

from orion_grpc.core import (
    DeviceType,
    EventBus,
    FailedPreconditionError,
    FakeDevice,
    InvalidArgumentError,
    OrionDeviceManager,
    OrionManager,
    TaskOrion,
    TaskStar,
    TaskStarLine,
    TaskStatus,
    UnavailableError,
)


async def fleet(*devices: FakeDevice) -> tuple[OrionDeviceManager, OrionManager]:
    dm = OrionDeviceManager(event_bus=EventBus())
    for device in devices:
        await device.connect(dm)
    return dm, OrionManager(dm)


def orion_of(*tasks: TaskStar, orion_id: str = "o1") -> TaskOrion:
    orion = TaskOrion(orion_id=orion_id, name=f"name-{orion_id}")
    for task in tasks:
        orion.add_task(task)
    return orion


def stars(*ids: str, **kwargs: Any) -> list[TaskStar]:
    return [TaskStar(task_id=tid, description=tid, **kwargs) for tid in ids]


def targets(orion: TaskOrion) -> dict[str, str | None]:
    return {tid: t.target_device_id for tid, t in orion.tasks.items()}


def noop(*_: object) -> None:
    return None


# --------------------------------------------------------------------------- round_robin
async def test_round_robin_four_stars_three_devices() -> None:
    _, manager = await fleet(FakeDevice("a"), FakeDevice("b"), FakeDevice("c"))
    orion = orion_of(*stars("s1", "s2", "s3", "s4"))
    plan = await manager.assign_devices_automatically(orion, "round_robin")
    assert plan == {"s1": "a", "s2": "b", "s3": "c", "s4": "a"}
    assert list(plan.values()) == ["a", "b", "c", "a"]
    assert targets(orion) == plan


async def test_round_robin_is_the_default_and_skips_finished_and_running_stars() -> None:
    _, manager = await fleet(FakeDevice("a"), FakeDevice("b"))
    orion = orion_of(*stars("s1", "done", "run", "s2", "s3"))
    orion.get_task("done").target_device_id = "zzz"
    orion.finish_task("done", True)
    orion.start_task("run")
    plan = await manager.assign_devices_automatically(orion)
    assert plan == {"s1": "a", "s2": "b", "s3": "a"}
    assert orion.get_task("done").target_device_id == "zzz"
    assert orion.get_task("run").target_device_id is None


async def test_round_robin_skips_ineligible_devices() -> None:
    _, manager = await fleet(FakeDevice("lin", "linux"), FakeDevice("win", "windows"),
                             FakeDevice("lin2", "linux"))
    orion = orion_of(TaskStar(task_id="w", device_type="windows"),
                     TaskStar(task_id="x"), TaskStar(task_id="y"))
    plan = await manager.assign_devices_automatically(orion, "round_robin")
    assert plan == {"w": "win", "x": "lin2", "y": "lin"}


# --------------------------------------------------------------------------- capability_match
async def test_capability_match_least_loaded_eligible() -> None:
    _, manager = await fleet(FakeDevice("a", "linux", ["x"]),
                             FakeDevice("b", "windows", ["x", "gpu"]),
                             FakeDevice("c", "windows", ["gpu"]))
    orion = orion_of(*stars("g1", "g2", "g3", device_type="windows",
                            required_capabilities=["gpu"]),
                     TaskStar(task_id="l1", device_type=DeviceType.LINUX),
                     TaskStar(task_id="x1", required_capabilities=["x"]))
    plan = await manager.assign_devices_automatically(orion, "capability_match")
    # g1: b,c tie -> b; g2: c (b has 1); g3: tie 1/1 -> b; l1: only a; x1: a has 1, b has 2 -> a
    assert plan == {"g1": "b", "g2": "c", "g3": "b", "l1": "a", "x1": "a"}
    assert targets(orion) == plan


async def test_capability_match_counts_other_orions() -> None:
    _, manager = await fleet(FakeDevice("a", capabilities=["gpu"]),
                             FakeDevice("b", capabilities=["gpu"]))
    other = orion_of(*stars("o1", "o2", target_device_id="a"), orion_id="other")
    manager.register_orion(other)
    orion = orion_of(*stars("s1", "s2", required_capabilities=["gpu"]))
    plan = await manager.assign_devices_automatically(orion, "capability_match")
    assert plan == {"s1": "b", "s2": "b"}  # a already carries two unfinished stars


async def test_capability_match_no_eligible_device_error_and_atomic() -> None:
    _, manager = await fleet(FakeDevice("a", "linux", ["x"]), FakeDevice("b", "windows"))
    orion = orion_of(TaskStar(task_id="ok"),
                     TaskStar(task_id="needy", device_type="ios", required_capabilities=["nfc", "camera"]),
                     TaskStar(task_id="ok2", target_device_id="prior"))
    with pytest.raises(InvalidArgumentError) as info:
        await manager.assign_devices_automatically(orion, "capability_match")
    err = info.value
    assert err.reason == "NO_ELIGIBLE_DEVICE"
    assert isinstance(err, ValueError)
    assert str(err) == ("No eligible device for task 'needy' (needs device_type=ios, "
                        "capabilities=['camera', 'nfc']); online devices: a (linux: ['x']), "
                        "b (windows: [])")
    assert [v.field for v in err.violations] == ["tasks[needy]"]
    assert [v.reason for v in err.violations] == ["NO_ELIGIBLE_DEVICE"]
    # atomic: nobody was assigned
    assert targets(orion) == {"ok": None, "needy": None, "ok2": "prior"}


async def test_capability_match_reports_every_unplaceable_star() -> None:
    _, manager = await fleet(FakeDevice("a"))
    orion = orion_of(TaskStar(task_id="p", required_capabilities=["gpu"]),
                     TaskStar(task_id="q", device_type="macos"))
    with pytest.raises(InvalidArgumentError) as info:
        await manager.assign_devices_automatically(orion, "capability_match")
    assert [v.field for v in info.value.violations] == ["tasks[p]", "tasks[q]"]
    assert "task 'p' (needs capabilities=['gpu'])" in str(info.value)
    assert "task 'q' (needs device_type=macos)" in str(info.value)


# --------------------------------------------------------------------------- load_balance
async def test_load_balance_counts_unfinished_stars_of_other_orions_only() -> None:
    _, manager = await fleet(FakeDevice("a"), FakeDevice("b"))
    other = orion_of(*stars("pending_on_a", target_device_id="a"),
                     *stars("d1", "d2", "d3", target_device_id="b"), orion_id="other")
    for tid in ("d1", "d2", "d3"):
        other.finish_task(tid, True)
    manager.register_orion(other)
    orion = orion_of(*stars("s1", "s2"))
    plan = await manager.assign_devices_automatically(orion, "load_balance")
    # a has 1 unfinished star; b's three stars are finished and do not count
    assert plan == {"s1": "b", "s2": "a"}
    # an unregistered orion's stars no longer count
    manager.unregister_orion("other")
    fresh = orion_of(*stars("t1", "t2"), orion_id="fresh")
    assert await manager.assign_devices_automatically(fresh, "load_balance") == {
        "t1": "a", "t2": "b"}


async def test_load_balance_ignores_the_orion_being_assigned() -> None:
    _, manager = await fleet(FakeDevice("a"), FakeDevice("b"))
    orion = orion_of(*stars("s1", "s2", "s3", "s4"))
    manager.register_orion(orion)
    assert await manager.assign_devices_automatically(orion, "load_balance") == {
        "s1": "a", "s2": "b", "s3": "a", "s4": "b"}
    # re-assigning the same orion gives the same answer: its own stars are not "other load"
    assert await manager.assign_devices_automatically(orion, "load_balance") == {
        "s1": "a", "s2": "b", "s3": "a", "s4": "b"}


async def test_load_balance_counts_running_leases() -> None:
    dm, manager = await fleet(FakeDevice("a", hang_task_ids={"single"}), FakeDevice("b"))
    dm.start_lease("a", "single", "run alone", {}, None, noop)
    assert dm.running_count("a") == 1
    orion = orion_of(*stars("s1"))
    assert await manager.assign_devices_automatically(orion, "load_balance") == {"s1": "b"}


async def test_load_balance_normalises_by_capacity() -> None:
    _, manager = await fleet(FakeDevice("big", capacity=4), FakeDevice("small"))
    other = orion_of(*stars("x1", "x2", target_device_id="big"),
                     *stars("y1", target_device_id="small"), orion_id="other")
    manager.register_orion(other)
    orion = orion_of(*stars("s1"))
    # big: 2/4 = 0.5 < small: 1/1
    assert await manager.assign_devices_automatically(orion, "load_balance") == {"s1": "big"}


# --------------------------------------------------------------------------- preferences, fleet
@pytest.mark.parametrize("strategy", ["round_robin", "capability_match", "load_balance"])
async def test_preferences_win_when_preferred_device_online(strategy: str) -> None:
    _, manager = await fleet(FakeDevice("a"), FakeDevice("b"), FakeDevice("c"))
    orion = orion_of(*stars("s1", "s2", "s3"))
    plan = await manager.assign_devices_automatically(orion, strategy, {"s1": "c", "s3": "c"})
    assert plan["s1"] == "c" and plan["s3"] == "c"
    assert plan["s2"] == "a"


async def test_preference_for_offline_or_draining_device_ignored() -> None:
    dm, manager = await fleet(FakeDevice("a"), FakeDevice("b"), FakeDevice("c"))
    dm.device_lost("b")
    dm.set_draining("c")
    orion = orion_of(*stars("s1", "s2"))
    plan = await manager.assign_devices_automatically(
        orion, "round_robin", {"s1": "b", "s2": "c"})
    assert plan == {"s1": "a", "s2": "a"}
    orion2 = orion_of(*stars("t1"), orion_id="o2")
    assert await manager.assign_devices_automatically(orion2, "round_robin",
                                                      {"t1": "nowhere"}) == {"t1": "a"}


@pytest.mark.parametrize("strategy", ["round_robin", "capability_match", "load_balance"])
async def test_offline_and_draining_devices_not_used(strategy: str) -> None:
    a, b, c = FakeDevice("a"), FakeDevice("b"), FakeDevice("c")
    dm, manager = await fleet(a, b, c)
    b.disconnect()
    dm.set_draining("c")
    orion = orion_of(*stars("s1", "s2", "s3"))
    plan = await manager.assign_devices_automatically(orion, strategy)
    assert set(plan.values()) == {"a"}
    dm.set_draining("c", False)
    orion2 = orion_of(*stars("t1", "t2"), orion_id="o2")
    assert set((await manager.assign_devices_automatically(orion2, "round_robin")).values()) \
        == {"a", "c"}


async def test_no_available_devices() -> None:
    dev = FakeDevice("a")
    _, manager = await fleet(dev)
    dev.disconnect()
    orion = orion_of(*stars("s1"))
    with pytest.raises(UnavailableError) as info:
        await manager.assign_devices_automatically(orion, "round_robin")
    assert str(info.value) == "No available devices for assignment"
    assert info.value.reason == "NO_DEVICE_AVAILABLE"
    assert targets(orion) == {"s1": None}
    _, empty = await fleet()
    with pytest.raises(UnavailableError, match="^No available devices for assignment$"):
        await empty.assign_devices_automatically(orion)


async def test_unknown_strategy() -> None:
    _, manager = await fleet(FakeDevice("a"))
    orion = orion_of(*stars("s1"))
    with pytest.raises(InvalidArgumentError) as info:
        await manager.assign_devices_automatically(orion, "magic")
    assert str(info.value) == "Unknown assignment strategy: magic"
    assert info.value.reason == "UNKNOWN_STRATEGY"
    assert info.value.violations[0].field == "assignment_strategy"
    assert targets(orion) == {"s1": None}


async def test_no_device_manager() -> None:
    manager = OrionManager()
    with pytest.raises(UnavailableError,
                       match="^Device manager not available for device assignment$"):
        await manager.assign_devices_automatically(orion_of(*stars("s1")))
    dm = OrionDeviceManager(event_bus=EventBus())
    manager.set_device_manager(dm)
    assert manager.device_manager is dm


async def test_pick_device() -> None:
    _, manager = await fleet(FakeDevice("a", capabilities=["x"]), FakeDevice("b"))
    assert manager.pick_device(TaskStar(task_id="t", required_capabilities=["x"])) == "a"
    assert manager.pick_device(TaskStar(task_id="t", required_capabilities=["y"])) is None
    assert manager.pick_device(TaskStar(task_id="t"), "round_robin") == "a"


# --------------------------------------------------------------------------- registry
async def test_register_unregister_get_list() -> None:
    _, manager = await fleet()
    o1 = orion_of(*stars("a", "b"), orion_id="o1")
    o1.add_dependency(TaskStarLine("a", "b"))
    o2 = orion_of(orion_id="o2")
    assert manager.register_orion(o1, {"owner": "me"}) == "o1"
    assert manager.register_orion(o2) == "o2"
    assert manager.get_orion("o1") is o1
    assert manager.get_orion("nope") is None
    listed = manager.list_orions()
    assert listed == [
        {"orion_id": "o1", "name": "name-o1", "state": "ready", "task_count": 2,
         "dependency_count": 1, "metadata": {"owner": "me"}},
        {"orion_id": "o2", "name": "name-o2", "state": "created", "task_count": 0,
         "dependency_count": 0, "metadata": {}},
    ]
    listed[0]["metadata"]["owner"] = "mutated"
    assert manager.list_orions()[0]["metadata"] == {"owner": "me"}
    assert manager.unregister_orion("o1") is True
    assert manager.unregister_orion("o1") is False
    assert manager.get_orion("o1") is None
    assert [o["orion_id"] for o in manager.list_orions()] == ["o2"]


async def test_get_orion_status() -> None:
    _, manager = await fleet()
    orion = orion_of(*stars("done", "bad", "run", "ready", "blocked", "x"))
    orion.add_dependency(TaskStarLine("ready", "blocked"))
    orion.start_execution()
    orion.finish_task("done", True)
    orion.finish_task("bad", False, error="e")
    orion.start_task("run")
    orion.cancel_task("x")
    manager.register_orion(orion, {"k": "v"})
    status = await manager.get_orion_status("o1")
    assert status is not None
    assert {"orion_id", "name", "state", "statistics", "ready_tasks", "running_tasks",
            "completed_tasks", "failed_tasks", "metadata"} <= set(status)
    assert status["orion_id"] == "o1"
    assert status["name"] == "name-o1"
    assert status["state"] == "executing"
    assert status["ready_tasks"] == ["ready"]
    assert status["running_tasks"] == ["run"]
    assert status["completed_tasks"] == ["done"]
    assert status["failed_tasks"] == ["bad"]
    assert status["cancelled_tasks"] == ["x"]
    assert status["waiting_tasks"] == ["blocked"]
    assert status["metadata"] == {"k": "v"}
    assert status["statistics"]["total_tasks"] == 6
    assert status["statistics"]["orion_id"] == "o1"
    assert await manager.get_orion_status("nope") is None


async def test_get_available_devices() -> None:
    a = FakeDevice("a", "windows", ["gpu"], capacity=2, metadata={"system_info": {"cpu": 8}},
                   hang_task_ids={"t"})
    dm, manager = await fleet(a, FakeDevice("b"), FakeDevice("c"), FakeDevice("d"))
    dm.start_lease("a", "t", "x", {}, None, noop)
    dm.device_lost("c")
    dm.set_draining("d")
    devices = await manager.get_available_devices()
    assert [d["device_id"] for d in devices] == ["a", "b"]
    first = devices[0]
    assert {"device_id", "device_type", "capabilities", "status", "metadata"} <= set(first)
    assert first["device_type"] == "windows"
    assert first["capabilities"] == ["gpu"]
    assert first["status"] == "busy"
    assert first["metadata"] == {"system_info": {"cpu": 8}}
    assert first["capacity"] == 2
    assert first["running_tasks"] == 1
    assert devices[1]["status"] == "idle"
    assert devices[1]["device_type"] == "linux"


# --------------------------------------------------------------------------- assignment queries
async def test_validate_orion_assignments() -> None:
    dev_c = FakeDevice("c")
    _, manager = await fleet(FakeDevice("a"), dev_c)
    dev_c.disconnect()
    orion = orion_of(TaskStar(task_id="ok", target_device_id="a"),
                     TaskStar(task_id="none"),
                     TaskStar(task_id="ghost", target_device_id="nowhere"),
                     TaskStar(task_id="offline", target_device_id="c"),
                     TaskStar(task_id="finished"), TaskStar(task_id="running"))
    orion.finish_task("finished", True)
    orion.start_task("running")
    ok, errors = manager.validate_orion_assignments(orion)
    assert ok is False
    assert errors == [
        "Task 'none' has no device assignment",
        "Task 'ghost' is assigned to unknown device 'nowhere'",
        "Task 'offline' is assigned to disconnected device 'c'",
    ]
    good = orion_of(TaskStar(task_id="x", target_device_id="a"), orion_id="good")
    assert manager.validate_orion_assignments(good) == (True, [])


async def test_get_task_device_info() -> None:
    _, manager = await fleet(FakeDevice("a", "macos", ["cam"]))
    orion = orion_of(TaskStar(task_id="t", target_device_id="a"), TaskStar(task_id="u"),
                     TaskStar(task_id="v", target_device_id="ghost"))
    info = manager.get_task_device_info(orion, "t")
    assert info == {"device_id": "a", "device_type": "macos", "capabilities": ["cam"],
                    "metadata": {"system_info": {"platform": "macos", "hostname": "fake-a"}},
                    "status": "idle"}
    assert manager.get_task_device_info(orion, "u") is None
    assert manager.get_task_device_info(orion, "v") is None
    assert manager.get_task_device_info(orion, "missing") is None


async def test_reassign_task_device() -> None:
    _, manager = await fleet(FakeDevice("a"), FakeDevice("b"))
    orion = orion_of(TaskStar(task_id="t", target_device_id="a"),
                     TaskStar(task_id="r", target_device_id="a"))
    assert manager.reassign_task_device(orion, "missing", "b") is False
    assert manager.reassign_task_device(orion, "t", "b") is True
    assert orion.get_task("t").target_device_id == "b"
    orion.start_task("r")
    with pytest.raises(FailedPreconditionError) as info:
        manager.reassign_task_device(orion, "r", "b")
    assert str(info.value) == "Cannot modify device assignment of running task r"
    assert orion.get_task("r").target_device_id == "a"


async def test_clear_device_assignments_and_utilization() -> None:
    _, manager = await fleet(FakeDevice("a"))
    orion = orion_of(TaskStar(task_id="p1", target_device_id="a"),
                     TaskStar(task_id="p2", target_device_id="b"),
                     TaskStar(task_id="p3", target_device_id="a"),
                     TaskStar(task_id="none"),
                     TaskStar(task_id="done", target_device_id="a"),
                     TaskStar(task_id="run", target_device_id="b"))
    orion.finish_task("done", True)
    orion.start_task("run")
    assert manager.get_device_utilization(orion) == {"a": 3, "b": 2}
    assert manager.clear_device_assignments(orion) == 3
    assert targets(orion) == {"p1": None, "p2": None, "p3": None, "none": None,
                              "done": "a", "run": "b"}
    assert orion.get_task("run").status is TaskStatus.RUNNING
    assert manager.get_device_utilization(orion) == {"a": 1, "b": 1}
    assert manager.clear_device_assignments(orion) == 0


async def test_logging_can_be_disabled() -> None:
    dm = OrionDeviceManager(event_bus=EventBus())
    await FakeDevice("a").connect(dm)
    manager = OrionManager(dm, enable_logging=False)
    orion = orion_of(*stars("s1"))
    assert await manager.assign_devices_automatically(orion) == {"s1": "a"}
