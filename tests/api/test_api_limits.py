"""Unit tests of the request limits, the JSON value checks and the guard's helpers."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from orion_grpc.api.errors import ApiError
from orion_grpc.api.guard import Undecodable, peer_host
from orion_grpc.api.limits import MAX_JSON_DEPTH, Limits, StreamSlots, json_problems
from orion_grpc.api.server import ServerConfig
from orion_grpc.core import (
    AddDependency,
    AddTask,
    InvalidArgumentError,
    RemoveTask,
    TaskOrion,
    TaskStar,
    TaskStarLine,
)
from orion_grpc.gen.orion.v1 import (
    manager_service_pb2,
    orchestrator_service_pb2,
    orion_pb2,
    task_star_pb2,
)


def orion_pb(stars: int, lines: int = 0, **task_data: object) -> orion_pb2.TaskOrion:
    pb = orion_pb2.TaskOrion(orion_id="o")
    for i in range(stars):
        task = pb.tasks.add(task_id=f"t{i}", description="d")
        if task_data:
            task.task_data.update(task_data)
    for i in range(lines):
        pb.dependencies.add(from_task_id=f"t{i}", to_task_id=f"t{i + 1}")
    return pb


def nested(depth: int) -> struct_pb2.Struct:
    inner = struct_pb2.Struct()
    inner.update({"leaf": 1})
    for _ in range(depth - 1):
        outer = struct_pb2.Struct()
        outer.fields["k"].struct_value.CopyFrom(inner)
        inner = outer
    return inner


# ---------------------------------------------------------------------- Limits
def test_an_orion_within_the_limits_passes() -> None:
    Limits(max_stars=3, max_lines=2, max_task_data_bytes=100).check_orion(
        orion_pb(3, 2, x="small"))


def test_too_many_stars_names_the_limit_and_how_to_change_it() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        Limits(max_stars=3).check_orion(orion_pb(4))
    err = info.value
    assert err.reason == "TOO_MANY_STARS"
    assert err.metadata == {"limit": "max_stars", "max": "3", "actual": "4",
                            "setting": "--max-stars / ORION_MAX_STARS"}
    assert "the orion has 4 stars" in err.message and "at most 3" in err.message
    assert [v.field for v in err.violations] == ["orion.tasks"]


def test_too_many_lines() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        Limits(max_lines=2).check_orion(orion_pb(4, 3), "planner")
    assert info.value.reason == "TOO_MANY_LINES"
    assert info.value.violations[0].field == "planner.dependencies"
    assert "--max-lines / ORION_MAX_LINES" in info.value.message


def test_task_data_too_large_lists_each_star() -> None:
    limits = Limits(max_task_data_bytes=64)
    pb = orion_pb(3)
    pb.tasks[0].task_data.update({"blob": "x" * 100})
    pb.tasks[2].task_data.update({"blob": "y" * 200})
    with pytest.raises(InvalidArgumentError) as info:
        limits.check_orion(pb)
    err = info.value
    assert err.reason == "TASK_DATA_TOO_LARGE"
    assert [v.field for v in err.violations] == ["orion.tasks[0].task_data",
                                                 "orion.tasks[2].task_data"]
    assert err.metadata["actual"] == str(pb.tasks[2].task_data.ByteSize())
    assert "by reference" in err.message  # what to do instead
    with pytest.raises(InvalidArgumentError):
        limits.check_task(pb.tasks[2], "task")
    limits.check_task(pb.tasks[1], "task")


def grown(stars: int, lines: int) -> TaskOrion:
    orion = TaskOrion(orion_id="live")
    for i in range(stars):
        orion.add_task(TaskStar(f"t{i}", description="d"))
    for i in range(lines):
        orion.add_dependency(TaskStarLine(f"t{i}", f"t{i + 1}"))
    return orion


def test_edits_may_not_grow_an_orion_beyond_the_limits() -> None:
    limits = Limits(max_stars=3, max_lines=1)
    orion = grown(3, 1)
    with pytest.raises(InvalidArgumentError) as info:
        limits.check_growth(orion, [AddTask(TaskStar("new", description="d"))])
    assert info.value.reason == "TOO_MANY_STARS"
    assert "after this edit orion live would have 4 stars" in info.value.message
    # a removal makes room
    limits.check_growth(orion, [RemoveTask("t2"), AddTask(TaskStar("new", description="d"))])
    with pytest.raises(InvalidArgumentError) as lines:
        limits.check_growth(orion, [AddDependency(TaskStarLine("t1", "t2"))])
    assert lines.value.reason == "TOO_MANY_LINES"


def test_an_orion_over_a_lowered_limit_can_still_be_edited_without_growing() -> None:
    limits = Limits(max_stars=2)
    orion = grown(3, 0)  # accepted when the limit was higher
    limits.check_growth(orion, [RemoveTask("t0")])
    limits.check_growth(orion, [RemoveTask("t0"), AddTask(TaskStar("n", description="d"))])
    with pytest.raises(InvalidArgumentError):
        limits.check_growth(orion, [AddTask(TaskStar("n", description="d"))])


# ---------------------------------------------------------------------- JSON values
def test_valid_json_values_have_no_problems() -> None:
    request = orchestrator_service_pb2.SubmitOrionRequest(orion=orion_pb(2, 1, a=[1, {"b": None}]))
    request.metadata.update({"x": 1.5})
    request.orion.dependencies[0].metadata.update({"y": "z"})
    assert json_problems(request) == []
    assert json_problems(nested(MAX_JSON_DEPTH)) == []


def test_nan_and_infinity_are_reported_with_their_path() -> None:
    request = orchestrator_service_pb2.SubmitOrionRequest(orion=orion_pb(2))
    request.orion.tasks[1].task_data.fields["ratio"].number_value = float("nan")
    request.orion.tasks[1].task_data.fields["list"].list_value.values.add().number_value = \
        float("inf")
    request.metadata.fields["odd key"].number_value = float("-inf")
    found = {v.field: v for v in json_problems(request)}
    assert set(found) == {"orion.tasks[1].task_data.ratio", "orion.tasks[1].task_data.list[0]",
                          "metadata['odd key']"}
    assert all(v.reason == "INVALID_JSON" for v in found.values())
    assert "not a JSON number" in found["orion.tasks[1].task_data.ratio"].description


def test_too_deep_json_is_reported_once_where_it_gets_too_deep() -> None:
    task = task_star_pb2.TaskStar(task_id="a")
    task.task_data.CopyFrom(nested(MAX_JSON_DEPTH + 5))
    problems = json_problems(task, "task")
    assert len(problems) == 1
    assert problems[0].reason == "JSON_TOO_DEEP"
    assert problems[0].field == "task.task_data" + ".k" * MAX_JSON_DEPTH


def test_strings_that_look_suspicious_to_the_byte_screen_are_still_fine() -> None:
    """The screen counts '*' and '2' bytes (the nesting tags) and looks for NaN-like bytes;
    strings full of them are walked and found clean."""
    task = task_star_pb2.TaskStar(task_id="a")
    task.task_data.update({"stars": "*" * 50, "twos": "2" * 50,
                           "nan_like": "\x11" + "\xff" * 8, "n": 2.5})
    assert json_problems(task) == []


def test_json_values_inside_maps_and_lists_of_messages_are_checked() -> None:
    request = manager_service_pb2.RegisterOrionRequest(orion=orion_pb(1))
    request.orion.metadata.fields["m"].number_value = float("nan")
    assert [v.field for v in json_problems(request)] == ["orion.metadata.m"]


# ---------------------------------------------------------------------- streams and peers
def test_stream_slots_are_counted_per_client() -> None:
    slots = StreamSlots(2)
    slots.acquire("a")
    slots.acquire("a")
    slots.acquire("b")
    with pytest.raises(ApiError) as info:
        slots.acquire("a")
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.reason == "TOO_MANY_STREAMS"
    assert info.value.metadata["setting"] == "--max-streams-per-client / " \
                                             "ORION_MAX_STREAMS_PER_CLIENT"
    slots.release("a")
    slots.acquire("a")
    assert slots.open_streams("a") == 2
    for _ in range(2):
        slots.release("a")
    assert slots.open_streams("a") == 0


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:10.0.0.7:53412", "10.0.0.7"), ("ipv6:[::1]:53412", "[::1]"),
    ("unix:/tmp/orion.sock", "unix:/tmp/orion.sock"), ("", "unknown")])
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_undecodable_requests_say_what_is_wrong() -> None:
    raw = manager_service_pb2.RegisterOrionRequest(
        orion=orion_pb2.TaskOrion(orion_id="XX")).SerializeToString().replace(b"XX", b"\xff\xfe")
    with pytest.raises(Exception) as info:
        manager_service_pb2.RegisterOrionRequest.FromString(raw)
    status = Undecodable("orion.v1.RegisterOrionRequest", info.value).status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not UTF-8" in status.message and "orion.v1.RegisterOrionRequest" in status.message


# ---------------------------------------------------------------------- configuration
def test_limits_come_from_flags_and_environment() -> None:
    config = ServerConfig.from_sources({"max_stars": 5}, {"ORION_MAX_LINES": "7",
                                                          "ORION_MAX_TASK_DATA_BYTES": "9",
                                                          "ORION_MAX_STREAMS_PER_CLIENT": "3"})
    assert config.limits() == Limits(max_stars=5, max_lines=7, max_task_data_bytes=9,
                                     max_streams_per_client=3)
    assert ServerConfig().limits() == Limits()
    with pytest.raises(ValueError, match="max_stars must be at least 1"):
        ServerConfig(max_stars=0).validated()
