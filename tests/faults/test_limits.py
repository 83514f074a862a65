"""Every limit, against a real server (grpc.aio on loopback, generated stubs): a request at
the limit is accepted, one beyond it refused with a status that names the setting, and what
the server had accepted before is untouched.

(Events buffered per WatchEvents subscriber — ``--watch-max-lag`` — are covered by
tests/api/test_api_watch.py::test_a_slow_watcher_is_cut_off_with_a_resume_token.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from guard_support import (
    WAIT,
    ServerThread,
    Stubs,
    World,
    decode,
    open_streams,
    rejection,
    simple_orion,
)

from orion_grpc.core import FakeDevice
from orion_grpc.gen.orion.v1 import (
    device_service_pb2,
    event_service_pb2,
    manager_service_pb2,
    orion_pb2,
)

MAX_STARS, MAX_LINES, MAX_DATA, MAX_STREAMS = 40, 45, 2000, 2


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    server = ServerThread(max_stars=MAX_STARS, max_lines=MAX_LINES, max_task_data_bytes=MAX_DATA,
                          max_streams_per_client=MAX_STREAMS)
    yield server
    server.stop()


@pytest.fixture
def stubs(server: ServerThread) -> Iterator[Stubs]:
    with Stubs(server.target) as stubs:
        yield stubs


def shaped(orion_id: str, stars: int, lines: int, data_bytes: int = 0) -> orion_pb2.TaskOrion:
    """``stars`` stars, ``lines`` distinct forward lines; star 0's task_data is
    ``data_bytes`` long on the wire."""
    pb = simple_orion(orion_id, *(f"t{i}" for i in range(stars)), chain=False)
    pairs = [(a, b) for b in range(stars) for a in range(b)][:lines]
    for a, b in pairs:
        pb.dependencies.add(from_task_id=f"t{a}", to_task_id=f"t{b}")
    data = pb.tasks[0].task_data
    for length in range(data_bytes, 0, -1):  # length prefixes make sizes jump: search
        data.update({"blob": "x" * length})
        if data.ByteSize() <= data_bytes:
            break
    assert data.ByteSize() == data_bytes
    return pb


def register(stubs: Stubs, pb: orion_pb2.TaskOrion) -> None:
    stubs.manager.RegisterOrion(manager_service_pb2.RegisterOrionRequest(orion=pb), timeout=WAIT)


@pytest.mark.parametrize(("name", "at_limit", "beyond", "reason", "setting"), [
    ("stars", (MAX_STARS, 0, 0), (MAX_STARS + 1, 0, 0), "TOO_MANY_STARS", "--max-stars"),
    ("lines", (MAX_STARS, MAX_LINES, 0), (MAX_STARS, MAX_LINES + 1, 0), "TOO_MANY_LINES",
     "--max-lines"),
    ("task_data", (2, 0, MAX_DATA), (2, 0, MAX_DATA + 1), "TASK_DATA_TOO_LARGE",
     "--max-task-data-bytes"),
])
def test_at_the_limit_is_accepted_beyond_it_refused(
        stubs: Stubs, name: str, at_limit: tuple[int, int, int], beyond: tuple[int, int, int],
        reason: str, setting: str) -> None:
    world = World(stubs)
    world.snapshots = {oid: b"" for oid in world.listed_ids()}  # whatever earlier tests left
    for orion_id in world.snapshots:
        world.accept(orion_id)
    register(stubs, shaped(f"{name}-at-limit", *at_limit))
    world.accept(f"{name}-at-limit")
    refused = rejection(lambda: register(stubs, shaped(f"{name}-beyond", *beyond)))
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.reason == reason
    assert refused.metadata["setting"].startswith(setting)
    assert setting in refused.message
    world.assert_untouched()


def test_streams_per_client_are_limited_and_freed_when_they_end(server: ServerThread,
                                                                stubs: Stubs) -> None:
    streams = list(open_streams(stubs, MAX_STREAMS))
    try:
        refused = rejection(lambda: next(iter(stubs.events.WatchEvents(
            event_service_pb2.WatchEventsRequest(), timeout=WAIT))))
        assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.reason == "TOO_MANY_STREAMS"
        assert refused.metadata["max"] == str(MAX_STREAMS)
        assert "close one" in refused.message
        # device streams count too: a daemon is told to come back later, not refused for good
        hello = device_service_pb2.ConnectRequest(hello=device_service_pb2.DeviceHello(
            device_id="dev-x", capacity=1))
        connect = stubs.devices.Connect(iter([hello]), timeout=WAIT)
        with pytest.raises(grpc.RpcError) as info:
            next(connect)
        assert decode(info.value).reason == "TOO_MANY_STREAMS"
        # the open streams are not disturbed: both see the next event
        server.attach(FakeDevice("seen-by-both"))
        for stream in streams:
            assert next(stream).event.device_id == "seen-by-both"
    finally:
        streams[0].cancel()
    slots = server.server.stream_slots
    assert slots is not None
    server.run(asyncio.wait_for(slots.wait_for_at_most("127.0.0.1", MAX_STREAMS - 1), WAIT))
    again = list(open_streams(stubs, 1))  # the cancelled stream's slot is free again
    for stream in again + streams[1:]:
        stream.cancel()
