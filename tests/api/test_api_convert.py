"""pb <-> domain conversion: round trips, enums, JSON values, edits, events."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2

from orion_grpc.api import convert
from orion_grpc.api.convert_events import event_to_pb
from orion_grpc.core import (
    AddDependency,
    AddTask,
    DependencyType,
    DeviceEvent,
    DeviceType,
    EventType,
    InvalidArgumentError,
    OrionEvent,
    RemoveDependency,
    RemoveTask,
    TaskEvent,
    TaskOrion,
    TaskPriority,
    TaskStar,
    TaskStarLine,
    TaskStatus,
    UpdateDependency,
    UpdateTask,
)
from orion_grpc.core.edits import apply_edits
from orion_grpc.core.spec import orion_from_spec
from orion_grpc.gen.orion.v1 import (
    device_pb2,
    edit_pb2,
    event_pb2,
    orion_pb2,
    task_star_pb2,
)


def full_star(task_id: str = "s1") -> TaskStar:
    return TaskStar(task_id, name="Build", description="build it", tips=["fast", "clean"],
                    target_device_id="pc-1", device_type="windows", priority=TaskPriority.HIGH,
                    timeout=12.5, retry_count=2,
                    task_data={"n": 3, "ratio": 0.5, "nested": {"xs": [1, 2, "three"]},
                               "flag": True, "none": None},
                    expected_output_type="report", required_capabilities=["gpu", "msbuild"])


def sample_orion() -> TaskOrion:
    orion = TaskOrion(orion_id="o1", name="sample", metadata={"owner": "me", "n": 1})
    orion.add_task(full_star("a"))
    orion.add_task(TaskStar("b", description="b"))
    orion.add_task(TaskStar("c", description="c", device_type="linux"))
    orion.add_dependency(TaskStarLine("a", "b", DependencyType.SUCCESS_ONLY, "after a",
                                      line_id="l1", metadata={"why": "order"}))
    orion.add_dependency(TaskStarLine("b", "c", DependencyType.CONDITIONAL, "if ok",
                                      line_id="l2", condition='result.status == "ok"'))
    return orion


# ---------------------------------------------------------------------- stars and lines
def test_star_definition_round_trips():
    star = full_star()
    pb = convert.task_to_pb(star, "o1")
    assert pb.resource_name == "orions/o1/stars/s1"
    assert pb.device_type == task_star_pb2.DEVICE_TYPE_WINDOWS
    assert pb.priority == task_star_pb2.TASK_PRIORITY_HIGH
    assert pb.timeout.seconds == 12 and pb.timeout.nanos == 500_000_000
    back = convert.task_from_pb(pb)
    for name in ("task_id", "name", "description", "tips", "target_device_id", "device_type",
                 "priority", "timeout", "retry_count", "task_data", "expected_output_type",
                 "required_capabilities"):
        assert getattr(back, name) == getattr(star, name), name
    assert isinstance(back.task_data["n"], int)  # Struct numbers are doubles; ints come back


def test_star_runtime_state_goes_out():
    orion = sample_orion()
    orion.start_execution()
    orion.finish_task("a", True, {"status": "ok", "count": 2})
    pb = convert.task_to_pb(orion.get_task("a"), "o1")
    assert pb.status == task_star_pb2.TASK_STATUS_COMPLETED and pb.is_terminal
    assert convert.value_from_pb(pb.result) == {"status": "ok", "count": 2}
    assert pb.HasField("execution_start_time") and pb.HasField("execution_duration")
    waiting = convert.task_to_pb(orion.get_task("c"))
    assert waiting.status == task_star_pb2.TASK_STATUS_WAITING_DEPENDENCY


def test_empty_star_fields_get_the_documented_defaults():
    star = convert.task_from_pb(task_star_pb2.TaskStar(description="x"))
    assert len(star.task_id) == 36  # a UUID4
    assert star.name == f"task_{star.task_id[:8]}"
    assert star.priority is TaskPriority.MEDIUM and star.device_type is None
    assert star.timeout is None and star.target_device_id is None


def test_line_with_condition_round_trips():
    line = TaskStarLine("a", "b", DependencyType.CONDITIONAL, "when ok", line_id="l9",
                        condition='result.count > 3 && success', metadata={"k": [1, 2]})
    pb = convert.line_to_pb(line, "o1")
    assert pb.condition.expression == 'result.count > 3 && success'
    assert pb.resource_name == "orions/o1/lines/l9"
    problems = convert.Problems()
    spec = convert.line_spec_from_pb(pb, "line", problems)
    assert not problems
    back = TaskStarLine.from_dict(spec)
    assert (back.line_id, back.dependency_type, back.condition, back.metadata) == \
        ("l9", DependencyType.CONDITIONAL, line.condition, {"k": [1, 2]})


def test_unspecified_dependency_type_means_unconditional():
    pb = orion_pb2.TaskOrion(tasks=[task_star_pb2.TaskStar(task_id="a"),
                                    task_star_pb2.TaskStar(task_id="b")])
    pb.dependencies.add(from_task_id="a", to_task_id="b")
    orion = convert.orion_from_pb(pb)
    (line,) = orion.get_all_dependencies()
    assert line.dependency_type is DependencyType.UNCONDITIONAL


# ---------------------------------------------------------------------- whole orions
def test_orion_round_trips_structure_and_metadata():
    orion = sample_orion()
    pb = convert.orion_to_pb(orion, version=4)
    assert (pb.orion_id, pb.version, pb.resource_name) == ("o1", 4, "orions/o1")
    assert pb.state == orion_pb2.ORION_STATE_READY
    back = convert.orion_from_pb(pb)
    assert list(back.tasks) == ["a", "b", "c"]
    assert {lid: (d.from_task_id, d.to_task_id, d.dependency_type, d.condition)
            for lid, d in back.dependencies.items()} == \
        {lid: (d.from_task_id, d.to_task_id, d.dependency_type, d.condition)
         for lid, d in orion.dependencies.items()}
    assert back.metadata == {"owner": "me", "n": 1}


def test_orion_with_state_keeps_statuses_and_results():
    orion = sample_orion()
    orion.start_execution()
    orion.finish_task("a", True, {"status": "ok"})
    back = convert.orion_with_state_from_pb(convert.orion_to_pb(orion))
    assert back.get_task("a").status is TaskStatus.COMPLETED
    assert back.get_task("a").result == {"status": "ok"}
    assert back.get_task("b").status in (TaskStatus.PENDING, TaskStatus.WAITING_DEPENDENCY)


def test_every_problem_of_a_bad_orion_is_one_violation():
    pb = orion_pb2.TaskOrion()
    pb.tasks.add(task_id="a", device_type=99)           # unknown enum number
    pb.tasks.add(task_id="a")                           # duplicate id
    pb.tasks.add(task_id="b", priority=42, retry_count=-1)
    pb.tasks.add(task_id="c", timeout=duration_pb2.Duration(seconds=-1))
    pb.dependencies.add(from_task_id="a", to_task_id="ghost")            # dangling
    pb.dependencies.add(from_task_id="b", to_task_id="b")                # self loop
    pb.dependencies.add(from_task_id="a", to_task_id="b", dependency_type=77)
    bad = pb.dependencies.add(from_task_id="b", to_task_id="c")
    bad.condition.expression = "result.x =="                               # does not parse
    with pytest.raises(InvalidArgumentError) as info:
        convert.orion_from_pb(pb)
    err = info.value
    assert err.reason == "INVALID_ORION"
    got = {(v.field, v.reason) for v in err.violations}
    assert got == {
        ("orion.tasks[0].device_type", "UNKNOWN_ENUM_VALUE"),
        ("orion.tasks[1].task_id", "DUPLICATE_TASK_ID"),
        ("orion.tasks[2].priority", "UNKNOWN_ENUM_VALUE"),
        ("orion.tasks[2].retry_count", "INVALID_FIELD"),
        ("orion.tasks[3].timeout", "INVALID_FIELD"),
        ("orion.dependencies[0].to_task_id", "DANGLING_DEPENDENCY"),
        ("orion.dependencies[1]", "SELF_LOOP"),
        ("orion.dependencies[2].dependency_type", "UNKNOWN_ENUM_VALUE"),
        ("orion.dependencies[3].condition", "INVALID_CONDITION"),
    }
    assert len(err.violations) == len(got)
    assert "99" in next(v.description for v in err.violations if "device_type" in v.field)


def test_cycles_are_reported_with_the_stars_on_them():
    pb = orion_pb2.TaskOrion(tasks=[task_star_pb2.TaskStar(task_id=t) for t in "xyz"])
    for src, dst in (("x", "y"), ("y", "z"), ("z", "x")):
        pb.dependencies.add(from_task_id=src, to_task_id=dst)
    with pytest.raises(InvalidArgumentError) as info:
        convert.orion_from_pb(pb)
    (violation,) = info.value.violations
    assert violation.reason == "CYCLE" and "['x', 'y', 'z']" in violation.description


def test_required_enum_left_unspecified_is_a_violation():
    problems = convert.Problems()
    assert convert.strategy_from_pb(0, "strategy", problems, required=True) is None
    assert convert.strategy_from_pb(0, "assignment_strategy", problems) is None
    assert convert.strategy_from_pb(2, "assignment_strategy", problems) == "capability_match"
    assert [(v.field, v.reason) for v in problems.items] == [("strategy", "MISSING_FIELD")]
    assert "ASSIGNMENT_STRATEGY_ROUND_ROBIN" in problems.items[0].description


# ---------------------------------------------------------------------- JSON values
@pytest.mark.parametrize("value", [None, True, 0, 7, -3, 2**40, 1.5, "x", [], {},
                                   {"a": [1, {"b": None}], "c": 2.25}])
def test_values_round_trip(value):
    assert convert.value_from_pb(convert.value_to_pb(value)) == value


def test_values_encode_as_json_format_does():
    """The field-by-field Struct/Value encoding (hot path) matches protobuf's own ParseDict /
    MessageToDict, including empty containers, nesting and what JSON cannot carry."""
    value = {"a": {}, "b": [], "c": [1, [2.5, None], {"d": True}], 3: "int key",
             "nan": float("inf"), "when": datetime(2026, 1, 2, tzinfo=UTC),
             "prio": TaskPriority.HIGH, "set": {4}}
    expected = json_format.ParseDict(convert.plain(value), struct_pb2.Struct())
    assert convert.dict_to_struct(value) == expected
    assert convert.value_to_pb(value).struct_value == expected
    assert convert.struct_to_dict(expected) == {**convert.plain(value), "c": [1, [2.5, None],
                                                                        {"d": True}]}


def test_star_snapshot_follows_edits_of_its_definition():
    """task_to_pb caches the encoded definition per star revision: every edit shows."""
    star = full_star()
    assert convert.task_to_pb(star, "o1").description == star.description
    star.description = "changed"
    star.update_task_data({"extra": 1})
    pb = convert.task_to_pb(star, "o1")
    assert pb.description == "changed" and convert.struct_to_dict(pb.task_data)["extra"] == 1
    assert convert.task_to_pb(star, "o2").resource_name == "orions/o2/stars/s1"
    orion = TaskOrion("o1")
    orion.add_task(TaskStar(task_id="t", description="x", task_data={"k": 1}))
    apply_edits(orion, [UpdateTask("t", {"task_data": {"k": 2}})])
    assert convert.struct_to_dict(convert.task_to_pb(orion.get_task("t")).task_data) == {"k": 2}


def test_non_json_values_become_strings():
    assert convert.plain({1: float("nan"), "t": (1, 2), "e": RuntimeError("boom")}) == \
        {"1": "nan", "t": [1, 2], "e": "boom"}


# ---------------------------------------------------------------------- results and status
def test_result_status_and_statistics_round_trip():
    orion = sample_orion()
    orion.start_execution()
    orion.finish_task("a", True, {"status": "ok"})
    orion.finish_task("b", False, error="broke")
    orion.complete_execution()
    result = convert.result_from_orion(orion)
    back = convert.result_from_pb(convert.result_to_pb(result, "o1"))
    assert back["status"] == orion.state.value
    assert back["results"]["a"] == {"status": "ok"}
    assert back["errors"]["b"] == "broke"
    assert back["statistics"]["task_status_counts"] == \
        {k: v for k, v in result["statistics"]["task_status_counts"].items()}
    assert back["statistics"]["critical_path_tasks"] == result["statistics"]["critical_path_tasks"]


# ---------------------------------------------------------------------- edits
def test_edit_operations_round_trip():
    ops = [
        AddTask(TaskStar("n1", description="new", device_type="linux", timeout=3)),
        RemoveTask("old"),
        UpdateTask("b", {"description": "changed", "priority": TaskPriority.CRITICAL,
                         "device_type": DeviceType.ANDROID, "timeout": 9.0,
                         "task_data": {"k": 1}, "target_device_id": None}),
        AddDependency(TaskStarLine("a", "n1", DependencyType.CONDITIONAL, "d", line_id="ln",
                                   condition="success")),
        RemoveDependency("l1"),
        UpdateDependency("l2", {"dependency_type": DependencyType.SUCCESS_ONLY,
                                "condition": None, "condition_description": "now strict"}),
    ]
    problems = convert.Problems()
    back = convert.edit_ops_from_pb(convert.edit_ops_to_pb(ops), problems)
    assert not problems.items
    assert [type(op) for op in back] == [type(op) for op in ops]
    assert back[0].task.task_id == "n1" and back[0].task.timeout == 3
    assert back[2] == UpdateTask("b", ops[2].fields)
    assert back[3].dependency.condition == "success"
    assert back[5] == ops[5]


def test_bad_edit_operations_are_all_reported():
    ops = [edit_pb2.EditOperation(),
           edit_pb2.EditOperation(update_task=edit_pb2.UpdateTaskOperation(
               task=task_star_pb2.TaskStar(task_id="a", device_type=55),
               update_mask=field_mask_pb2.FieldMask(paths=["status", "device_type"]))),
           edit_pb2.EditOperation(remove_task=edit_pb2.RemoveTaskOperation())]
    add = edit_pb2.EditOperation()
    add.add_dependency.dependency.from_task_id = "a"
    add.add_dependency.dependency.condition.expression = "((("
    ops.append(add)
    problems = convert.Problems()
    assert convert.edit_ops_from_pb(ops, problems) == []
    assert {(v.field, v.reason) for v in problems.items} == {
        ("operations[0]", "MISSING_FIELD"),
        ("operations[1].update_task.update_mask", "UNKNOWN_FIELD"),
        ("operations[1].update_task.task.device_type", "UNKNOWN_ENUM_VALUE"),
        ("operations[2].remove_task.task_id", "MISSING_FIELD"),
        ("operations[3].add_dependency.dependency.to_task_id", "MISSING_FIELD"),
        ("operations[3].add_dependency.dependency.condition", "INVALID_CONDITION"),
    }


# ---------------------------------------------------------------------- devices and events
def test_device_event_and_snapshot():
    info = {"device_id": "pc-1", "device_type": "windows", "status": "busy", "capacity": 2,
            "capabilities": ["gpu"], "current_tasks": ["a"],
            "metadata": {"system_info": {"platform": "windows 11"}}}
    event = DeviceEvent(EventType.DEVICE_STATUS_CHANGED, "dm", time.time(), {}, "pc-1", "busy",
                        info)
    pb, snapshot = event_to_pb(event, 7, "tok", previous_device_status="idle")
    assert snapshot is None
    assert (pb.sequence, pb.resume_token, pb.type) == \
        (7, "tok", event_pb2.EVENT_TYPE_DEVICE_STATUS_CHANGED)
    assert pb.device.status == device_pb2.DEVICE_STATUS_BUSY
    assert pb.device.previous_status == device_pb2.DEVICE_STATUS_IDLE
    assert pb.device.snapshot.platform == "windows 11"
    assert list(pb.device.snapshot.current_task_ids) == ["a"]


def test_task_and_orion_events():
    orion = orion_from_spec({"orion_id": "o", "tasks": [{"task_id": "a"}, {"task_id": "b"}],
                             "dependencies": [{"from_task_id": "a", "to_task_id": "b"}]})
    orion.start_execution()
    orion.finish_task("a", True, {"v": 1})
    task_event = TaskEvent(EventType.TASK_COMPLETED, "orch", time.time(),
                           {"orion_id": "o", "orion": orion, "device_id": "d1", "attempt": 0,
                            "newly_ready_tasks": ["b"]}, "a", "completed", {"v": 1}, None)
    pb, _ = event_to_pb(task_event, 1, "t1")
    assert (pb.orion_id, pb.task_id, pb.device_id) == ("o", "a", "d1")
    assert pb.task.attempt == 1 and list(pb.task.newly_ready_task_ids) == ["b"]
    assert convert.value_from_pb(pb.task.result) == {"v": 1}
    assert pb.task.snapshot.status == task_star_pb2.TASK_STATUS_COMPLETED
    assert "orion" not in convert.struct_to_dict(pb.data)  # live objects never leak into data
    orion.finish_task("b", True, None)
    orion.complete_execution()
    done = OrionEvent(EventType.ORION_COMPLETED, "orch", time.time(),
                      {"orion": orion, "statistics": orion.get_statistics()}, "o", "completed")
    pb, snapshot = event_to_pb(done, 2, "t2")
    assert pb.orion.state == orion_pb2.ORION_STATE_COMPLETED
    assert pb.orion.result.status == orion_pb2.ORION_STATE_COMPLETED
    assert pb.orion.summary.task_count == 2
    assert snapshot is not None and len(snapshot.tasks) == 2
    assert not pb.orion.HasField("snapshot")  # only for watchers that ask
