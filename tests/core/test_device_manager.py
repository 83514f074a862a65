"""Unit tests for orion_grpc.core.device_manager (registry, links, leases) with FakeDevice."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from orion_grpc.core import (
    DeviceStatus,
    EventBus,
    EventType,
    FakeDevice,
    IEventObserver,
    Lease,
    LeaseOutcome,
    NotFoundError,
    OrionDeviceManager,
    TaskStatus,
    UnavailableError,
)
from orion_grpc.core.events import DeviceEvent, Event
from orion_grpc.core.task_star import utcnow

WAIT = 5.0  # generous upper bound for awaiting futures; never a fixed sleep


class Recorder(IEventObserver):
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def on_event(self, event: Event) -> None:
        self.events.append(event)


class Outcomes:
    """on_done callback collecting outcomes; ``next()`` awaits the next one."""

    def __init__(self) -> None:
        self.items: list[tuple[Lease, LeaseOutcome]] = []
        self._waiters: list[asyncio.Future[None]] = []

    def __call__(self, lease: Lease, outcome: LeaseOutcome) -> None:
        self.items.append((lease, outcome))
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def wait_for(self, count: int) -> None:
        while len(self.items) < count:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await asyncio.wait_for(fut, WAIT)


def new_dm() -> OrionDeviceManager:
    return OrionDeviceManager(event_bus=EventBus())


async def spin(turns: int = 5) -> None:
    """Let already-scheduled callbacks run (used to show something did NOT happen)."""
    for _ in range(turns):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- registration
async def test_connect_registers_and_comes_online() -> None:
    dm = new_dm()
    dev = await FakeDevice("a", "windows", ["gpu"], capacity=3).connect(dm)
    info = dm.get_device_info("a")
    assert info is not None
    assert info.status is DeviceStatus.IDLE
    assert info.is_online
    assert info.capacity == 3
    assert info.capabilities == ["gpu"]
    assert info.server_url == "fake://a"
    assert info.connection_attempts == 1
    assert info.last_heartbeat is not None
    assert dm.get_connected_devices() == ["a"]
    assert dm.is_online("a")
    assert dm.has_capacity("a")
    assert dev.closed_reason is None
    status = dm.get_device_status("a")
    assert status["device_type"] == "windows"
    assert status["current_tasks"] == []
    assert dm.get_device_status("zz") == {"error": "Device zz not found"}
    assert dm.get_device_capabilities("a") == {"capabilities": ["gpu"],
                                               "metadata": dev.metadata}
    assert dm.get_device_system_info("a") == {"platform": "windows", "hostname": "fake-a"}


async def test_register_validation_and_connect_failures() -> None:
    dm = new_dm()
    with pytest.raises(ValueError, match="^device_id must be a non-empty string$"):
        dm.register("")
    with pytest.raises(ValueError, match="^Device a: capacity must be at least 1, got 0$"):
        dm.register("a", capacity=0)
    assert dm.get_device_info("a") is None
    assert await dm.connect_device("ghost") is False
    assert await dm.register_device("b", os="linux", auto_connect=False) is True
    assert dm.get_device_info("b").status is DeviceStatus.DISCONNECTED
    assert await dm.connect_device("b") is False  # no link to connect through
    assert dm.get_all_devices(connected=True) == {}
    assert set(dm.get_all_devices()) == {"b"}


async def test_connect_and_disconnect_events() -> None:
    dm = new_dm()
    rec = Recorder()
    dm.event_bus.subscribe(rec)
    dev = await FakeDevice("a").connect(dm)
    dev.disconnect("cable cut")
    dev.disconnect("again")  # already offline: no second event
    assert await dm.event_bus.flush(timeout=WAIT)
    kinds = [e.event_type for e in rec.events]
    assert kinds == [EventType.DEVICE_CONNECTED, EventType.DEVICE_DISCONNECTED]
    first, last = rec.events
    assert isinstance(first, DeviceEvent) and isinstance(last, DeviceEvent)
    assert first.device_id == "a" and first.device_status == "idle"
    assert last.device_status == "disconnected"
    assert last.device_info["device_id"] == "a"
    assert dev.closed_reason == "cable cut"


async def test_new_link_supersedes_old() -> None:
    dm = new_dm()
    rec = Recorder()
    dm.event_bus.subscribe(rec, {EventType.DEVICE_CONNECTED})
    old = await FakeDevice("a").connect(dm)
    new = await FakeDevice("a").connect(dm)
    assert old.closed_reason == "superseded by a new session"
    assert new.closed_reason is None
    assert dm.get_device_info("a").connection_attempts == 2
    outcomes = Outcomes()
    dm.start_lease("a", "t", "desc", {}, None, outcomes)
    await outcomes.wait_for(1)
    assert [r.task_id for r in new.received] == ["t"]
    assert old.received == []
    assert outcomes.items[0][1].success
    assert await dm.event_bus.flush(timeout=WAIT)
    assert len(rec.events) == 1  # it never went offline in between


# --------------------------------------------------------------------------- leases
async def test_lease_success_result_and_status_events() -> None:
    dm = new_dm()
    rec = Recorder()
    dm.event_bus.subscribe(rec, {EventType.DEVICE_STATUS_CHANGED})
    dev = await FakeDevice("a", handler=lambda lease: {"echo": lease.task_data}).connect(dm)
    outcomes = Outcomes()
    lease = dm.start_lease("a", "t1", "describe", {"k": 1}, None, outcomes, orion_id="o",
                           attempt=2, trace_context={"traceparent": "00-x"})
    assert lease.lease_id.startswith("a:")
    assert (lease.device_id, lease.task_id, lease.orion_id, lease.attempt) == ("a", "t1", "o", 2)
    assert lease.trace_context == {"traceparent": "00-x"}
    assert dm.get_lease(lease.lease_id) is lease
    info = dm.get_device_info("a")
    assert info.status is DeviceStatus.BUSY
    assert info.current_task_id == "t1"
    assert dm.running_count("a") == 1
    await outcomes.wait_for(1)
    done_lease, outcome = outcomes.items[0]
    assert done_lease is lease
    assert outcome == LeaseOutcome(True, {"echo": {"k": 1}})
    assert dm.get_lease(lease.lease_id) is None
    assert info.status is DeviceStatus.IDLE
    assert info.current_task_id is None
    assert dev.received[0].attempt == 2
    assert await dm.event_bus.flush(timeout=WAIT)
    assert [e.device_status for e in rec.events] == ["busy", "idle"]


async def test_fake_device_answers_a_turn_s_assignments_in_order_even_if_one_callback_raises(
) -> None:
    # The assignments of one loop turn are answered by one callback, in the order they came;
    # an on_done that raises is reported to the loop's exception handler (as if each answer
    # were its own callback) and the others are still answered.
    dm = new_dm()
    await FakeDevice("a", capacity=3).connect(dm)
    outcomes = Outcomes()
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    def explode(lease: Lease, outcome: LeaseOutcome) -> None:
        raise RuntimeError("on_done failed")

    try:
        first = dm.start_lease("a", "t1", "x", {}, None, outcomes)
        dm.start_lease("a", "t2", "x", {}, None, explode)
        third = dm.start_lease("a", "t3", "x", {}, None, outcomes)
        await outcomes.wait_for(2)
    finally:
        loop.set_exception_handler(None)
    assert [lease for lease, _ in outcomes.items] == [first, third]
    assert [str(c["exception"]) for c in reported] == ["on_done failed"]
    assert dm.running_count("a") == 0


async def test_lease_failure_from_device() -> None:
    dm = new_dm()
    await FakeDevice("a", fail_task_ids={"bad"}).connect(dm)
    outcomes = Outcomes()
    dm.start_lease("a", "bad", "x", {}, None, outcomes)
    await outcomes.wait_for(1)
    outcome = outcomes.items[0][1]
    assert outcome.success is False
    assert outcome.reason == "task_error"
    assert outcome.error == "bad fails on a"


async def test_capacity_never_exceeded_via_start_lease() -> None:
    dm = new_dm()
    await FakeDevice("a", capacity=2, hang_task_ids={"t1", "t2", "t3"}).connect(dm)
    dm.start_lease("a", "t1", "x", {}, None, Outcomes())
    assert dm.has_capacity("a")
    dm.start_lease("a", "t2", "x", {}, None, Outcomes())
    assert not dm.has_capacity("a")
    with pytest.raises(UnavailableError) as info:
        dm.start_lease("a", "t3", "x", {}, None, Outcomes())
    assert str(info.value) == "Device a has no free capacity"
    assert info.value.reason == "DEVICE_AT_CAPACITY"
    assert dm.running_count("a") == 2


async def test_capacity_never_exceeded_under_concurrent_requests() -> None:
    dm = new_dm()
    dev = await FakeDevice("a", capacity=2).connect(dm)
    results = await asyncio.wait_for(asyncio.gather(*(
        dm.assign_task_to_device(f"t{i}", "a", f"task {i}", {}) for i in range(7))), WAIT)
    assert [r.status for r in results] == [TaskStatus.COMPLETED] * 7
    assert [r.task_id for r in results] == [f"t{i}" for i in range(7)]
    assert dev.max_running == 2
    assert dev.assignment_count == 7
    assert dm.running_count("a") == 0


async def test_assign_task_to_device_queues_when_full() -> None:
    dm = new_dm()
    dev = await FakeDevice("a").connect(dm)
    results = await asyncio.wait_for(asyncio.gather(
        dm.assign_task_to_device("t1", "a", "one", {}),
        dm.assign_task_to_device("t2", "a", "two", {"x": 1}),
        dm.assign_task_to_device("t3", "a", "three", {})), WAIT)
    assert [r.is_successful for r in results] == [True, True, True]
    assert [r.task_id for r in dev.received] == ["t1", "t2", "t3"]
    assert dev.max_running == 1
    first = results[0]
    assert first.result == {"device_id": "a", "task_id": "t1", "status": "ok"}
    assert first.metadata == {"device_id": "a", "reason": None}
    assert first.execution_time is not None and first.execution_time >= 0


async def test_queued_request_fails_when_device_lost_while_waiting() -> None:
    dm = new_dm()
    dev = await FakeDevice("a", hang_task_ids={"first"}).connect(dm)
    first = Outcomes()
    dm.start_lease("a", "first", "x", {}, None, first)
    waiter = asyncio.create_task(dm.assign_task_to_device("second", "a", "y", {}))
    await spin()
    assert not waiter.done()
    assert [r.task_id for r in dev.received] == ["first"]
    dev.disconnect("gone")
    with pytest.raises(ValueError, match=r"^Device a is not connected \(status: disconnected\)$"):
        await asyncio.wait_for(waiter, WAIT)
    assert first.items[0][1].reason == "device_disconnection"


async def test_assign_task_to_device_errors() -> None:
    dm = new_dm()
    with pytest.raises(ValueError, match="^Device ghost is not registered$"):
        await dm.assign_task_to_device("t", "ghost", "x", {})
    dev = await FakeDevice("a").connect(dm)
    dev.disconnect()
    with pytest.raises(ValueError, match=r"^Device a is not connected \(status: disconnected\)$"):
        await dm.assign_task_to_device("t", "a", "x", {})
    with pytest.raises(UnavailableError) as info:
        dm.start_lease("a", "t", "x", {}, None, Outcomes())
    assert str(info.value) == "Device a is not connected"
    assert info.value.reason == "DEVICE_NOT_CONNECTED"
    with pytest.raises(UnavailableError, match="^Device ghost is not connected$"):
        dm.start_lease("ghost", "t", "x", {}, None, Outcomes())
    with pytest.raises(NotFoundError) as nf:
        dm.set_draining("ghost")
    assert str(nf.value) == "Device ghost is not registered"
    assert nf.value.reason == "DEVICE_NOT_FOUND"
    assert dev.received == []


async def test_lease_fencing() -> None:
    dm = new_dm()
    await FakeDevice("a", hang_task_ids={"t"}).connect(dm)
    await FakeDevice("b").connect(dm)
    outcomes = Outcomes()
    lease = dm.start_lease("a", "t", "x", {}, None, outcomes)
    # another device cannot finish a's attempt
    assert dm.complete_lease("b", lease.lease_id, True, "forged") is False
    assert dm.complete_lease("a", "a:999", True, "unknown lease") is False
    assert dm.complete_lease("a", "nonsense", False) is False
    await spin()
    assert outcomes.items == []
    assert dm.get_lease(lease.lease_id) is lease
    assert dm.running_count("a") == 1
    assert dm.get_device_info("a").status is DeviceStatus.BUSY
    assert dm.running_count("b") == 0
    # the owner can, exactly once
    assert dm.complete_lease("a", lease.lease_id, True, "real") is True
    assert dm.complete_lease("a", lease.lease_id, True, "again") is False
    assert [o.result for _, o in outcomes.items] == ["real"]
    assert dm.running_count("a") == 0


async def test_complete_lease_failure_defaults() -> None:
    dm = new_dm()
    await FakeDevice("a", hang_task_ids={"t", "u"}).connect(dm)
    outcomes = Outcomes()
    t = dm.start_lease("a", "t", "x", {}, None, outcomes)
    assert dm.complete_lease("a", t.lease_id, False) is True
    assert outcomes.items[0][1] == LeaseOutcome(False, None, "task failed", "task_error")


async def test_timeout_fails_with_reason_and_cancels_on_device() -> None:
    dm = new_dm()
    dev = await FakeDevice("a", hang_task_ids={"slow"}).connect(dm)
    outcomes = Outcomes()
    lease = dm.start_lease("a", "slow", "x", {}, 0.01, outcomes)
    assert lease.deadline is not None
    await outcomes.wait_for(1)
    outcome = outcomes.items[0][1]
    assert outcome.success is False
    assert outcome.reason == "timeout"
    assert outcome.error == "Task slow timed out after 0.01s on device a"
    assert dev.cancelled == [(lease.lease_id, "timeout")]
    assert dev.running == 0
    assert dm.running_count("a") == 0
    assert dm.get_device_info("a").status is DeviceStatus.IDLE
    # a late answer for the expired lease is fenced off
    assert dm.complete_lease("a", lease.lease_id, True, "late") is False
    assert len(outcomes.items) == 1


async def test_timeout_through_assign_task_to_device() -> None:
    dm = new_dm()
    await FakeDevice("a", hang_task_ids={"slow"}).connect(dm)
    result = await asyncio.wait_for(dm.assign_task_to_device("slow", "a", "x", {}, timeout=0.01),
                                    WAIT)
    assert result.status is TaskStatus.FAILED
    assert result.metadata["reason"] == "timeout"
    assert "timed out" in str(result.error)
    assert not result.is_successful


async def test_finished_lease_cancels_its_timer() -> None:
    dm = new_dm()
    dev = await FakeDevice("a").connect(dm)
    outcomes = Outcomes()
    lease = dm.start_lease("a", "t", "x", {}, 30.0, outcomes)
    assert lease.timer is not None
    await outcomes.wait_for(1)
    assert outcomes.items[0][1].success
    assert lease.timer.cancelled()
    assert dev.cancelled == []


async def test_device_lost_fails_leases_with_device_disconnection() -> None:
    dm = new_dm()
    dev = await FakeDevice("a", capacity=2, hang_task_ids={"t1", "t2"}).connect(dm)
    other = await FakeDevice("b", hang_task_ids={"t3"}).connect(dm)
    outcomes = Outcomes()
    l1 = dm.start_lease("a", "t1", "x", {}, 30.0, outcomes)
    l2 = dm.start_lease("a", "t2", "x", {}, None, outcomes)
    l3 = dm.start_lease("b", "t3", "x", {}, None, outcomes)
    dm.device_lost("a", "network down")
    assert [lease.task_id for lease, _ in outcomes.items] == ["t1", "t2"]
    for _, outcome in outcomes.items:
        assert outcome.success is False
        assert outcome.reason == "device_disconnection"
        assert outcome.error == "Device a disconnected: network down"
    assert dev.closed_reason == "network down"
    info = dm.get_device_info("a")
    assert info.status is DeviceStatus.DISCONNECTED
    assert info.running == {} and info.current_task_id is None
    assert dm.get_lease(l1.lease_id) is None and dm.get_lease(l2.lease_id) is None
    assert l1.timer is not None and l1.timer.cancelled()
    assert dm.get_lease(l3.lease_id) is l3  # other devices unaffected
    assert other.closed_reason is None
    assert dm.complete_lease("a", l1.lease_id, True) is False


async def test_fake_device_disconnect_after() -> None:
    dm = new_dm()
    await FakeDevice("a", disconnect_after=1).connect(dm)
    outcomes = Outcomes()
    dm.start_lease("a", "t", "x", {}, None, outcomes)
    await outcomes.wait_for(1)
    assert outcomes.items[0][1].reason == "device_disconnection"
    assert not dm.is_online("a")


async def test_reconnect_after_loss() -> None:
    dm = new_dm()
    dev = await FakeDevice("a").connect(dm)
    dev.disconnect()
    assert not dm.is_online("a")
    await dev.connect(dm)
    assert dm.is_online("a")
    assert dev.closed_reason is None
    result = await asyncio.wait_for(dm.assign_task_to_device("t", "a", "x", {}), WAIT)
    assert result.is_successful


async def test_drain_stops_new_leases_but_running_ones_finish() -> None:
    dm = new_dm()
    dev = await FakeDevice("a", capacity=2, hang_task_ids={"running"}).connect(dm)
    outcomes = Outcomes()
    running = dm.start_lease("a", "running", "x", {}, None, outcomes)
    dm.set_draining("a")
    assert dm.get_device_info("a").draining is True
    assert not dm.has_capacity("a")
    assert dm.is_online("a")
    with pytest.raises(UnavailableError, match="^Device a has no free capacity$"):
        dm.start_lease("a", "new", "x", {}, None, outcomes)
    waiter = asyncio.create_task(dm.assign_task_to_device("queued", "a", "x", {}))
    await spin()
    assert not waiter.done()
    assert dm.complete_lease("a", running.lease_id, True, "finished while draining") is True
    await spin()
    assert not waiter.done()  # a freed slot is still not usable while draining
    assert [r.task_id for r in dev.received] == ["running"]
    dm.set_draining("a", False)
    result = await asyncio.wait_for(waiter, WAIT)
    assert result.is_successful
    assert [r.task_id for r in dev.received] == ["running", "queued"]


async def test_cancel_lease() -> None:
    dm = new_dm()
    dev = await FakeDevice("a", hang_task_ids={"t"}).connect(dm)
    outcomes = Outcomes()
    lease = dm.start_lease("a", "t", "x", {}, 30.0, outcomes)
    assert dm.cancel_lease(lease.lease_id, "user asked") is True
    assert dev.cancelled == [(lease.lease_id, "user asked")]
    assert dm.running_count("a") == 0
    assert lease.timer is not None and lease.timer.cancelled()
    await spin()
    assert outcomes.items == []  # on_done is not called for a cancel
    assert dm.cancel_lease(lease.lease_id) is False


async def test_capacity_listener_notified_on_release() -> None:
    dm = new_dm()
    await FakeDevice("a", hang_task_ids={"t"}).connect(dm)
    freed: list[str] = []

    def listener(device_id: str) -> None:
        freed.append(device_id)

    dm.add_capacity_listener(listener)
    lease = dm.start_lease("a", "t", "x", {}, None, Outcomes())
    dm.complete_lease("a", lease.lease_id, True)
    assert freed == ["a"]
    dm.remove_capacity_listener(listener)
    dm.remove_capacity_listener(listener)  # harmless twice
    dm.set_draining("a", False)
    assert freed == ["a"]


async def test_expire_silent_devices() -> None:
    dm = new_dm()
    quiet = await FakeDevice("quiet", hang_task_ids={"t"}).connect(dm)
    await FakeDevice("chatty").connect(dm)
    offline = await FakeDevice("offline").connect(dm)
    offline.disconnect()
    outcomes = Outcomes()
    dm.start_lease("quiet", "t", "x", {}, None, outcomes)
    long_ago = utcnow() - timedelta(seconds=120)
    dm.get_device_info("quiet").last_heartbeat = long_ago
    dm.get_device_info("offline").last_heartbeat = long_ago
    dm.get_device_info("chatty").last_heartbeat = long_ago
    dm.heartbeat("chatty")
    dm.heartbeat("ghost")  # unknown: ignored
    assert dm.get_device_info("chatty").last_heartbeat > long_ago
    assert dm.expire_silent_devices(60) == ["quiet"]
    assert not dm.is_online("quiet")
    assert dm.is_online("chatty")
    assert quiet.closed_reason == "no heartbeat for 60s"
    assert outcomes.items[0][1].reason == "device_disconnection"
    assert dm.expire_silent_devices(60) == []


async def test_unregister_device() -> None:
    dm = new_dm()
    dev = await FakeDevice("a", hang_task_ids={"t"}).connect(dm)
    outcomes = Outcomes()
    dm.start_lease("a", "t", "x", {}, None, outcomes)
    assert dm.unregister_device("a") is True
    assert dm.get_device_info("a") is None
    assert dev.closed_reason == "device unregistered"
    assert outcomes.items[0][1].reason == "device_disconnection"
    assert dm.unregister_device("a") is False


async def test_disconnect_and_shutdown_close_links() -> None:
    dm = new_dm()
    a = await FakeDevice("a").connect(dm)
    b = await FakeDevice("b").connect(dm)
    await dm.disconnect_device("a")
    assert a.closed_reason == "disconnected by request"
    await dm.shutdown()
    assert b.closed_reason == "device manager shut down"
    assert dm.get_connected_devices() == []


async def test_capacity_respected_across_many_devices() -> None:
    dm = new_dm()
    devices = [await FakeDevice(f"d{i}", capacity=i + 1).connect(dm) for i in range(3)]
    calls: list[Any] = [dm.assign_task_to_device(f"t{n}", f"d{n % 3}", "x", {})
                        for n in range(30)]
    results = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
    assert all(r.is_successful for r in results)
    for i, dev in enumerate(devices):
        assert dev.max_running <= i + 1
        assert dev.assignment_count == 10
