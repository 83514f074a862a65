"""Unit tests for orion_grpc.core.task_star.TaskStar (model, state machine, serialization)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest

from orion_grpc.core import (
    DeviceType,
    FailedPreconditionError,
    FakeDevice,
    OrionDeviceManager,
    TaskFailure,
    TaskPriority,
    TaskStar,
    TaskStatus,
)
from orion_grpc.core.events import EventBus


def running_task(**kwargs: object) -> TaskStar:
    task = TaskStar(task_id="t1", description="do it", **kwargs)  # type: ignore[arg-type]
    task.start_execution()
    return task


# --------------------------------------------------------------------------- defaults
def test_defaults_uuid_id_name_and_medium_priority() -> None:
    task = TaskStar()
    parsed = uuid.UUID(task.task_id)
    assert str(parsed) == task.task_id
    assert task.name == "task_" + task.task_id[:8]
    assert len(task.name) == len("task_") + 8
    assert task.priority is TaskPriority.MEDIUM
    assert task.status is TaskStatus.PENDING
    assert task.description == ""
    assert task.tips is None
    assert task.target_device_id is None
    assert task.device_type is None
    assert task.timeout is None
    assert task.retry_count == 0
    assert task.current_retry == 0
    assert task.task_data == {}
    assert task.required_capabilities == []
    assert task.result is None and task.error is None
    assert task.execution_start_time is None and task.execution_end_time is None
    assert task.execution_duration is None
    assert task.is_terminal is False
    assert task.created_at == task.updated_at
    assert task.created_at.tzinfo is not None


def test_two_default_tasks_get_distinct_ids() -> None:
    assert TaskStar().task_id != TaskStar().task_id


def test_explicit_fields_and_enum_parsing() -> None:
    task = TaskStar(task_id="abc", name="n", description="d", tips=["x"],
                    target_device_id="dev", device_type="Windows", priority=4, timeout=3.5,
                    retry_count=2, task_data={"k": 1}, expected_output_type="json",
                    required_capabilities=["gpu"])
    assert task.task_id == "abc"
    assert task.name == "n"
    assert task.device_type is DeviceType.WINDOWS
    assert task.priority is TaskPriority.CRITICAL
    assert task.timeout == 3.5
    assert task.retry_count == 2
    assert task.task_data == {"k": 1}
    assert task.expected_output_type == "json"
    assert task.required_capabilities == ["gpu"]
    # name given explicitly is not derived from the id
    assert TaskStar(task_id="abcdefghijk").name == "task_abcdefgh"
    # priority by name and by enum, unknown falls back to MEDIUM
    assert TaskStar(priority="high").priority is TaskPriority.HIGH
    assert TaskStar(priority=TaskPriority.LOW).priority is TaskPriority.LOW
    assert TaskStar(priority=99).priority is TaskPriority.MEDIUM


def test_returned_collections_are_copies() -> None:
    task = TaskStar(task_data={"a": 1}, required_capabilities=["x"])
    task.task_data["b"] = 2
    task.required_capabilities.append("y")
    assert task.task_data == {"a": 1}
    assert task.required_capabilities == ["x"]
    caller_tips = ["one"]
    task2 = TaskStar(tips=caller_tips)
    caller_tips.append("two")
    assert task2.tips == ["one"]


def test_task_description_alias() -> None:
    task = TaskStar(description="hello")
    assert task.task_description == "hello"
    task.task_description = "bye"
    assert task.description == "bye"


# --------------------------------------------------------------------------- request string
def test_to_request_string_with_tips_exact() -> None:
    task = TaskStar(description="Open the browser", tips=["Use Chrome", "Maximize window"])
    assert task.to_request_string() == (
        "Task Description: Open the browser\n"
        "Tips for Completion:\n"
        " - Use Chrome\n"
        " - Maximize window"
    )


@pytest.mark.parametrize("tips", [None, []])
def test_to_request_string_without_tips_exact(tips: list[str] | None) -> None:
    task = TaskStar(description="Open the browser", tips=tips)
    assert task.to_request_string() == (
        "Task Description: Open the browser\nTips for Completion:\nNo tips available."
    )


# --------------------------------------------------------------------------- setters
SETTERS = [
    ("name", "new", "name"),
    ("description", "new", "description"),
    ("task_description", "new", "description"),
    ("tips", ["t"], "tips"),
    ("target_device_id", "dev2", "device assignment"),
    ("device_type", "linux", "device type"),
    ("priority", TaskPriority.HIGH, "priority"),
    ("timeout", 5.0, "timeout"),
    ("retry_count", 3, "retry count"),
    ("expected_output_type", "text", "expected output type"),
    ("required_capabilities", ["gpu"], "required capabilities"),
]


@pytest.mark.parametrize(("attr", "value", "what"), SETTERS)
def test_setters_refused_while_running(attr: str, value: object, what: str) -> None:
    task = running_task()
    before = task.to_dict()
    with pytest.raises(FailedPreconditionError) as info:
        setattr(task, attr, value)
    assert str(info.value) == f"Cannot modify {what} of running task t1"
    assert info.value.reason == "TASK_RUNNING"
    assert isinstance(info.value, ValueError)
    assert task.to_dict() == before


def test_update_task_data_refused_while_running() -> None:
    task = running_task(task_data={"a": 1})
    with pytest.raises(FailedPreconditionError, match="^Cannot modify task data of running task t1$"):
        task.update_task_data({"b": 2})
    assert task.task_data == {"a": 1}


@pytest.mark.parametrize(("attr", "value", "what"), SETTERS)
def test_setters_work_when_not_running_and_touch(attr: str, value: object, what: str) -> None:
    task = TaskStar(task_id="t1", description="d")
    task._updated_at = task.created_at - timedelta(seconds=10)
    setattr(task, attr, value)
    got = getattr(task, attr)
    if attr == "device_type":
        assert got is DeviceType.LINUX
    else:
        assert got == value
    assert task.updated_at > task.created_at - timedelta(seconds=10)


def test_setters_allowed_on_terminal_task() -> None:
    # TaskStar itself only guards RUNNING; the orion enforces I3 for finished stars.
    task = running_task()
    task.complete_with_success("ok")
    task.name = "renamed"
    assert task.name == "renamed"


def test_update_task_data_merges() -> None:
    task = TaskStar(task_data={"a": 1, "b": 2})
    task.update_task_data({"b": 3, "c": 4})
    assert task.task_data == {"a": 1, "b": 3, "c": 4}


# --------------------------------------------------------------------------- state machine
def test_start_then_complete_success() -> None:
    task = TaskStar(task_id="t1")
    task.start_execution()
    assert task.status is TaskStatus.RUNNING
    assert task.execution_start_time is not None
    assert task.execution_end_time is None
    task.complete_with_success({"answer": 42})
    assert task.status is TaskStatus.COMPLETED
    assert task.result == {"answer": 42}
    assert task.error is None
    assert task.is_terminal
    assert task.execution_end_time is not None
    assert task.execution_end_time >= task.execution_start_time
    assert task.execution_duration == (
        task.execution_end_time - task.execution_start_time).total_seconds()
    assert task.execution_duration >= 0


def test_complete_with_failure_wraps_string_and_keeps_exception() -> None:
    task = running_task()
    task.complete_with_failure("boom")
    assert task.status is TaskStatus.FAILED
    assert isinstance(task.error, TaskFailure)
    assert str(task.error) == "boom"
    assert task.error.reason == "task_error"
    task2 = running_task()
    exc = RuntimeError("kaput")
    task2.complete_with_failure(exc)
    assert task2.error is exc


def test_start_from_waiting_dependency_allowed() -> None:
    task = TaskStar(task_id="t1")
    task._mark_waiting(True)
    assert task.status is TaskStatus.WAITING_DEPENDENCY
    task.start_execution()
    assert task.status is TaskStatus.RUNNING


def test_mark_waiting_only_toggles_pending_and_waiting() -> None:
    task = TaskStar()
    task._mark_waiting(False)
    assert task.status is TaskStatus.PENDING
    task._mark_waiting(True)
    assert task.status is TaskStatus.WAITING_DEPENDENCY
    task._mark_waiting(False)
    assert task.status is TaskStatus.PENDING
    task.start_execution()
    task._mark_waiting(True)
    assert task.status is TaskStatus.RUNNING


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled"])
def test_start_refused_from_terminal(final: str) -> None:
    task = running_task()
    if final == "completed":
        task.complete_with_success(1)
    elif final == "failed":
        task.complete_with_failure("x")
    else:
        task.cancel()
    with pytest.raises(FailedPreconditionError) as info:
        task.start_execution()
    assert str(info.value) == f"Cannot start task t1 in status {final}"
    assert info.value.reason == "INVALID_TASK_TRANSITION"
    assert task.status.value == final


def test_start_refused_while_running() -> None:
    task = running_task()
    with pytest.raises(FailedPreconditionError, match="^Cannot start task t1 in status running$"):
        task.start_execution()


def test_complete_and_fail_refused_unless_running() -> None:
    task = TaskStar(task_id="t1")
    with pytest.raises(FailedPreconditionError, match="^Cannot complete task t1 in status pending$"):
        task.complete_with_success(1)
    with pytest.raises(FailedPreconditionError, match="^Cannot fail task t1 in status pending$"):
        task.complete_with_failure("x")
    assert task.status is TaskStatus.PENDING
    task.start_execution()
    task.complete_with_success(1)
    with pytest.raises(FailedPreconditionError,
                       match="^Cannot complete task t1 in status completed$"):
        task.complete_with_success(2)
    assert task.result == 1


def test_cancel_pending_and_running_and_noop_when_terminal() -> None:
    pending = TaskStar(task_id="p")
    pending.cancel("no longer needed")
    assert pending.status is TaskStatus.CANCELLED
    assert isinstance(pending.error, TaskFailure)
    assert str(pending.error) == "no longer needed"
    assert pending.error.reason == "cancelled"
    assert pending.execution_end_time is None  # never ran

    running = running_task()
    running.cancel()
    assert running.status is TaskStatus.CANCELLED
    assert running.error is None  # no reason given
    assert running.execution_end_time is not None

    done = running_task()
    done.complete_with_success("r")
    end = done.execution_end_time
    done.cancel("too late")
    assert done.status is TaskStatus.COMPLETED
    assert done.error is None
    assert done.execution_end_time == end


def test_retry_and_should_retry() -> None:
    task = running_task(retry_count=2)
    assert task.should_retry() is False  # running
    task.complete_with_failure("first")
    assert task.should_retry() is True
    task.retry()
    assert task.status is TaskStatus.PENDING
    assert task.current_retry == 1
    assert task.error is None
    assert task.execution_start_time is None and task.execution_end_time is None
    task.start_execution()
    task.complete_with_failure("second")
    assert task.should_retry() is True
    task.retry()
    assert task.current_retry == 2
    task.start_execution()
    task.complete_with_failure("third")
    assert task.should_retry() is False
    with pytest.raises(FailedPreconditionError) as info:
        task.retry()
    assert str(info.value) == "Task t1 cannot be retried"
    assert info.value.reason == "RETRY_NOT_ALLOWED"
    assert task.status is TaskStatus.FAILED
    assert task.current_retry == 2


def test_retry_refused_for_non_failed_states() -> None:
    pending = TaskStar(task_id="t1", retry_count=3)
    assert pending.should_retry() is False
    with pytest.raises(FailedPreconditionError, match="cannot be retried"):
        pending.retry()
    done = running_task(retry_count=3)
    done.complete_with_success(None)
    assert done.should_retry() is False
    with pytest.raises(FailedPreconditionError, match="cannot be retried"):
        done.retry()
    assert done.status is TaskStatus.COMPLETED


def test_retry_count_zero_never_retries() -> None:
    task = running_task()
    task.complete_with_failure("x")
    assert task.should_retry() is False


# --------------------------------------------------------------------------- serialization
def _finished_task() -> TaskStar:
    task = TaskStar(task_id="ser", name="Serial", description="desc", tips=["a", "b"],
                    target_device_id="dev-1", device_type="macos", priority=TaskPriority.HIGH,
                    timeout=12.5, retry_count=2, task_data={"x": [1, 2], "y": {"z": None}},
                    expected_output_type="json", required_capabilities=["gpu", "camera"])
    task.start_execution()
    task.complete_with_failure("first failure")
    task.retry()
    task.start_execution()
    task.complete_with_success({"score": 0.9, "items": ["a"]})
    return task


def test_to_dict_contents() -> None:
    task = _finished_task()
    d = task.to_dict()
    assert set(d) == {
        "task_id", "name", "description", "tips", "task_description", "target_device_id",
        "device_type", "priority", "status", "result", "error", "timeout", "retry_count",
        "current_retry", "task_data", "expected_output_type", "required_capabilities",
        "created_at", "updated_at", "execution_start_time", "execution_end_time",
        "execution_duration"}
    assert d["task_id"] == "ser"
    assert d["description"] == d["task_description"] == "desc"
    assert d["device_type"] == "macos"
    assert d["priority"] == 3
    assert d["status"] == "completed"
    assert d["result"] == {"score": 0.9, "items": ["a"]}
    assert d["error"] is None
    assert d["current_retry"] == 1
    assert d["created_at"] == task.created_at.isoformat()
    assert d["execution_duration"] == task.execution_duration
    json.dumps(d)  # JSON-able


def test_to_dict_from_dict_round_trip_exact() -> None:
    task = _finished_task()
    d = task.to_dict()
    clone = TaskStar.from_dict(d)
    assert clone.to_dict() == d
    assert clone.status is TaskStatus.COMPLETED
    assert clone.priority is TaskPriority.HIGH
    assert clone.device_type is DeviceType.MACOS
    assert clone.current_retry == 1
    assert clone.created_at == task.created_at
    assert clone.execution_start_time == task.execution_start_time
    assert clone.execution_end_time == task.execution_end_time


def test_round_trip_failed_task_keeps_error_text() -> None:
    task = running_task(retry_count=1)
    task.complete_with_failure(RuntimeError("disk full"))
    clone = TaskStar.from_dict(task.to_dict())
    assert clone.status is TaskStatus.FAILED
    assert str(clone.error) == "disk full"
    assert clone.should_retry() is True
    assert clone.to_dict() == task.to_dict()


def test_json_round_trip_and_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    task = _finished_task()
    text = task.to_json()
    assert json.loads(text) == task.to_dict()
    assert TaskStar.from_json(text).to_dict() == task.to_dict()
    path = tmp_path / "task.json"
    written = task.to_json(save_path=str(path))
    assert path.read_text(encoding="utf-8") == written
    assert TaskStar.from_json(file_path=str(path)).to_dict() == task.to_dict()


def test_from_json_argument_errors() -> None:
    with pytest.raises(ValueError, match="^Either json_data or file_path must be provided$"):
        TaskStar.from_json()
    with pytest.raises(ValueError, match="^Only one of json_data or file_path should be provided$"):
        TaskStar.from_json("{}", file_path="x.json")
    with pytest.raises(ValueError, match="^JSON data must represent a dictionary/object$"):
        TaskStar.from_json("[1, 2]")


def test_from_dict_lenient_fields() -> None:
    task = TaskStar.from_dict({"task_id": "t", "task_description": "legacy", "priority": "LOW",
                               "status": "RUNNING", "device_type": "ANDROID"})
    assert task.description == "legacy"
    assert task.priority is TaskPriority.LOW
    assert task.status is TaskStatus.RUNNING
    assert task.device_type is DeviceType.ANDROID
    assert task.name == "task_t"
    minimal = TaskStar.from_dict({})
    assert minimal.status is TaskStatus.PENDING
    uuid.UUID(minimal.task_id)


def test_to_dict_json_safe_for_odd_results() -> None:
    class Obj:
        def __init__(self) -> None:
            self.a = 1
            self._hidden = 2

    task = running_task(task_data={"when": datetime(2024, 1, 1)})
    task.complete_with_success({"obj": Obj(), "set": {3}, "tuple": (1, 2)})
    d = task.to_dict()
    decoded = json.loads(json.dumps(d))
    assert decoded["result"] == {"obj": {"a": 1}, "set": [3], "tuple": [1, 2]}
    assert decoded["task_data"] == {"when": str(datetime(2024, 1, 1))}


def test_repr() -> None:
    assert repr(TaskStar(task_id="x", name="n")) == "TaskStar(id=x, name=n, status=pending)"


# --------------------------------------------------------------------------- validation
def test_valid_task_has_no_errors() -> None:
    task = TaskStar(description="d", timeout=1, retry_count=0)
    assert task.get_validation_errors() == []
    assert task.validate() is True


def test_validation_error_messages_all_reported() -> None:
    task = TaskStar(task_id="t", description="", timeout=0, retry_count=-1)
    task.name = ""
    assert task.get_validation_errors() == [
        "Task name must be a non-empty string",
        "Task description must be a non-empty string",
        "Timeout must be a positive number",
        "Retry count must be a non-negative integer",
    ]
    assert task.validate() is False


@pytest.mark.parametrize("timeout", [0, -1, True, "5"])
def test_bad_timeouts(timeout: object) -> None:
    task = TaskStar(description="d", timeout=timeout)  # type: ignore[arg-type]
    assert task.get_validation_errors() == ["Timeout must be a positive number"]


@pytest.mark.parametrize("retry", [-1, True, 1.5])
def test_bad_retry_counts(retry: object) -> None:
    task = TaskStar(description="d", retry_count=retry)  # type: ignore[arg-type]
    assert task.get_validation_errors() == ["Retry count must be a non-negative integer"]


def test_empty_task_id_reported() -> None:
    task = TaskStar(description="d")
    task._task_id = ""
    assert task.get_validation_errors() == ["Task ID must be a non-empty string"]


# --------------------------------------------------------------------------- execute
async def test_execute_runs_on_target_device() -> None:
    dm = OrionDeviceManager(event_bus=EventBus())
    device = await FakeDevice("a").connect(dm)
    task = TaskStar(task_id="t1", description="hello", tips=["x"], target_device_id="a",
                    task_data={"k": "v"})
    result = await task.execute(dm)
    assert result.status is TaskStatus.COMPLETED
    assert result.result == {"device_id": "a", "task_id": "t1", "status": "ok"}
    assert result.is_successful
    assert [r.task_id for r in device.received] == ["t1"]


async def test_execute_requires_manager_and_device() -> None:
    with pytest.raises(ValueError, match="^Device manager is required for task execution$"):
        await TaskStar(task_id="t1").execute(None)  # type: ignore[arg-type]
    dm = OrionDeviceManager(event_bus=EventBus())
    with pytest.raises(ValueError, match="^No device assigned to task t1$"):
        await TaskStar(task_id="t1").execute(dm)
