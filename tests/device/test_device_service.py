"""DeviceService.Connect at the protocol level: a hand-driven device against a real server.

Each test speaks the wire protocol directly (``harness.raw()``) so every rule of
docs/protocol.md is pinned down independently of the Python daemon.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from orion_grpc.api.device_service import DeviceLinkConfig, SessionInfo, _Session
from orion_grpc.core import EventType, TaskExecutionError, TaskOrion, TaskStar
from orion_grpc.gen.orion.v1 import device_service_pb2 as pb

WAIT = 10.0


def result_msg(assignment: Any, value: Any = "done", success: bool = True,
               error: str = "") -> pb.TaskResult:
    msg = pb.TaskResult(lease_id=assignment.lease_id, task_id=assignment.task_id,
                        attempt=assignment.attempt, success=success, error=error)
    if value is not None:
        msg.result.CopyFrom(json_format.ParseDict(value, struct_pb2.Value()))
    return msg


def single(harness: Any, task_id: str, device: str, **kw: Any) -> asyncio.Task[Any]:
    star = TaskStar(task_id, description=f"do {task_id}", target_device_id=device, **kw)
    return asyncio.create_task(harness.orchestrator.execute_single_task(star))


# ---------------------------------------------------------------------- hello / welcome
async def test_first_message_must_be_hello(harness):
    dev = harness.raw()
    dev.send(heartbeat=pb.DeviceHeartbeat())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dev.recv()
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "first message" in err.value.details() and "'hello'" in err.value.details()
    assert "heartbeat" in err.value.details()


async def test_hello_needs_a_device_id(harness):
    dev = harness.raw()
    dev.send(hello=pb.DeviceHello(device_id="  ", capacity=-1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dev.recv()
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "device_id" in err.value.details() and "capacity" in err.value.details()


async def test_second_hello_on_one_stream_is_a_protocol_error(harness):
    dev = harness.raw()
    await dev.hello("d1")
    dev.send(hello=pb.DeviceHello(device_id="d1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dev.ended()
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await harness.servicer.wait_for_no_session("d1", timeout=WAIT)
    assert not harness.devices.is_online("d1")


async def test_hello_registers_the_device_and_welcome_carries_the_session_parameters(harness):
    system_info = struct_pb2.Struct()
    system_info.update({"hostname": "box", "cpu_count": 8, "memory_bytes": 2 ** 33})
    dev = harness.raw()
    welcome = await dev.hello("pc-1", device_type=1, platform="windows 11",
                              capabilities=["office", "msbuild"], capacity=3,
                              system_info=system_info, daemon_version="9.9")

    assert welcome.session_id
    assert welcome.heartbeat_interval.ToNanoseconds() == 100_000_000
    assert welcome.lease_ttl.ToNanoseconds() == 1_000_000_000
    assert welcome.HasField("server_time")
    info = harness.devices.get_device_info("pc-1")
    assert info.is_online and not info.draining
    assert info.os == "windows" and info.capabilities == ["office", "msbuild"]
    assert info.capacity == 3
    assert harness.devices.get_device_system_info("pc-1") == {
        "hostname": "box", "cpu_count": 8, "memory_bytes": 2 ** 33}
    assert info.metadata["platform"] == "windows 11"
    assert info.metadata["daemon_version"] == "9.9"
    assert info.metadata["session_id"] == welcome.session_id
    assert harness.servicer.sessions["pc-1"].session_id == welcome.session_id
    await harness.events.wait_for(EventType.DEVICE_CONNECTED, device_id="pc-1")


async def test_claimed_capacity_is_clamped_to_max_inflight(harness_factory):
    h = await harness_factory(config=DeviceLinkConfig(heartbeat_interval=0.1, lease_ttl=1.0,
                                                      max_inflight=4))
    dev = h.raw()
    await dev.hello("big", capacity=1000)
    assert h.devices.get_device_info("big").capacity == 4
    dev2 = h.raw()
    await dev2.hello("small")  # 0 means 1
    assert h.devices.get_device_info("small").capacity == 1


# ---------------------------------------------------------------------- assignments
async def test_assignment_ack_result_and_result_ack(harness):
    dev = harness.raw()
    await dev.hello("d1")
    star = TaskStar("t1", description="say hi", tips=["be brief"], target_device_id="d1",
                    task_data={"n": 2, "nested": {"a": [1, 2.5]}}, timeout=30)
    run = asyncio.create_task(harness.orchestrator.execute_single_task(star))

    a = await dev.expect("assignment")
    assert a.task_id == "t1" and a.attempt == 1 and a.lease_id and a.orion_id == ""
    assert a.task_text == star.to_request_string() and " - be brief" in a.task_text
    assert json_format.MessageToDict(a.task_data) == {"n": 2, "nested": {"a": [1, 2.5]}}
    assert a.timeout.ToNanoseconds() == 30 * 10 ** 9 and a.HasField("deadline")
    dev.send(ack=pb.AssignmentAck(lease_id=a.lease_id))
    dev.send(result=result_msg(a, {"answer": 42}))
    ack = await dev.expect("result_ack")
    assert (ack.lease_id, ack.accepted, ack.reason) == (a.lease_id, True, "")
    assert await asyncio.wait_for(run, WAIT) == {"answer": 42}

    # At-least-once: the same result again is fenced off, yet acknowledged.
    dev.send(result=result_msg(a, {"answer": 42}))
    ack = await dev.expect("result_ack")
    assert (ack.accepted, ack.reason) == (False, "unknown_or_stale_lease")


async def test_orion_assignment_names_the_orion_and_a_failed_result_fails_the_star(harness):
    dev = harness.raw()
    await dev.hello("d1")
    orion = TaskOrion(name="o")
    orion.add_task(TaskStar("boom", name="Boom", description="fail please",
                            target_device_id="d1", required_capabilities=[], priority=3))
    run = asyncio.create_task(harness.orchestrator.orchestrate_orion(orion))
    a = await dev.expect("assignment")
    assert a.orion_id == orion.orion_id
    # The full star rides along for executors that want structured fields.
    assert (a.task.task_id, a.task.name, a.task.description) == ("boom", "Boom", "fail please")
    assert a.task.resource_name == f"orions/{orion.orion_id}/stars/boom"
    dev.send(result=result_msg(a, None, success=False, error="it broke"))
    assert (await dev.expect("result_ack")).accepted
    result = await asyncio.wait_for(run, WAIT)
    assert result["status"] == "failed" and "it broke" in result["errors"]["boom"]
    failed = await harness.events.wait_for(EventType.TASK_FAILED, task_id="boom")
    assert failed.data["reason"] == "task_error"


async def test_results_are_accepted_only_from_the_device_holding_the_lease(harness):
    holder, other = harness.raw(), harness.raw()
    await holder.hello("holder")
    await other.hello("other")
    run = single(harness, "t", "holder")
    a = await holder.expect("assignment")

    other.send(result=result_msg(a, "forged"))
    ack = await other.expect("result_ack")
    assert (ack.accepted, ack.reason) == (False, "not_lease_holder")
    wrong_task = result_msg(a, "x")
    wrong_task.task_id = "not-t"
    holder.send(result=wrong_task)
    ack = await holder.expect("result_ack")
    assert (ack.accepted, ack.reason) == (False, "task_mismatch")
    holder.send(result=result_msg(a, "genuine"))
    assert (await holder.expect("result_ack")).accepted
    assert await asyncio.wait_for(run, WAIT) == "genuine"


async def test_progress_becomes_a_task_progress_event(harness):
    dev = harness.raw()
    await dev.hello("d1")
    run = single(harness, "t", "d1")
    a = await dev.expect("assignment")
    data = struct_pb2.Struct()
    data.update({"step": 3})
    dev.send(progress=pb.TaskProgress(lease_id=a.lease_id, task_id="t", attempt=1,
                                      progress=0.5, message="half way", data=data))
    event = await harness.events.wait_for(EventType.TASK_PROGRESS, task_id="t")
    assert event.data["progress"] == 0.5 and event.data["message"] == "half way"
    assert event.data["device_id"] == "d1" and event.data["lease_id"] == a.lease_id
    assert event.data["details"] == {"step": 3} and event.status == "running"
    dev.send(result=result_msg(a))
    assert await asyncio.wait_for(run, WAIT) == "done"


async def test_progress_from_a_chatty_device_is_thinned_out(harness_factory):
    h = await harness_factory(config=DeviceLinkConfig(heartbeat_interval=0.1, lease_ttl=1.0,
                                                      progress_min_interval=60))
    dev = h.raw()
    await dev.hello("d1")
    run = single(h, "t", "d1")
    a = await dev.expect("assignment")
    for fraction in (0.1, 0.2, 0.3, 1.0):
        dev.send(progress=pb.TaskProgress(lease_id=a.lease_id, task_id="t", attempt=1,
                                          progress=fraction))
    await h.events.wait_for(EventType.TASK_PROGRESS, task_id="t", progress=1.0)
    # Within the interval only the first report and the one saying "done" become events.
    assert [e.data["progress"] for e in h.events.of(EventType.TASK_PROGRESS)] == [0.1, 1.0]
    dev.send(result=result_msg(a))
    await asyncio.wait_for(run, WAIT)


async def test_reject_fails_the_attempt_with_reason_rejected_and_the_star_is_retried(harness):
    dev = harness.raw()
    await dev.hello("d1")
    orion = TaskOrion(name="r")
    orion.add_task(TaskStar("t", description="x", target_device_id="d1", retry_count=1))
    run = asyncio.create_task(harness.orchestrator.orchestrate_orion(orion))

    first = await dev.expect("assignment")
    dev.send(reject=pb.AssignmentReject(lease_id=first.lease_id, reason="busy"))
    retrying = await harness.events.wait_for(EventType.TASK_RETRYING, task_id="t")
    assert retrying.data["reason"] == "rejected" and "busy" in retrying.data["error"]
    second = await dev.expect("assignment")
    assert second.attempt == 2 and second.lease_id != first.lease_id
    dev.send(result=result_msg(second, "second time lucky"))
    result = await asyncio.wait_for(run, WAIT)
    assert result["status"] == "completed"
    assert result["results"]["t"] == "second time lucky"


async def test_drain_keeps_new_work_away(harness):
    dev = harness.raw()
    await dev.hello("d1")
    dev.send(drain=pb.DeviceDrain(reason="maintenance"))
    # Messages are handled in order: once this ack arrives the drain has been applied.
    dev.send(result=pb.TaskResult(lease_id="nope"))
    await dev.expect("result_ack")
    assert harness.devices.get_device_info("d1").draining
    assert not harness.devices.has_capacity("d1")
    assert await harness.orchestrator.get_available_devices() == []


async def test_the_server_can_cancel_a_lease(harness):
    dev = harness.raw()
    await dev.hello("d1")
    orion = TaskOrion(name="c")
    orion.add_task(TaskStar("t", description="x", target_device_id="d1"))
    run = asyncio.create_task(harness.orchestrator.orchestrate_orion(orion))
    a = await dev.expect("assignment")
    assert await harness.orchestrator.cancel_orion(orion.orion_id)
    cancel = await dev.expect("cancel")
    assert cancel.lease_id == a.lease_id and cancel.task_id == "t" and cancel.reason
    assert (await asyncio.wait_for(run, WAIT))["status"] == "cancelled"
    dev.send(result=result_msg(a))  # too late: fenced off
    assert not (await dev.expect("result_ack")).accepted


async def test_assignment_carries_the_active_trace_context(harness):
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    dev = harness.raw()
    await dev.hello("d1")
    with tracer.start_as_current_span("orion") as span:
        run = single(harness, "t", "d1")  # the task inherits the current context
    a = await dev.expect("assignment")
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert a.trace_context["traceparent"].split("-")[1] == trace_id
    dev.send(result=result_msg(a))
    await asyncio.wait_for(run, WAIT)


# ---------------------------------------------------------------------- batches
def wide(orion_id: str, n: int, device: str) -> TaskOrion:
    orion = TaskOrion(orion_id)
    for i in range(n):
        orion.add_task(TaskStar(f"t{i}", description="x", target_device_id=device))
    return orion


async def test_a_device_accepting_batches_gets_one_scheduler_step_in_one_message(harness):
    dev = harness.raw(heartbeat=None)
    welcome = await dev.hello("d1", capacity=4, accepts_batches=True)
    assert welcome.accepts_batches  # so the device may batch too
    run = asyncio.create_task(harness.orchestrator.orchestrate_orion(wide("w4", 4, "d1")))

    batch = await dev.expect("batch")  # the four dispatches of one step: one write
    assert [m.WhichOneof("message") for m in batch.messages] == ["assignment"] * 4
    assignments = [m.assignment for m in batch.messages]
    assert sorted(a.task_id for a in assignments) == ["t0", "t1", "t2", "t3"]
    dev.send(batch=pb.DeviceMessageBatch(messages=[
        pb.ConnectRequest(result=result_msg(a, {"n": i})) for i, a in enumerate(assignments)]))

    acks = await dev.expect("batch")
    assert [(m.result_ack.lease_id, m.result_ack.accepted) for m in acks.messages] == \
        [(a.lease_id, True) for a in assignments]
    result = await asyncio.wait_for(run, WAIT)
    assert result["status"] == "completed"
    assert {t: r["n"] for t, r in result["results"].items()} == {
        a.task_id: i for i, a in enumerate(assignments)}


async def test_a_device_that_does_not_accept_batches_gets_single_messages(harness):
    dev = harness.raw(heartbeat=None)
    welcome = await dev.hello("d1", capacity=3)
    assert welcome.accepts_batches  # the server always accepts them from devices
    run = asyncio.create_task(harness.orchestrator.orchestrate_orion(wide("w3", 3, "d1")))
    assignments = [await dev.expect("assignment") for _ in range(3)]
    for a in assignments:
        dev.send(result=result_msg(a))
    for a in assignments:
        assert (await dev.expect("result_ack")).lease_id == a.lease_id
    assert (await asyncio.wait_for(run, WAIT))["status"] == "completed"


@pytest.mark.parametrize("inner", [
    pb.ConnectRequest(batch=pb.DeviceMessageBatch()),
    pb.ConnectRequest(hello=pb.DeviceHello(device_id="d1")),
])
async def test_a_batch_holds_neither_a_batch_nor_a_hello(harness, inner):
    dev = harness.raw()
    await dev.hello("d1", accepts_batches=True)
    dev.send(batch=pb.DeviceMessageBatch(messages=[
        pb.ConnectRequest(heartbeat=pb.DeviceHeartbeat()), inner]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dev.ended()
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await harness.servicer.wait_for_no_session("d1", timeout=WAIT)


# ---------------------------------------------------------------------- sessions
async def test_a_new_session_supersedes_the_old_one_and_reconciles_leases(harness):
    old = harness.raw()
    await old.hello("d1", capacity=2)
    kept_run, lost_run = single(harness, "kept", "d1"), single(harness, "lost", "d1")
    first = {(await old.expect("assignment")).task_id: None for _ in range(2)}
    assert set(first) == {"kept", "lost"}
    leases = {lease.task_id: lease.lease_id
              for lease in harness.devices.get_device_info("d1").running.values()}

    # The device reconnects while the server still has the old stream (a half-open
    # connection): it still runs "kept", lost "lost", and runs a lease the server never gave.
    new = harness.raw()
    welcome = await new.hello("d1", capacity=2, running_lease_ids=[leases["kept"], "d1:bogus"])
    cancel = await new.expect("cancel")
    assert (cancel.lease_id, cancel.reason) == ("d1:bogus", "unknown_lease")
    goodbye = await old.expect("goodbye")
    assert goodbye.reason == "superseded"
    await old.ended()

    with pytest.raises(TaskExecutionError) as err:
        await asyncio.wait_for(lost_run, WAIT)
    assert err.value.reason == "device_disconnection"
    assert harness.servicer.sessions["d1"].session_id == welcome.session_id
    assert harness.devices.is_online("d1")
    new.send(result=pb.TaskResult(lease_id=leases["kept"], task_id="kept", attempt=1,
                                  success=True))
    assert (await new.expect("result_ack")).accepted
    assert await asyncio.wait_for(kept_run, WAIT) is None
    await harness.engine.bus.flush()
    assert not harness.events.of(EventType.DEVICE_DISCONNECTED, device_id="d1")


async def test_replayed_result_is_accepted_exactly_once(harness):
    old = harness.raw()
    await old.hello("d1")
    run = single(harness, "t", "d1")
    a = await old.expect("assignment")
    result = result_msg(a, {"v": 1})

    # The result never reached the server; the device reconnects and replays it in hello.
    new = harness.raw()
    await new.hello("d1", unacknowledged_results=[result])
    ack = await new.expect("result_ack")
    assert (ack.lease_id, ack.accepted) == (a.lease_id, True)
    assert await asyncio.wait_for(run, WAIT) == {"v": 1}

    # The ack was lost as well and the device replays it again: fenced off, acknowledged.
    again = harness.raw()
    await again.hello("d1", unacknowledged_results=[result])
    ack = await again.expect("result_ack")
    assert (ack.accepted, ack.reason) == (False, "unknown_or_stale_lease")


async def test_a_silent_device_is_lost_and_its_lease_fails_with_device_disconnection(harness):
    dev = harness.raw()
    await dev.hello("d1")
    run = single(harness, "t", "d1")
    await dev.expect("assignment")
    dev.stop_heartbeats()  # the stream stays open: only the watchdog can notice

    goodbye = await dev.expect("goodbye")
    assert goodbye.reason == "heartbeat_timeout"
    await dev.ended()
    with pytest.raises(TaskExecutionError) as err:
        await asyncio.wait_for(run, WAIT)
    assert err.value.reason == "device_disconnection" and "no heartbeat" in str(err.value)
    await harness.events.wait_for(EventType.DEVICE_DISCONNECTED, device_id="d1")
    assert not harness.devices.is_online("d1")
    assert "d1" not in harness.servicer.sessions


@pytest.mark.parametrize("how", ["cancel", "half_close"])
async def test_the_end_of_the_stream_loses_the_device(harness, how):
    dev = harness.raw()
    await dev.hello("d1")
    run = single(harness, "t", "d1")
    await dev.expect("assignment")
    if how == "cancel":
        dev.cancel()
    else:
        dev.close()
    with pytest.raises(TaskExecutionError) as err:
        await asyncio.wait_for(run, WAIT)
    assert err.value.reason == "device_disconnection"
    await harness.servicer.wait_for_no_session("d1", timeout=WAIT)
    assert not harness.devices.is_online("d1")


async def test_with_a_disconnect_grace_a_dropped_device_keeps_its_lease_until_it_returns(
        harness_factory):
    harness = await harness_factory(config=DeviceLinkConfig(
        heartbeat_interval=0.1, lease_ttl=1.0, goodbye_timeout=0.5, disconnect_grace=30.0))
    dev = harness.raw()
    await dev.hello("d1")
    run = single(harness, "t", "d1")
    a = await dev.expect("assignment")
    dev.cancel()  # the stream breaks ...
    await harness.events.wait_for(EventType.DEVICE_DISCONNECTED, device_id="d1")
    assert harness.devices.is_holding("d1") and harness.devices.get_lease(a.lease_id)
    # ... and the device comes back, still running the lease: it continues, then finishes.
    back = harness.raw()
    await back.hello("d1", running_lease_ids=[a.lease_id])
    assert not harness.devices.is_holding("d1")
    back.send(result=result_msg(a, {"v": 2}))
    assert (await back.expect("result_ack")).accepted
    assert await asyncio.wait_for(run, WAIT) == {"v": 2}


async def test_a_device_not_back_within_the_disconnect_grace_is_lost(harness_factory):
    harness = await harness_factory(config=DeviceLinkConfig(
        heartbeat_interval=0.1, lease_ttl=1.0, goodbye_timeout=0.5, disconnect_grace=0.2))
    dev = harness.raw()
    await dev.hello("d1")
    run = single(harness, "t", "d1")
    await dev.expect("assignment")
    dev.cancel()
    with pytest.raises(TaskExecutionError) as err:
        await asyncio.wait_for(run, WAIT)
    assert err.value.reason == "device_disconnection"
    assert "did not come back within 0.2s" in str(err.value)


async def test_a_handler_cancelled_twice_still_forgets_its_stream(harness):
    # gRPC may cancel a handler again while it cleans up after the first cancellation (the
    # device dropped its stream); the stream must not stay counted (and referenced) forever.
    dev = harness.raw()
    await dev.hello("d1")
    (handler,) = harness.servicer._handlers
    handler.cancel()
    await asyncio.sleep(0)  # into its cleanup, awaiting the session's own tasks ...
    handler.cancel()  # ... and cancelled again there
    await asyncio.wait([handler], timeout=WAIT)
    assert handler.done()
    assert harness.servicer.stream_count == 0
    assert not harness.devices.is_online("d1")
    dev.cancel()


async def test_server_close_says_goodbye_and_refuses_new_sessions(harness):
    dev = harness.raw()
    await dev.hello("d1")
    await harness.servicer.close(reconnect_after=1.5)
    goodbye = await dev.expect("goodbye")
    assert goodbye.reason == "server_shutdown"
    assert goodbye.reconnect_after.ToNanoseconds() == 1_500_000_000
    await dev.ended()
    assert not harness.devices.is_online("d1")
    late = harness.raw()
    late.send(hello=pb.DeviceHello(device_id="d2"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await late.recv()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------- units
async def test_a_device_that_does_not_read_is_cut_off_not_buffered_forever(harness):
    session = _Session(SessionInfo("d", "s", "peer", 0.0, 1), limit=2, devices=harness.devices)
    for _ in range(3):
        session.send(pb.ConnectResponse(result_ack=pb.ResultAck(lease_id="x")))
    assert session.ended.is_set()
    assert session.status is not None
    assert session.status[0] is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_link_config_validation():
    config = DeviceLinkConfig.for_heartbeat(2.0, missed_heartbeats=4)
    assert (config.heartbeat_interval, config.lease_ttl) == (2.0, 8.0)
    assert config.missed_heartbeat_limit == 4
    with pytest.raises(ValueError, match="lease_ttl"):
        DeviceLinkConfig(heartbeat_interval=5, lease_ttl=5)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        DeviceLinkConfig(heartbeat_interval=0)
    with pytest.raises(ValueError, match="max_inflight"):
        DeviceLinkConfig(max_inflight=0)
