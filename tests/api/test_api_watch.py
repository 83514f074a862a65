"""EventService.WatchEvents over the wire: filters, resume, bookmarks, slow watchers, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import pytest
from api_support import fleet
from grpc_status import rpc_status

from orion_grpc.core import DeviceEvent, EventType, TaskOrion, TaskStar, TaskStarLine
from orion_grpc.gen.orion.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc


def chain(orion_id: str, *ids: str) -> TaskOrion:
    orion = TaskOrion(orion_id=orion_id)
    for tid in ids:
        orion.add_task(TaskStar(tid, description=tid, target_device_id="d1"))
    for src, dst in itertools.pairwise(ids):
        orion.add_dependency(TaskStarLine(src, dst))
    return orion


async def take(call, n: int, timeout: float = 5.0) -> list[event_pb2.Event]:
    async def read() -> list[event_pb2.Event]:
        out = []
        async for response in call:
            out.append(response.event)
            if len(out) == n:
                break
        return out
    return await asyncio.wait_for(read(), timeout)


def burst(server, n: int) -> None:
    """Publish n events in one loop turn (straight onto the engine's bus)."""
    for i in range(n):
        server.engine.bus.publish(DeviceEvent(EventType.DEVICE_STATUS_CHANGED, "test",
                                              time.time(), {}, "noise",
                                              "busy" if i % 2 else "idle", {}))


async def test_filters_and_history(server, client, channel):
    await fleet(server, "d1")
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    assert (await client.orchestrate_orion(chain("one", "a", "b")))["status"] == "completed"
    live = stub.WatchEvents(event_service_pb2.WatchEventsRequest(  # wants snapshots from now
        orion_id="two", include_orion_snapshots=True,
        types=[event_pb2.EVENT_TYPE_ORION_COMPLETED]))
    await live.wait_for_connection()
    assert (await client.orchestrate_orion(chain("two", "x")))["status"] == "completed"
    (done,) = await take(live, 1)
    live.cancel()
    assert [t.task_id for t in done.orion.snapshot.tasks] == ["x"]
    call = stub.WatchEvents(event_service_pb2.WatchEventsRequest(
        include_history=True, orion_id="one", types=[event_pb2.EVENT_TYPE_TASK_COMPLETED,
                                                     event_pb2.EVENT_TYPE_ORION_COMPLETED]))
    events = await take(call, 3)
    call.cancel()
    assert [(e.type, e.task_id) for e in events] == [
        (event_pb2.EVENT_TYPE_TASK_COMPLETED, "a"), (event_pb2.EVENT_TYPE_TASK_COMPLETED, "b"),
        (event_pb2.EVENT_TYPE_ORION_COMPLETED, "")]
    assert events[0].sequence < events[1].sequence < events[2].sequence
    assert events[2].orion.result.results["b"].struct_value.fields["task"].string_value == "b"
    assert not events[2].orion.HasField("snapshot")
    call = stub.WatchEvents(event_service_pb2.WatchEventsRequest(
        include_history=True, task_ids=["x"], include_orion_snapshots=True))
    (started, completed) = await take(call, 2)
    call.cancel()
    assert (started.orion_id, started.task.snapshot.task_id) == ("two", "x")
    assert completed.type == event_pb2.EVENT_TYPE_TASK_COMPLETED
    call = stub.WatchEvents(event_service_pb2.WatchEventsRequest(
        include_history=True, orion_id="one", include_orion_snapshots=True,
        types=[event_pb2.EVENT_TYPE_ORION_COMPLETED]))
    (replayed,) = await take(call, 1)
    call.cancel()
    assert not replayed.orion.HasField("snapshot")  # nobody wanted one when it was logged


async def test_a_watcher_allowing_batches_gets_what_is_pending_in_one_response(server,
                                                                               channel):
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    burst(server, 50)
    batched = stub.WatchEvents(event_service_pb2.WatchEventsRequest(include_history=True,
                                                                    allow_batches=True))
    first = await asyncio.wait_for(batched.read(), 5)
    batched.cancel()
    assert not first.HasField("event")
    assert [e.sequence for e in first.events] == list(range(1, 51))  # in order, no gap
    assert first.events[1].device.previous_status == first.events[0].device.status
    single = stub.WatchEvents(event_service_pb2.WatchEventsRequest(include_history=True))
    one = await asyncio.wait_for(single.read(), 5)
    single.cancel()
    assert one.event.sequence == 1 and not one.events  # the old form: one event each
    assert one.event == first.events[0]  # the same bytes on the wire for everyone


async def test_batched_snapshots_and_filters(server, client, channel):
    await fleet(server, "d1")
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    live = stub.WatchEvents(event_service_pb2.WatchEventsRequest(
        orion_id="snap", include_orion_snapshots=True, allow_batches=True,
        types=[event_pb2.EVENT_TYPE_ORION_STARTED, event_pb2.EVENT_TYPE_ORION_COMPLETED]))
    await live.wait_for_connection()
    assert (await client.orchestrate_orion(chain("snap", "x", "y")))["status"] == "completed"
    events = []
    while len(events) < 2:
        events += (await asyncio.wait_for(live.read(), 5)).events
    live.cancel()
    assert [e.type for e in events] == [event_pb2.EVENT_TYPE_ORION_STARTED,
                                        event_pb2.EVENT_TYPE_ORION_COMPLETED]
    assert [t.task_id for t in events[1].orion.snapshot.tasks] == ["x", "y"]
    assert events[1].orion.result.results["y"].struct_value.fields["task"].string_value == "y"


async def test_resume_returns_every_later_event_once(server, client):
    await fleet(server, "d1")
    await client.orchestrate_orion(chain("r1", "a", "b", "c"))
    everything = [e async for e in _until(client.watch_events(include_history=True), "r1")]
    await client.orchestrate_orion(chain("r2", "d", "e"))
    middle = len(everything) // 2
    resumed = [e async for e in _until(client.watch_events(
        resume_token=everything[middle].resume_token), "r2")]
    assert resumed[:len(everything) - middle - 1] == everything[middle + 1:]
    sequences = [e.sequence for e in everything[:middle + 1] + resumed]
    assert sequences == list(range(1, len(sequences) + 1))  # no gap, no duplicate


async def _until(events, orion_id: str):
    async for event in events:
        yield event
        if event.type == event_pb2.EVENT_TYPE_ORION_COMPLETED and event.orion_id == orion_id:
            return


async def test_idle_streams_get_bookmarks(make_server):
    server = await make_server(bookmark_interval=0.05)
    burst(server, 3)
    await server.engine.bus.flush()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        call = stub.WatchEvents(event_service_pb2.WatchEventsRequest(
            types=[event_pb2.EVENT_TYPE_TASK_STARTED]))
        first, second = await take(call, 2)
        call.cancel()
    assert first.type == second.type == event_pb2.EVENT_TYPE_BOOKMARK
    assert first.sequence == 3 and first.bookmark.oldest_retained_sequence == 1
    assert server.events.parse_token(first.resume_token) == 3


async def test_a_slow_watcher_is_cut_off_with_a_resume_token(make_server):
    server = await make_server(event_retention=1000, watch_max_lag=20)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        call = stub.WatchEvents(event_service_pb2.WatchEventsRequest())
        await call.wait_for_connection()
        burst(server, 100)  # faster than any watcher: 100 events in one loop turn
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await take(call, 1000)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(info.value)
    assert "resume with resume_token" in status.message
    assert server.events.subscriber_count == 0


async def test_bad_requests_are_refused(channel, server):
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    for request, code in [
        (event_service_pb2.WatchEventsRequest(types=[99]), grpc.StatusCode.INVALID_ARGUMENT),
        (event_service_pb2.WatchEventsRequest(types=[0]), grpc.StatusCode.INVALID_ARGUMENT),
        (event_service_pb2.WatchEventsRequest(resume_token="junk"),
         grpc.StatusCode.INVALID_ARGUMENT),
        (event_service_pb2.WatchEventsRequest(resume_token=server.events.token(0),
                                              include_history=True),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await take(stub.WatchEvents(request), 1)
        assert info.value.code() is code, request


async def test_shutdown_ends_streams_with_a_resumable_unavailable(make_server):
    server = await make_server()
    burst(server, 2)
    await server.engine.bus.flush()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        call = stub.WatchEvents(event_service_pb2.WatchEventsRequest(include_history=True))
        assert len(await take(call, 2)) == 2
        stopping = asyncio.create_task(server.stop(2))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await take(call, 10)
        await stopping
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details().startswith("server shutting down, resume with token ")
    status = rpc_status.from_call(info.value)
    assert status is not None and len(status.details) == 1
