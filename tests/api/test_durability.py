"""A server restarted on the same store (in process, graceful stop): orions come back with
their stars' states and versions, request ids still deduplicate, the event log continues
(resume tokens stay valid), and answers wait for the commit. The SIGKILL version with real
processes is tests/faults/test_restart.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from api_support import EventWaiter, fleet

from orion_grpc.client.client import domain_error, orion_pb
from orion_grpc.core import EventType, OrionError, TaskOrion, TaskStar, TaskStarLine, UpdateTask
from orion_grpc.gen.orion.v1 import event_pb2, orchestrator_service_pb2
from orion_grpc.gen.orion.v1 import orchestrator_service_pb2_grpc as orch_grpc


def pipeline(orion_id: str) -> TaskOrion:
    orion = TaskOrion(orion_id)
    for task_id in ("build", "test", "ship"):
        orion.add_task(TaskStar(task_id, description=task_id, target_device_id="d1"))
    orion.add_dependency(TaskStarLine("build", "test", "success_only"))
    orion.add_dependency(TaskStarLine("test", "ship", "success_only"))
    return orion


async def events_until(client, n: int, **watch) -> list[event_pb2.Event]:
    out: list[event_pb2.Event] = []

    async def read() -> None:
        async for event in client.watch_events(**watch):
            out.append(event)
            if len(out) == n:
                return
    await asyncio.wait_for(read(), 5)
    return out


async def test_a_restarted_server_has_every_orion_request_id_and_event(
        make_server, tmp_path: Path) -> None:
    from orion_grpc.client import OrionClient

    store = str(tmp_path / "orion.db")
    first = await make_server(store=store)
    await fleet(first, "d1")
    request = orchestrator_service_pb2.SubmitOrionRequest(request_id="submit-1")
    async with OrionClient(first.target, timeout=10) as client:
        request.orion.CopyFrom(orion_pb(pipeline("p1")))
        stub = orch_grpc.OrchestratorServiceStub(client.channel)
        answer = await stub.SubmitOrion(request)
        assert answer.orion_id == "p1"
        p2 = pipeline("p2")  # the same object both times: the request must be identical
        result = await client.orchestrate_orion(p2, request_id="orch-1")
        assert result["status"] == "completed"
        edited = await client.register_orion(pipeline("p3"))
        await client.edit_orion(edited, [UpdateTask("ship", {"description": "ship it"})])
        history = await events_until(client, first.events.latest_sequence,
                                     include_history=True)
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    last_token = history[-1].resume_token
    await first.stop()

    second = await make_server(store=store)
    async with OrionClient(second.target, timeout=10) as client:
        back = await client.get_orion("p2")
        assert back is not None and back.state.value == "completed"
        assert {t.task_id: t.status.value for t in back.get_all_tasks()} == dict.fromkeys(
            ("build", "test", "ship"), "completed")
        assert back.get_task("ship").result == {"status": "ok", "task": "ship", "n": 3}
        p3 = await client.get_orion("p3")
        assert p3 is not None and p3.get_task("ship").description == "ship it"
        assert second.state.version("p3") == 2  # the structural version survived
        # The same request ids get the first answers, without acting again ...
        stub = orch_grpc.OrchestratorServiceStub(client.channel)
        assert await stub.SubmitOrion(request) == answer
        again = await client.orchestrate_orion(p2, request_id="orch-1")
        assert again["status"] == "completed"
        # ... and a different request under a used id is still refused.
        request.orion.name = "something else"
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.SubmitOrion(request)
        assert domain_error(raw.value).reason == "REQUEST_ID_REUSED"
        # The event log continues: resuming with the last token of the first run yields the
        # next event, numbered right after it.
        await fleet(second, "d2")
        [resumed] = await events_until(client, 1, resume_token=last_token)
        assert resumed.sequence == history[-1].sequence + 1
        assert resumed.type == event_pb2.EVENT_TYPE_DEVICE_CONNECTED


async def test_a_token_older_than_the_retained_history_is_out_of_range_after_a_restart(
        make_server, tmp_path: Path) -> None:
    from orion_grpc.client import OrionClient

    store = str(tmp_path / "orion.db")
    first = await make_server(store=store, event_retention=5)
    await fleet(first, "d1")
    async with OrionClient(first.target, timeout=10) as client:
        await client.orchestrate_orion(pipeline("p"))
        old_token = first.events.token(1)
    await first.stop()
    second = await make_server(store=store, event_retention=5)
    assert second.events.oldest_sequence == second.events.latest_sequence - 4
    async with OrionClient(second.target, timeout=10) as client:
        with pytest.raises(OrionError) as info:
            await events_until(client, 1, resume_token=old_token)
    assert info.value.code is grpc.StatusCode.OUT_OF_RANGE
    assert info.value.reason == "RESUME_TOKEN_EXPIRED"


async def test_answers_wait_for_the_commit_and_a_broken_store_stops_them(make_server) -> None:
    from orion_grpc.client import OrionClient

    server = await make_server()  # :memory: SQLite, as every API test
    journal = server.engine.journal
    assert journal is not None
    await fleet(server, "d1")
    async with OrionClient(server.target, timeout=10) as client:
        await client.submit_orion(pipeline("ok"))
        assert journal.stats.commits >= 1
        journal.failure = OSError("disk full")  # as if the next write failed
        with pytest.raises(OrionError) as info:
            await client.submit_orion(pipeline("lost"))
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.reason == "STORE_UNAVAILABLE" and "disk full" in info.value.message


async def test_a_graceful_stop_suspends_runs_instead_of_cancelling_them(
        make_server, tmp_path: Path) -> None:
    from orion_grpc.client import OrionClient

    store = str(tmp_path / "orion.db")
    first = await make_server(store=store)
    [device] = await fleet(first, "d1", hang_task_ids={"test"})
    waiter = EventWaiter(first)
    async with OrionClient(first.target, timeout=10, run_timeout=20) as client:
        held = pipeline("held")  # retried below as the same request
        run = asyncio.create_task(client.orchestrate_orion(held, request_id="held-1"))
        await waiter.wait(EventType.TASK_STARTED, task_id="test")
        await first.stop()
        with pytest.raises(OrionError) as info:
            await run
    # The caller learns the run is suspended, not cancelled; the device was told nothing.
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.reason == "RUN_SUSPENDED" and "starts again" in info.value.message
    assert device.cancelled == []

    second = await make_server(store=store, reconnect_grace=5.0)
    async with OrionClient(second.target, timeout=10, run_timeout=20) as client:
        back = await client.get_orion("held")
        assert back is not None and back.state.value == "executing"
        assert back.get_task("test").status.value == "running"  # still leased to d1
        lease = next(iter(second.engine.devices.leases_of("held").values()))
        await fleet(second, "d1")
        assert second.engine.devices.complete_lease("d1", lease.lease_id, True, {"late": 1})
        result = await client.orchestrate_orion(held, request_id="held-1")
    assert result["status"] == "completed" and result["results"]["test"] == {"late": 1}
