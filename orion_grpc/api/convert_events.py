"""Domain events (core.events) -> ``orion.v1.Event``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core import (
    AgentEvent,
    DeviceEvent,
    Event,
    EventType,
    OrionEvent,
    OrionState,
    TaskEvent,
    TaskStatus,
)
from ..core import TaskOrion as _TaskOrion
from ..core.enums import TERMINAL_STATUSES
from ..gen.orion.v1 import event_pb2, orion_pb2, task_star_pb2
from . import wire
from .convert import (
    ORION_STATE_TO_PB,
    _by_value,
    device_dict_to_pb,
    device_status_to_pb,
    dict_to_struct,
    error_reason,
    fill_task_state,
    orion_state_to_pb,
    orion_to_pb,
    plain,
    result_from_orion,
    result_to_pb,
    summary_to_pb,
    task_definition_bytes,
    task_status_to_pb,
    value_to_pb,
)

# By name, so event types added to the engine map as soon as the contract has them.
EVENT_TYPE_TO_PB: dict[EventType, int] = {}
for _member in EventType:
    _name = f"EVENT_TYPE_{_member.name}"
    if _name in event_pb2.EventType.keys():
        EVENT_TYPE_TO_PB[_member] = event_pb2.EventType.Value(_name)
for _name in ("AGENT_RESPONSE", "AGENT_ACTION"):
    if _name in EventType.__members__:
        EVENT_TYPE_TO_PB[EventType[_name]] = event_pb2.EVENT_TYPE_AGENT_OUTPUT

TERMINAL_ORION_EVENTS = frozenset(
    EVENT_TYPE_TO_PB[t] for t in (EventType.ORION_COMPLETED, EventType.ORION_FAILED,
                                  EventType.ORION_CANCELLED))

# Field numbers of what a task event appends to its encoding (see TaskEventRecord.encode).
_EVENT_TASK = event_pb2.Event.DESCRIPTOR.fields_by_name["task"].number
_PAYLOAD_RESULT = event_pb2.TaskEventPayload.DESCRIPTOR.fields_by_name["result"].number
_PAYLOAD_SNAPSHOT = event_pb2.TaskEventPayload.DESCRIPTOR.fields_by_name["snapshot"].number
_STAR_RESULT = task_star_pb2.TaskStar.DESCRIPTOR.fields_by_name["result"].number
# ... and an ended orion's event (OrionResultRecord.encode; the log frames snapshots with it).
EVENT_ORION = event_pb2.Event.DESCRIPTOR.fields_by_name["orion"].number
_ORION_RESULT = event_pb2.OrionEventPayload.DESCRIPTOR.fields_by_name["result"].number

# Keys of Event.data that hold live engine objects, not data.
_OBJECT_KEYS = frozenset({"orion", "new_orion"})


def _data_struct(data: Mapping[str, Any], out: Any) -> None:
    dict_to_struct({k: v for k, v in data.items() if k not in _OBJECT_KEYS}, out)


def event_to_pb(event: Event, sequence: int, resume_token: str,
                previous_device_status: str | None = None, *, orion_snapshot: bool = True
                ) -> tuple[event_pb2.Event, orion_pb2.TaskOrion | None]:
    """The wire event (without an orion snapshot) and, for ORION_* events when
    ``orion_snapshot``, the snapshot (O(stars): the caller decides whether anyone wants it).

    Snapshots are taken when the event is logged; the payload's status, result and error are
    those the event carries (the star may have moved on by the time it is logged).
    """
    if isinstance(event, TaskEvent):
        return event_pb2.Event.FromString(
            TaskEventRecord(event).encode(sequence, resume_token)), None
    pb, snapshot, result = event_parts(event, sequence, resume_token, previous_device_status,
                                       orion_snapshot=orion_snapshot)
    if result is not None:
        result_to_pb(result, pb.orion_id, pb.orion.result)
    return pb, snapshot


def event_parts(event: Event, sequence: int, resume_token: str,
                previous_device_status: str | None = None, *, orion_snapshot: bool = True
                ) -> tuple[event_pb2.Event, orion_pb2.TaskOrion | None, dict[str, Any] | None]:
    """``event_to_pb`` (for any but task events) with an ended orion's result left out: the
    result dict to encode into ``orion.result`` (O(stars): see ``OrionResultRecord``)."""
    pb = event_pb2.Event(sequence=sequence, resume_token=resume_token,
                         type=EVENT_TYPE_TO_PB.get(event.event_type, 0),
                         source=event.source_id or "")
    stamp = pb.timestamp  # (set directly: Timestamp.FromNanoseconds checks are Python)
    stamp.seconds, stamp.nanos = divmod(round(float(event.timestamp) * 1e9), 1_000_000_000)
    data = event.data or {}
    _data_struct(data, pb.data)
    snapshot: orion_pb2.TaskOrion | None = None
    result: dict[str, Any] | None = None
    if isinstance(event, OrionEvent):
        snapshot, result = _orion_event(event, data, pb, orion_snapshot)
    elif isinstance(event, DeviceEvent):
        pb.device_id = event.device_id
        payload = pb.device
        payload.device_id = event.device_id
        payload.status = device_status_to_pb(event.device_status)
        if previous_device_status is not None:
            payload.previous_status = device_status_to_pb(previous_device_status)
        if event.device_info:
            device_dict_to_pb(event.device_info, payload.snapshot)
        payload.reason = str(data.get("reason") or "")
    elif isinstance(event, AgentEvent):
        payload = pb.agent_output
        payload.agent = event.agent_name or ""
        output = event.output_data or {}
        text = output.get("text") if isinstance(output, dict) else None
        payload.text = str(text if text is not None else (event.output_type or ""))
        if isinstance(output, dict):
            dict_to_struct(output, payload.data)
        pb.orion_id = str(data.get("orion_id") or "")
        pb.device_id = str(data.get("device_id") or "")
    return pb, snapshot, result


class TaskEventRecord:
    """A task event as of the moment it was logged, ready to encode later (or never).

    A task event carries a snapshot of its star, which moves on right after; encoding it is
    most of an event's cost, and an event nobody reads (no watcher, no store) need never be
    encoded. So the log captures the few runtime values of the star that change (the
    definition's bytes are cached per revision) and encodes when the event is first read.
    """

    __slots__ = ("type", "source", "timestamp", "data", "orion_id", "task_id", "device_id",
                 "status", "error", "reason", "result", "star")

    def __init__(self, event: TaskEvent) -> None:
        data = event.data or {}
        self.type = EVENT_TYPE_TO_PB.get(event.event_type, 0)
        self.source = event.source_id or ""
        self.timestamp = event.timestamp
        self.data = data
        self.orion_id = orion_id = str(data.get("orion_id") or "")
        self.task_id = event.task_id
        self.device_id = str(data.get("device_id") or "")
        self.status = status = task_status_to_pb(event.status)
        self.error = str(event.error) if event.error else ""
        self.result = event.result
        orion = data.get("orion")
        task = orion.get_task(event.task_id) if isinstance(orion, _TaskOrion) else None
        reason = data.get("reason")
        if not reason and task is not None and task.error is not None:
            reason = getattr(task.error, "reason", None)
        self.reason = str(reason or "")
        self.star: tuple[Any, ...] | None = None
        if task is None:
            return
        # The star as of the event: its status is the event's; if the star has already moved
        # on, so are its result, error and terminality.
        if event.status and _by_value(type(task.status), event.status) is not task.status:
            result, has_result, error = event.result, event.result is not None, self.error
            terminal = event.status in ("completed", "failed", "cancelled")
        else:
            result = task.result
            has_result = result is not None or task.status is TaskStatus.COMPLETED
            error = "" if task.error is None else str(task.error)
            terminal = task.status in TERMINAL_STATUSES
        self.star = (task_definition_bytes(task, orion_id or None), status, has_result, result,
                     error, error_reason(task.error), task.current_retry, task.epoch_times(),
                     task.execution_duration, terminal)

    def encode(self, sequence: int, resume_token: str) -> bytes:
        """The encoded ``orion.v1.Event``."""
        pb = event_pb2.Event(sequence=sequence, resume_token=resume_token, type=self.type,
                             source=self.source, orion_id=self.orion_id, task_id=self.task_id,
                             device_id=self.device_id)
        stamp = pb.timestamp
        stamp.seconds, stamp.nanos = divmod(round(float(self.timestamp) * 1e9), 1_000_000_000)
        data = self.data
        _data_struct(data, pb.data)
        payload = event_pb2.TaskEventPayload(task_id=self.task_id, status=self.status,
                                             error=self.error, error_reason=self.reason)
        payload.newly_ready_task_ids.extend(data.get("newly_ready_tasks") or [])
        attempt = data.get("attempt")
        payload.attempt = int(attempt) + 1 if isinstance(attempt, int) else 0
        progress = data.get("progress")
        if isinstance(progress, (int, float)):
            payload.progress = float(progress)
        payload.progress_message = str(data.get("progress_message") or data.get("message")
                                       or "")
        # The payload's result and the snapshot's are usually the same value: encoded once.
        # Fields appended out of order (and snapshot bytes concatenated from the cached
        # definition and the runtime part) decode to the same message.
        values: dict[int, bytes] = {}
        tail = b""
        if self.result is not None:
            tail = wire.field(_PAYLOAD_RESULT, _value_bytes(self.result, values))
        star = self.star
        if star is not None:
            (definition, status, has_result, result, error, reason, retry, times, duration,
             terminal) = star
            state = task_star_pb2.TaskStar()
            fill_task_state(state, status, error, reason, retry, times, duration, terminal)
            snapshot = definition + state.SerializeToString()
            if has_result:
                snapshot += wire.field(_STAR_RESULT, _value_bytes(result, values))
            tail += wire.field(_PAYLOAD_SNAPSHOT, snapshot)
        return pb.SerializeToString() + wire.field(_EVENT_TASK,
                                                   payload.SerializeToString() + tail)


class DeviceEventRecord:
    """A device event, encoded when first read (like ``TaskEventRecord``): at capacity 1 a
    device changes status twice per star. The event's ``device_info`` is already a copy taken
    when it was published; ``previous_status`` is the one the log knew then."""

    __slots__ = ("event", "previous_status", "type", "device_id")
    orion_id = task_id = ""

    def __init__(self, event: DeviceEvent, previous_status: str | None) -> None:
        self.event = event
        self.previous_status = previous_status
        self.type = EVENT_TYPE_TO_PB.get(event.event_type, 0)
        self.device_id = event.device_id

    def encode(self, sequence: int, resume_token: str) -> bytes:
        pb, _ = event_to_pb(self.event, sequence, resume_token, self.previous_status)
        return pb.SerializeToString()


def _value_bytes(value: Any, cache: dict[int, bytes]) -> bytes:
    """``value`` as an encoded ``google.protobuf.Value`` (once per distinct object)."""
    encoded = cache.get(id(value))
    if encoded is None:
        encoded = cache[id(value)] = value_to_pb(value).SerializeToString()
    return encoded


class OrionResultRecord:
    """An ended orion's event whose result is encoded when first read: the result of every
    star is O(stars) to encode, and the caller that waited for it gets it in its reply anyway.
    The rest of the event (summary, state) is encoded at once, from the live orion; the
    result dict is captured when the event is logged (an ended orion's stars do not change)."""

    __slots__ = ("head", "result", "type", "orion_id")
    task_id = device_id = ""

    def __init__(self, pb: event_pb2.Event, result: dict[str, Any]) -> None:
        self.head = pb.SerializeToString()
        self.result = result
        self.type = pb.type
        self.orion_id = pb.orion_id

    def encode(self, sequence: int, resume_token: str) -> bytes:
        """The whole event (``sequence`` and token are already in the head)."""
        result = result_to_pb(self.result, self.orion_id).SerializeToString()
        return self.head + wire.field(EVENT_ORION, wire.field(_ORION_RESULT, result))


def _orion_event(event: OrionEvent, data: Mapping[str, Any], pb: event_pb2.Event,
                 want_snapshot: bool
                 ) -> tuple[orion_pb2.TaskOrion | None, dict[str, Any] | None]:
    """Fill ``pb`` but the result; returns the snapshot (if wanted) and the result dict of an
    ended orion (to encode into ``pb.orion.result``)."""
    pb.orion_id = event.orion_id
    payload = pb.orion
    payload.orion_id = event.orion_id
    payload.state = orion_state_to_pb(event.orion_state)
    on_task_ids = data.get("on_task_ids", data.get("on_task_id"))
    if isinstance(on_task_ids, str):
        on_task_ids = [on_task_ids]
    payload.on_task_ids.extend(str(t) for t in (on_task_ids or []))
    orion = data.get("orion")
    if not isinstance(orion, _TaskOrion):
        return None, None
    summary_to_pb(orion, None, payload.summary)
    payload.summary.state = payload.state or ORION_STATE_TO_PB.get(orion.state, 0)
    result = None
    if pb.type in TERMINAL_ORION_EVENTS:
        result = result_from_orion(orion, data.get("statistics"))
        state = _by_value(OrionState, event.orion_state)
        if state is not None:
            result["status"] = state.value
    return (orion_to_pb(orion) if want_snapshot else None), result


__all__ = ["EVENT_TYPE_TO_PB", "DeviceEventRecord", "OrionResultRecord", "TaskEventRecord",
           "event_parts", "event_to_pb", "plain"]
