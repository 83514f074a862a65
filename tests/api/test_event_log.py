"""EventLog: sequence numbers, resume tokens, retention, slow watchers."""

from __future__ import annotations

import time

import grpc
import pytest

from orion_grpc.api import convert
from orion_grpc.api.convert_events import EVENT_TYPE_TO_PB, event_to_pb
from orion_grpc.api.errors import ApiError
from orion_grpc.api.event_log import EventLog
from orion_grpc.core import DeviceEvent, EventType, OrionEvent, TaskEvent, TaskOrion
from orion_grpc.core.spec import orion_from_spec
from orion_grpc.core.task_star import TaskFailure
from orion_grpc.gen.orion.v1 import device_pb2, event_pb2, task_star_pb2


def device_event(device_id: str = "d1", status: str = "idle") -> DeviceEvent:
    return DeviceEvent(EventType.DEVICE_STATUS_CHANGED, "dm", time.time(), {}, device_id, status,
                       {"device_id": device_id, "status": status})


def fill(log: EventLog, n: int) -> None:
    for i in range(n):
        log.append(device_event(status="idle" if i % 2 else "busy"))


def test_sequences_are_gapless_and_tokens_point_at_them():
    log = EventLog(retention=100)
    fill(log, 5)
    sub = log.subscribe(0)
    entries = log.read(sub)
    assert [e.sequence for e in entries] == [1, 2, 3, 4, 5]
    assert all(log.parse_token(e.event.resume_token) == e.sequence for e in entries)
    assert entries[1].event.device.previous_status == entries[0].event.device.status


def test_read_after_a_cursor_survives_eviction():
    log = EventLog(retention=10)
    fill(log, 25)
    assert (log.oldest_sequence, log.latest_sequence) == (16, 25)
    sub = log.subscribe(18)
    assert [e.sequence for e in log.read(sub)] == list(range(19, 26))
    assert [e.sequence for e in log.read(sub, limit=3)] == [19, 20, 21]


def test_a_token_from_another_server_run_is_failed_precondition():
    old = EventLog(epoch="aaaa")
    fill(old, 3)
    log = EventLog(epoch="bbbb")
    fill(log, 3)
    with pytest.raises(ApiError) as info:
        log.parse_token(old.token(2))
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == "RESUME_TOKEN_EPOCH_MISMATCH"
    assert "watch again without a token" in info.value.message


def test_an_expired_token_is_out_of_range_and_says_what_is_left():
    log = EventLog(retention=5)
    fill(log, 20)
    assert log.parse_token(log.token(15)) == 15  # the one just before the oldest is fine
    with pytest.raises(ApiError) as info:
        log.parse_token(log.token(14))
    assert info.value.code is grpc.StatusCode.OUT_OF_RANGE
    assert info.value.reason == "RESUME_TOKEN_EXPIRED"
    assert info.value.metadata["oldest_retained_sequence"] == "16"


@pytest.mark.parametrize("token", ["not a token", "dGhyZWUuZmllbGRzLm5vdGFu", "%%%"])
def test_a_malformed_token_is_invalid_argument(token):
    with pytest.raises(ApiError) as info:
        EventLog().parse_token(token)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.reason == "INVALID_RESUME_TOKEN"


def test_a_token_from_the_future_is_refused():
    log = EventLog()
    fill(log, 2)
    with pytest.raises(ApiError) as info:
        log.parse_token(log.token(3))
    assert info.value.reason == "RESUME_TOKEN_AHEAD"


def test_a_watcher_that_falls_too_far_behind_is_flagged_and_memory_stays_bounded():
    log = EventLog(retention=50, max_lag=10)
    fast, slow = log.subscribe(0), log.subscribe(0)
    for _ in range(30):
        fill(log, 1)
        fast.cursor = log.latest_sequence  # keeps up
    assert not fast.overflow and slow.overflow
    assert len(log._entries) == 30  # one shared ring, no per-watcher copies
    fill(log, 100)
    assert len(log._entries) == 50
    assert log.lost(slow)


def test_bookmark_carries_the_cursor_and_the_oldest_retained_event():
    log = EventLog(retention=3)
    fill(log, 7)
    mark = log.bookmark(6)
    assert mark.type == event_pb2.EVENT_TYPE_BOOKMARK
    assert (mark.sequence, mark.bookmark.oldest_retained_sequence) == (6, 5)
    assert log.parse_token(mark.resume_token) == 6


# ---------------------------------------------------------------------- task events, lazily
def star_orion() -> TaskOrion:
    orion = orion_from_spec({"orion_id": "o", "tasks": [
        {"task_id": "a", "task_data": {"cmd": "build", "n": 3}, "tips": ["fast"],
         "retry_count": 2, "timeout": 5},
        {"task_id": "b"}], "dependencies": [{"from_task_id": "a", "to_task_id": "b"}]})
    orion.start_execution()
    return orion


def task_event(orion: TaskOrion, event_type: EventType, status: str, result: object = None,
               error: object = None, **data: object) -> TaskEvent:
    task = orion.get_task("a")
    return TaskEvent(event_type, "orch", time.time(),
                     {"orion_id": "o", "orion": orion, "device_id": task.target_device_id,
                      "attempt": task.current_retry, **data}, "a", status, result, error)


def expected_event(event: TaskEvent, orion: TaskOrion, sequence: int, token: str
                   ) -> event_pb2.Event:
    """The oracle: the event built field by field from the star as it is now."""
    task = orion.get_task("a")
    pb = event_pb2.Event(sequence=sequence, resume_token=token, source="orch",
                         type=EVENT_TYPE_TO_PB[event.event_type], orion_id="o", task_id="a",
                         device_id=event.data["device_id"] or "")
    pb.timestamp.FromNanoseconds(round(event.timestamp * 1e9))
    pb.data.update({k: v for k, v in event.data.items() if k != "orion"})
    payload = pb.task
    payload.task_id, payload.status = "a", convert.task_status_to_pb(event.status)
    payload.error = str(event.error) if event.error else ""
    payload.error_reason = str(event.data.get("reason") or getattr(task.error, "reason", ""))
    payload.attempt = task.current_retry + 1
    payload.newly_ready_task_ids.extend(event.data.get("newly_ready_tasks", []))
    payload.progress = float(event.data.get("progress", 0.0))
    payload.progress_message = str(event.data.get("message", ""))
    if event.result is not None:
        payload.result.CopyFrom(convert.value_to_pb(event.result))
    convert.task_to_pb(task, "o", payload.snapshot)
    return pb


@pytest.mark.parametrize("step", ["started", "progress", "completed", "retrying", "failed"])
def test_a_task_event_decodes_to_the_event_built_field_by_field(step):
    orion = star_orion()
    task = orion.get_task("a")
    task.target_device_id = "dev-1"
    task.start_execution()
    if step == "started":
        event = task_event(orion, EventType.TASK_STARTED, "running")
    elif step == "progress":
        event = task_event(orion, EventType.TASK_PROGRESS, "running", progress=0.5,
                           message="half way")
    elif step == "completed":
        orion.finish_task("a", True, {"out": [1, "two", None], "ok": True})
        event = task_event(orion, EventType.TASK_COMPLETED, "completed", task.result,
                           newly_ready_tasks=["b"])
    elif step == "retrying":
        task.complete_with_failure(TaskFailure("boom", "task_error"))
        task.retry()
        event = task_event(orion, EventType.TASK_RETRYING, "pending", reason="task_error",
                           retry_in=0.25)
    else:
        orion.finish_task("a", False, error=TaskFailure("boom", "timeout"))
        event = task_event(orion, EventType.TASK_FAILED, "failed", error="boom",
                           reason="timeout")
    log = EventLog(retention=10)
    entry = log.append(event)
    assert event_pb2.Event.FromString(entry.data) == expected_event(event, orion, 1, log.token(1))


def test_a_task_event_encoded_late_still_shows_the_star_as_it_was():
    orion = star_orion()
    task = orion.get_task("a")
    task.target_device_id = "dev-1"
    task.start_execution()
    log = EventLog(retention=10)
    started = task_event(orion, EventType.TASK_STARTED, "running")
    expected = expected_event(started, orion, 1, log.token(1))
    entry = log.append(started)
    assert entry.record is not None  # not encoded yet: nobody has read it
    orion.finish_task("a", True, {"out": 1})  # the star moves on before anyone reads
    assert event_pb2.Event.FromString(entry.data) == expected
    assert entry.record is None and entry.event.task.snapshot.status == \
        task_star_pb2.TASK_STATUS_RUNNING


def test_a_task_event_logged_after_its_star_moved_on_keeps_the_events_status():
    orion = star_orion()
    orion.get_task("a").start_execution()
    orion.finish_task("a", True, {"out": 1})
    late = task_event(orion, EventType.TASK_STARTED, "running")
    snapshot = EventLog(retention=10).append(late).event.task.snapshot
    assert snapshot.status == task_star_pb2.TASK_STATUS_RUNNING
    assert not snapshot.HasField("result") and not snapshot.is_terminal


def test_device_events_are_encoded_on_first_read_with_the_status_they_replaced():
    log = EventLog(retention=10)
    busy, idle = log.append(device_event(status="busy")), log.append(device_event(status="idle"))
    assert busy.record is not None and idle.record is not None  # nobody has read them yet
    assert (idle.event.device.status, idle.event.device.previous_status) == \
        (device_pb2.DEVICE_STATUS_IDLE, device_pb2.DEVICE_STATUS_BUSY)
    assert busy.event.device.status == device_pb2.DEVICE_STATUS_BUSY and busy.record is None


def test_an_ended_orions_result_is_encoded_on_first_read_and_equals_the_eager_encoding():
    orion = star_orion()
    for task_id, result in (("a", {"out": [1, 2]}), ("b", "done")):
        orion.get_task(task_id).start_execution()
        orion.finish_task(task_id, True, result)
    orion.complete_execution()
    done = OrionEvent(EventType.ORION_COMPLETED, "orch", time.time(),
                      {"orion": orion, "statistics": orion.get_statistics()}, "o", "completed")
    log = EventLog(retention=10)
    entry = log.append(done)
    assert entry.record is not None  # the result is not encoded until someone reads it
    expected, _ = event_to_pb(done, 1, log.token(1))
    assert entry.event == expected
    assert convert.value_from_pb(entry.event.orion.result.results["a"]) == {"out": [1, 2]}
