"""DeviceAgent (the daemon library) against a real server: orions, capacity, recovery paths."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import grpc
import pytest

from orion_grpc.api.device_service import DeviceLinkConfig, add_device_service
from orion_grpc.core import EventType, OrionEngine, TaskExecutionError, TaskOrion, TaskStar, TaskStarLine
from orion_grpc.device import Assignment, DeviceAgent, DeviceAgentError, ExecutorError
from orion_grpc.gen.orion.v1 import device_service_pb2 as pb

WAIT = 10.0


def sleep_star(task_id: str, seconds: float = 0.05, **kw: Any) -> TaskStar:
    data = {"executor": "sleep", "seconds": seconds, **kw.pop("task_data", {})}
    return TaskStar(task_id, description=f"sleep for {task_id}", task_data=data, **kw)


async def orchestrate(harness: Any, orion: TaskOrion, **kw: Any) -> dict[str, Any]:
    return await asyncio.wait_for(harness.orchestrator.orchestrate_orion(orion, **kw), WAIT)


async def test_an_orion_runs_over_agents_with_capability_matching(harness):
    linux = harness.agent("linux-1", "linux", ("python",), capacity=2)
    win = harness.agent("win-1", "windows", ("office",))
    phone = harness.agent("phone-1", "android", ("camera",))
    await harness.connected(linux, win, phone)

    orion = TaskOrion(name="fleet")
    orion.add_task(TaskStar("build", description="build it", required_capabilities=["python"],
                            task_data={"target": "x86"}, expected_output_type="binary"))
    orion.add_task(TaskStar("doc", description="write the doc", device_type="windows"))
    orion.add_task(TaskStar("photo", description="take a photo", required_capabilities=["camera"]))
    orion.add_task(sleep_star("test", required_capabilities=["python"]))
    orion.add_dependency(TaskStarLine("build", "test"))
    orion.add_dependency(TaskStarLine("build", "doc"))
    result = await orchestrate(harness, orion, assignment_strategy="capability_match")

    assert result["status"] == "completed", result["errors"]
    build = result["results"]["build"]
    assert build["device_id"] == "linux-1" and build["task_data"] == {"target": "x86"}
    assert build["text"].startswith("Task Description: build it")
    assert result["results"]["doc"]["device_id"] == "win-1"
    assert result["results"]["photo"]["device_id"] == "phone-1"
    assert result["results"]["test"] == {"status": "ok", "slept": 0.05, "device_id": "linux-1",
                                         "task_id": "test"}
    assert harness.devices.get_device_system_info("linux-1")["cpu_count"] >= 1


async def test_an_agent_never_runs_more_than_its_capacity(harness):
    agent = harness.agent("d1", capacity=3)
    await harness.connected(agent)
    orion = TaskOrion(name="wide")
    for i in range(12):
        orion.add_task(sleep_star(f"s{i}", 0.05, target_device_id="d1"))
    result = await orchestrate(harness, orion)
    assert result["status"] == "completed"
    assert agent.max_running == 3 and agent.completed == 12
    # The last result_ack may trail the orion's end by a moment.
    await agent.wait_for(lambda a: not a.unacknowledged_results, WAIT)


async def test_progress_reports_reach_the_event_bus(harness):
    agent = harness.agent("d1")
    await harness.connected(agent)
    run = asyncio.create_task(harness.orchestrator.execute_single_task(
        sleep_star("t", 0.5, target_device_id="d1")))
    event = await harness.events.wait_for(EventType.TASK_PROGRESS, task_id="t")
    assert 0 < event.data["progress"] <= 1 and event.data["message"].startswith("slept")
    await asyncio.wait_for(run, WAIT)


async def test_an_executor_failure_fails_the_star_with_its_message(harness):
    agent = harness.agent("d1")
    await harness.connected(agent)
    with pytest.raises(TaskExecutionError) as err:
        await harness.orchestrator.execute_single_task(
            sleep_star("t", 0, target_device_id="d1", task_data={"fail": "disk full"}))
    assert "disk full" in str(err.value) and err.value.reason == "task_error"


async def test_an_unknown_executor_is_rejected(harness):
    agent = harness.agent("d1")
    await harness.connected(agent)
    star = TaskStar("t", description="x", target_device_id="d1", task_data={"executor": "nope"})
    with pytest.raises(TaskExecutionError) as err:
        await harness.orchestrator.execute_single_task(star)
    assert err.value.reason == "rejected"
    assert "'nope'" in str(err.value) and "echo, sleep" in str(err.value)


async def test_custom_executor_with_progress_and_trace(harness):
    seen: list[Assignment] = []

    async def shout(assignment: Assignment) -> dict[str, Any]:
        seen.append(assignment)
        assignment.report_progress(0.5, "thinking", {"tokens": 7})
        if assignment.task_data.get("bad"):
            raise ExecutorError("refused", result={"why": "bad input"})
        return {"shout": assignment.task_data["word"].upper()}

    agent = harness.agent("d1", executors={"shout": shout}, default_executor="shout")
    await harness.connected(agent)
    star = TaskStar("t", description="shout", target_device_id="d1", task_data={"word": "hi"},
                    timeout=5)
    assert await harness.orchestrator.execute_single_task(star) == {"shout": "HI"}
    progress = await harness.events.wait_for(EventType.TASK_PROGRESS, task_id="t")
    assert progress.data["details"] == {"tokens": 7}
    a = seen[0]
    assert (a.task_id, a.attempt, a.device_id, a.timeout) == ("t", 1, "d1", 5.0)
    assert a.deadline is not None and a.task_data == {"word": "hi"}
    assert a.star == {}  # a single task belongs to no orion: no star definition is sent
    orion = TaskOrion(name="structured")
    orion.add_task(TaskStar("o", name="Shout it", description="shout", target_device_id="d1",
                            task_data={"word": "yo"}, expected_output_type="text"))
    assert (await orchestrate(harness, orion))["results"]["o"] == {"shout": "YO"}
    star = seen[-1].star
    assert (star["task_id"], star["name"], star["expected_output_type"]) == ("o", "Shout it", "text")
    assert star["task_data"] == {"word": "yo"} and seen[-1].orion_id == orion.orion_id
    with pytest.raises(TaskExecutionError, match="refused"):
        await harness.orchestrator.execute_single_task(
            TaskStar("u", description="x", target_device_id="d1", task_data={"bad": True}))


async def test_the_star_timeout_cancels_the_executor(harness):
    cancelled = asyncio.Event()

    async def wait_forever(assignment: Assignment) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    agent = harness.agent("d1", executors={"hang": wait_forever})
    await harness.connected(agent)
    with pytest.raises(TaskExecutionError) as err:
        await harness.orchestrator.execute_single_task(
            TaskStar("t", description="x", target_device_id="d1", timeout=0.2))
    assert err.value.reason == "timeout"
    await asyncio.wait_for(cancelled.wait(), WAIT)
    await agent.wait_for(lambda a: not a.running_lease_ids, WAIT)


async def test_cancelling_an_orion_cancels_the_work_on_the_device(harness):
    agent = harness.agent("d1")
    await harness.connected(agent)
    orion = TaskOrion(name="c")
    orion.add_task(sleep_star("long", 30, target_device_id="d1"))
    run = asyncio.create_task(harness.orchestrator.orchestrate_orion(orion))
    await agent.wait_for(lambda a: len(a.running_lease_ids) == 1, WAIT)
    assert await harness.orchestrator.cancel_orion(orion.orion_id)
    await agent.wait_for(lambda a: not a.running_lease_ids, WAIT)
    assert (await asyncio.wait_for(run, WAIT))["status"] == "cancelled"
    assert agent.completed == 0 and not agent.unacknowledged_results


async def hang(assignment: Assignment) -> None:
    await asyncio.Event().wait()  # silent: no progress, no result


async def done_here(assignment: Assignment) -> dict[str, str]:
    return {"device_id": assignment.device_id}


async def test_missed_heartbeats_lose_the_device_and_its_star_moves_on(harness):
    # Any message counts as liveness, so the muted device's executor must be silent too.
    # A long backoff keeps it away once lost (back within the grace period, it would get
    # its star again).
    mute = harness.agent("mute", executors={"work": hang}, backoff_initial=30, backoff_max=30)
    spare = harness.agent("spare", executors={"work": done_here})
    await harness.connected(mute, spare)
    orion = TaskOrion(name="hb")
    orion.add_task(TaskStar("t", description="x", target_device_id="mute", retry_count=1,
                            task_data={"executor": "work"}))
    run = asyncio.create_task(harness.orchestrator.orchestrate_orion(orion))
    await mute.wait_for(lambda a: len(a.running_lease_ids) == 1, WAIT)
    mute.pause_heartbeats = True  # connected, stream open, but silent

    retry = await harness.events.wait_for(EventType.TASK_RETRYING, task_id="t")
    assert retry.data["reason"] == "device_disconnection"
    assert retry.data["failed_device_id"] == "mute"
    await harness.events.wait_for(EventType.DEVICE_DISCONNECTED, device_id="mute")
    result = await asyncio.wait_for(run, WAIT)
    assert result["status"] == "completed"
    assert result["results"]["t"]["device_id"] == "spare"
    assert orion.get_task("t").current_retry == 1
    await mute.wait_for(lambda a: a.last_goodbye == "heartbeat_timeout", WAIT)


async def test_a_second_agent_with_the_same_id_supersedes_the_first(harness):
    first = harness.agent("dup")
    await harness.connected(first)
    old_session = first.session_id
    second = harness.agent("dup")
    await harness.connected(second)

    with pytest.raises(DeviceAgentError) as err:
        await asyncio.wait_for(first.task, WAIT)
    assert err.value.reason == "superseded" and first.last_goodbye == "superseded"
    assert harness.servicer.sessions["dup"].session_id == second.session_id != old_session
    assert harness.devices.is_online("dup")
    assert await harness.orchestrator.execute_single_task(
        TaskStar("t", description="x", target_device_id="dup")) is not None


async def test_lost_result_ack_replay_is_fenced_and_the_star_completes_once(harness):
    agent = harness.agent("d1")
    await harness.connected(agent)
    agent.drop_result_acks = 1  # the server's ack never arrives
    orion = TaskOrion(name="once")
    orion.add_task(sleep_star("t", 0, target_device_id="d1"))
    result = await orchestrate(harness, orion)
    assert result["status"] == "completed"
    await agent.wait_for(lambda a: a.drop_result_acks == 0, WAIT)
    assert len(agent.unacknowledged_results) == 1

    session = agent.session_id
    await agent.reconnect()  # replays the result in the next hello
    await agent.wait_for(lambda a: a.session_id != session and not a.unacknowledged_results,
                         WAIT)
    lease_id = agent.result_acks[-1][0]
    assert agent.result_acks[-1] == (lease_id, False, "unknown_or_stale_lease")
    await harness.engine.bus.flush()
    assert len(harness.events.of(EventType.TASK_COMPLETED, task_id="t")) == 1


async def test_result_replayed_after_reconnect_is_accepted_exactly_once(harness):
    agent = harness.agent("d1")
    await harness.connected(agent)
    agent.hold_results = True  # the result is produced but never reaches the server
    orion = TaskOrion(name="replay")
    orion.add_task(sleep_star("t", 0, target_device_id="d1", task_data={"result": "kept"}))
    run = asyncio.create_task(harness.orchestrator.orchestrate_orion(orion))
    await agent.wait_for(lambda a: len(a.unacknowledged_results) == 1, WAIT)
    lease_id = agent.unacknowledged_results[0].lease_id

    # The connection breaks without the server noticing (half-open): the agent reconnects,
    # its new session supersedes the old one, and hello replays the result.
    agent.hold_results = False
    await agent.reconnect(abandon=True)
    result = await asyncio.wait_for(run, WAIT)
    assert result["status"] == "completed", result["errors"]
    assert result["results"]["t"] == "kept"
    assert orion.get_task("t").current_retry == 0
    await agent.wait_for(lambda a: not a.unacknowledged_results, WAIT)
    assert (lease_id, True, "") in agent.result_acks
    await harness.engine.bus.flush()
    assert len(harness.events.of(EventType.TASK_COMPLETED, task_id="t")) == 1
    assert not harness.events.of(EventType.TASK_RETRYING, task_id="t")
    assert not harness.events.of(EventType.DEVICE_DISCONNECTED, device_id="d1")


async def test_an_agent_retries_until_the_server_is_up(harness_factory):
    with socket.socket() as s:  # a free port, closed again: nothing listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = DeviceAgent(f"127.0.0.1:{port}", "early", "linux", backoff_initial=0.05,
                        backoff_max=0.1)
    task = agent.start()
    try:
        await agent.wait_for(lambda a: a.session_attempts >= 3, WAIT)
        assert not agent.connected
        engine = OrionEngine()
        server = grpc.aio.server()
        add_device_service(server, engine, DeviceLinkConfig(heartbeat_interval=0.1, lease_ttl=1))
        assert server.add_insecure_port(f"127.0.0.1:{port}") == port
        await server.start()
        try:
            await agent.wait_connected(WAIT)
            assert engine.devices.is_online("early")
        finally:
            await agent.stop(timeout=1)
            await server.stop(0)
            await engine.close()
    finally:
        task.cancel()


async def test_server_goodbye_makes_agents_reconnect_after_the_suggested_delay(harness):
    agent = harness.agent("d1", backoff_initial=30, backoff_max=30)  # backoff would be slow
    await harness.connected(agent)
    first = agent.session_id
    for session in list(harness.servicer._sessions.values()):  # one session: say goodbye
        goodbye = pb.ServerGoodbye(reason="maintenance")
        goodbye.reconnect_after.FromMilliseconds(50)
        session.end("test", goodbye)
    await agent.wait_for(lambda a: a.connected and a.session_id != first, WAIT)
    assert agent.last_goodbye == "maintenance"


async def test_graceful_stop_drains_and_delivers_the_running_result(harness):
    agent = harness.agent("d1")
    await harness.connected(agent)
    run = asyncio.create_task(harness.orchestrator.execute_single_task(
        sleep_star("t", 0.3, target_device_id="d1")))
    await agent.wait_for(lambda a: len(a.running_lease_ids) == 1, WAIT)
    await agent.stop(timeout=WAIT)
    assert (await asyncio.wait_for(run, WAIT))["slept"] == 0.3
    assert not agent.unacknowledged_results
    await harness.events.wait_for(EventType.DEVICE_DISCONNECTED, device_id="d1")


async def test_a_draining_agent_rejects_new_work_and_the_server_knows(harness):
    agent = harness.agent("d1")
    await harness.connected(agent)
    await agent.drain("maintenance")
    # The server applies the drain when it reads it; a result_ack round trip orders that.
    agent._session.send(pb.ConnectRequest(result=pb.TaskResult(lease_id="probe")))  # type: ignore[union-attr]
    await agent.wait_for(lambda a: any(ack[0] == "probe" for ack in a.result_acks), WAIT)
    assert harness.devices.get_device_info("d1").draining
    assert not harness.devices.has_capacity("d1")


def test_agent_argument_validation():
    with pytest.raises(ValueError, match="device_id"):
        DeviceAgent("x:1", " ")
    with pytest.raises(ValueError, match="capacity"):
        DeviceAgent("x:1", "d", capacity=0)
    with pytest.raises(ValueError, match="unknown device type"):
        DeviceAgent("x:1", "d", "toaster")
    with pytest.raises(ValueError, match="default executor"):
        DeviceAgent("x:1", "d", default_executor="shell")


def test_the_channel_reconnects_on_the_agents_backoff_not_grpcs():
    # gRPC's own reconnect backoff (1 s growing to 120 s) would otherwise decide when a dead
    # connection is really retried: measured, a daemon with backoff_max=1 came back 2.3 s
    # after a 40 s outage ended (0.8 s with these options), and up to 120 s after long ones.
    agent = DeviceAgent("x:1", "d", backoff_initial=0.25, backoff_max=3)
    options = dict(agent._channel_options())
    assert options["grpc.initial_reconnect_backoff_ms"] == 250
    assert options["grpc.max_reconnect_backoff_ms"] == 3000
    assert options["grpc.keepalive_time_ms"] == 30_000  # the defaults are kept
    # An explicit channel option wins.
    mine = DeviceAgent("x:1", "d", channel_options=[("grpc.max_reconnect_backoff_ms", 5)])
    assert dict(mine._channel_options())["grpc.max_reconnect_backoff_ms"] == 5


async def test_results_travel_as_json_would_have_them_and_non_json_fails_the_star(harness):
    # Plain values are encoded field by field, anything else through json (tuples -> lists,
    # non-string keys -> strings; cycles refused): the same result either way.
    deep: Any = "leaf"
    for _ in range(10):
        deep = {"d": [deep]}
    cycle: list[Any] = []
    cycle.append(cycle)
    values = [None, True, 0, -3, 2.5, "", "é", [], {}, [1, [2, {"a": None}]],
              {"status": "ok", "n": 2**53, "big": 2**60, "f": 1e300},
              (1, "x"), {1: "one", None: "null", 2.5: True}, deep]
    returns = iter(values)

    async def give(assignment: Assignment) -> Any:
        return next(returns)

    agent = harness.agent("d1", executors={"give": give}, default_executor="give")
    await harness.connected(agent)
    for i, value in enumerate(values):
        got = await harness.orchestrator.execute_single_task(
            TaskStar(f"t{i}", description="give", target_device_id="d1"))
        assert got == json.loads(json.dumps(value)), value
    for bad in (float("nan"), {"x": object()}, ["\ud800"], cycle):
        returns = iter([bad])
        with pytest.raises(TaskExecutionError, match="not JSON") as err:
            await harness.orchestrator.execute_single_task(
                TaskStar(f"bad{id(bad)}", description="give", target_device_id="d1"))
        assert err.value.reason == "task_error"
