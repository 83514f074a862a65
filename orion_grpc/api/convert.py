"""Protobuf <-> domain conversion for ``orion.v1`` — the one place the two models meet.

Inbound (``*_from_pb``): a request's messages become the plain description ``core.spec``
validates, so a bad orion reports *every* problem at once (one ``Violation`` per problem, field
paths as in the request, e.g. ``orion.tasks[2].device_type``). Enum values the contract does
not define (a numeric 99 sent by a newer or buggy client) are violations, never silently
mapped; ``*_UNSPECIFIED`` means the default the proto documents, or is a violation where the
field is required.

Outbound (``*_to_pb``): domain objects and the reference API's dicts become full snapshots,
runtime state included.

JSON values travel as ``google.protobuf.Struct`` / ``Value``, whose only number type is a
double: integral numbers come back as ``int`` (within ±2**53), so ``{"count": 3}`` survives
the round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ..core import (
    AddDependency,
    AddTask,
    DependencyType,
    DeviceInfo,
    DeviceStatus,
    DeviceType,
    EditOperation,
    InvalidArgumentError,
    OrionState,
    RemoveDependency,
    RemoveTask,
    TaskOrion,
    TaskPriority,
    TaskStar,
    TaskStarLine,
    TaskStatus,
    UpdateDependency,
    UpdateTask,
    Violation,
)
from ..core.conditions import ConditionError, compile_condition
from ..core.edits import LINE_FIELDS, TASK_FIELDS
from ..core.enums import TERMINAL_STATUSES, parse_enum
from ..core.spec import check_id, check_task_fields, orion_from_spec, validate_spec
from ..gen.orion.v1 import device_pb2, edit_pb2, orion_pb2, task_star_pb2
from ..pbjson import fill_struct as _fill_struct
from ..pbjson import from_struct, from_value
from ..pbjson import plain as plain  # re-exported: the converters' JSON-native form
from ..pbjson import set_value as _set_value

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------------- enum tables
TASK_STATUS_TO_PB = {
    TaskStatus.PENDING: task_star_pb2.TASK_STATUS_PENDING,
    TaskStatus.WAITING_DEPENDENCY: task_star_pb2.TASK_STATUS_WAITING_DEPENDENCY,
    TaskStatus.RUNNING: task_star_pb2.TASK_STATUS_RUNNING,
    TaskStatus.COMPLETED: task_star_pb2.TASK_STATUS_COMPLETED,
    TaskStatus.FAILED: task_star_pb2.TASK_STATUS_FAILED,
    TaskStatus.CANCELLED: task_star_pb2.TASK_STATUS_CANCELLED,
}
PRIORITY_TO_PB = {
    TaskPriority.LOW: task_star_pb2.TASK_PRIORITY_LOW,
    TaskPriority.MEDIUM: task_star_pb2.TASK_PRIORITY_MEDIUM,
    TaskPriority.HIGH: task_star_pb2.TASK_PRIORITY_HIGH,
    TaskPriority.CRITICAL: task_star_pb2.TASK_PRIORITY_CRITICAL,
}
DEVICE_TYPE_TO_PB = {
    DeviceType.WINDOWS: task_star_pb2.DEVICE_TYPE_WINDOWS,
    DeviceType.MACOS: task_star_pb2.DEVICE_TYPE_MACOS,
    DeviceType.LINUX: task_star_pb2.DEVICE_TYPE_LINUX,
    DeviceType.ANDROID: task_star_pb2.DEVICE_TYPE_ANDROID,
    DeviceType.IOS: task_star_pb2.DEVICE_TYPE_IOS,
    DeviceType.WEB: task_star_pb2.DEVICE_TYPE_WEB,
    DeviceType.API: task_star_pb2.DEVICE_TYPE_API,
}
DEPENDENCY_TYPE_TO_PB = {
    DependencyType.UNCONDITIONAL: orion_pb2.DEPENDENCY_TYPE_UNCONDITIONAL,
    DependencyType.SUCCESS_ONLY: orion_pb2.DEPENDENCY_TYPE_SUCCESS_ONLY,
    DependencyType.COMPLETION_ONLY: orion_pb2.DEPENDENCY_TYPE_COMPLETION_ONLY,
    DependencyType.CONDITIONAL: orion_pb2.DEPENDENCY_TYPE_CONDITIONAL,
}
ORION_STATE_TO_PB = {
    OrionState.CREATED: orion_pb2.ORION_STATE_CREATED,
    OrionState.READY: orion_pb2.ORION_STATE_READY,
    OrionState.EXECUTING: orion_pb2.ORION_STATE_EXECUTING,
    OrionState.COMPLETED: orion_pb2.ORION_STATE_COMPLETED,
    OrionState.FAILED: orion_pb2.ORION_STATE_FAILED,
    OrionState.PARTIALLY_FAILED: orion_pb2.ORION_STATE_PARTIALLY_FAILED,
    OrionState.CANCELLED: orion_pb2.ORION_STATE_CANCELLED,
}
DEVICE_STATUS_TO_PB = {
    DeviceStatus.CONNECTING: device_pb2.DEVICE_STATUS_CONNECTING,
    DeviceStatus.CONNECTED: device_pb2.DEVICE_STATUS_CONNECTED,
    DeviceStatus.IDLE: device_pb2.DEVICE_STATUS_IDLE,
    DeviceStatus.BUSY: device_pb2.DEVICE_STATUS_BUSY,
    DeviceStatus.DISCONNECTED: device_pb2.DEVICE_STATUS_DISCONNECTED,
    DeviceStatus.FAILED: device_pb2.DEVICE_STATUS_FAILED,
}
STRATEGY_FROM_PB = {
    orion_pb2.ASSIGNMENT_STRATEGY_ROUND_ROBIN: "round_robin",
    orion_pb2.ASSIGNMENT_STRATEGY_CAPABILITY_MATCH: "capability_match",
    orion_pb2.ASSIGNMENT_STRATEGY_LOAD_BALANCE: "load_balance",
}
STRATEGY_TO_PB = {v: k for k, v in STRATEGY_FROM_PB.items()}


def _invert(table: Mapping[Any, int]) -> dict[int, Any]:
    return {v: k for k, v in table.items()}


TASK_STATUS_FROM_PB = _invert(TASK_STATUS_TO_PB)
PRIORITY_FROM_PB = _invert(PRIORITY_TO_PB)
DEVICE_TYPE_FROM_PB = _invert(DEVICE_TYPE_TO_PB)
DEPENDENCY_TYPE_FROM_PB = _invert(DEPENDENCY_TYPE_TO_PB)
ORION_STATE_FROM_PB = _invert(ORION_STATE_TO_PB)
DEVICE_STATUS_FROM_PB = _invert(DEVICE_STATUS_TO_PB)


def _by_value(enum_cls: type[Enum], value: Any) -> Any:
    """Domain enum member for a member, its value or its name (dict snapshots use values)."""
    return parse_enum(enum_cls, value)


def task_status_to_pb(value: TaskStatus | str | None) -> int:
    member = _by_value(TaskStatus, value)
    return TASK_STATUS_TO_PB.get(member, task_star_pb2.TASK_STATUS_UNSPECIFIED)


def orion_state_to_pb(value: OrionState | str | None) -> int:
    member = _by_value(OrionState, value)
    return ORION_STATE_TO_PB.get(member, orion_pb2.ORION_STATE_UNSPECIFIED)


def device_status_to_pb(value: DeviceStatus | str | None) -> int:
    member = _by_value(DeviceStatus, value)
    return DEVICE_STATUS_TO_PB.get(member, device_pb2.DEVICE_STATUS_UNSPECIFIED)


def device_type_to_pb(value: DeviceType | str | None) -> int:
    member = _by_value(DeviceType, value)
    return DEVICE_TYPE_TO_PB.get(member, task_star_pb2.DEVICE_TYPE_UNSPECIFIED)


class Problems:
    """Collects violations while converting a request, so all are reported together."""

    def __init__(self) -> None:
        self.items: list[Violation] = []

    def add(self, field: str, description: str, reason: str = "INVALID_FIELD") -> None:
        self.items.append(Violation(field, description, reason))

    def extend(self, violations: Iterable[Violation], prefix: str = "") -> None:
        for v in violations:
            self.items.append(Violation(f"{prefix}.{v.field}" if prefix else v.field,
                                        v.description, v.reason))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, message: str = "Invalid request", reason: str = "INVALID_ARGUMENT"
                     ) -> None:
        if self.items:
            raise invalid(message, reason, self.items)


def invalid(message: str, reason: str, violations: list[Violation]) -> InvalidArgumentError:
    shown = "; ".join(f"{v.field}: {v.description}" for v in violations[:10])
    more = " …" if len(violations) > 10 else ""
    return InvalidArgumentError(f"{message}: {len(violations)} problem(s): {shown}{more}",
                                reason, list(violations))


def enum_from_pb(value: int, table: Mapping[int, Any], enum_name: str, field: str,
                 problems: Problems, *, required: bool = False, default: Any = None) -> Any:
    """Map a wire enum number through ``table``; unknown numbers (and UNSPECIFIED where the
    field is required) become a violation and return ``default``."""
    if value == 0 and not required:
        return default
    if value in table:
        return table[value]
    names = ", ".join(sorted(_enum_names(enum_name, table)))
    if value == 0:
        problems.add(field, f"{enum_name} is required; expected one of {names}", "MISSING_FIELD")
    else:
        problems.add(field, f"unknown {enum_name} value {value}; expected one of {names}",
                     "UNKNOWN_ENUM_VALUE")
    return default


_ENUM_TYPES = {
    "TaskStatus": task_star_pb2.TaskStatus, "TaskPriority": task_star_pb2.TaskPriority,
    "DeviceType": task_star_pb2.DeviceType, "DependencyType": orion_pb2.DependencyType,
    "OrionState": orion_pb2.OrionState, "AssignmentStrategy": orion_pb2.AssignmentStrategy,
    "DeviceStatus": device_pb2.DeviceStatus,
}


def _enum_names(enum_name: str, table: Mapping[int, Any]) -> list[str]:
    wrapper = _ENUM_TYPES.get(enum_name)
    if wrapper is None:
        return [str(k) for k in table]
    return [wrapper.Name(k) for k in table]


# ---------------------------------------------------------------------- scalars and JSON
def dict_to_struct(data: Mapping[str, Any] | None, out: struct_pb2.Struct | None = None
                   ) -> struct_pb2.Struct:
    struct = out if out is not None else struct_pb2.Struct()
    if data:
        _fill_struct(struct, data)
    return struct


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return from_struct(struct)


def value_to_pb(value: Any, out: struct_pb2.Value | None = None) -> struct_pb2.Value:
    msg = out if out is not None else struct_pb2.Value()
    _set_value(msg, value)
    return msg


def value_from_pb(value: struct_pb2.Value) -> Any:
    return from_value(value)


def set_timestamp(field: Timestamp, value: datetime | float | None) -> None:
    if value is None:
        return
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        # Exact integer microseconds; Timestamp.FromDatetime is several times slower.
        delta = value - _EPOCH
        field.FromMicroseconds((delta.days * 86_400 + delta.seconds) * 1_000_000
                               + delta.microseconds)
    else:
        field.FromNanoseconds(round(value * 1e9))


def set_epoch(field: Timestamp, seconds: float) -> None:
    """Fill a Timestamp from epoch seconds kept at microsecond precision (the engine's own
    clock readings: always in Timestamp's range, so the well-known-type checks are skipped)."""
    whole, micros = divmod(round(seconds * 1e6), 1_000_000)
    field.seconds = whole
    field.nanos = micros * 1000


def _parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(str(value))


def timestamp_to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def set_duration(field: Duration, seconds: float | None) -> None:
    if seconds is None:
        return
    nanos = round(seconds * 1e9)
    if 0 <= nanos < 315_576_000_000 * 10 ** 9:  # the common case, set directly
        field.seconds, field.nanos = divmod(nanos, 1_000_000_000)
    else:
        field.FromNanoseconds(nanos)


def duration_seconds(d: Duration) -> float:
    return d.ToNanoseconds() / 1e9


# ---------------------------------------------------------------------- resource names
def orion_name(orion_id: str) -> str:
    return f"orions/{orion_id}"


def star_name(orion_id: str, task_id: str) -> str:
    return f"orions/{orion_id}/stars/{task_id}"


def line_name(orion_id: str, line_id: str) -> str:
    return f"orions/{orion_id}/lines/{line_id}"


def device_name(device_id: str) -> str:
    return f"devices/{device_id}"


# ====================================================================== domain -> pb
def error_reason(error: Any) -> str:
    reason = getattr(error, "reason", None)
    return reason if isinstance(reason, str) else ""


def task_definition_bytes(task: TaskStar, orion_id: str | None) -> bytes:
    """The star's definition (what only an edit changes) encoded once per revision: events
    and assignments carry a full snapshot of a star several times in its life."""
    cache = task._wire_cache
    revision = task.revision
    if cache is not None and cache[0] == revision and cache[1] == orion_id:
        return cache[2]  # type: ignore[no-any-return]
    pb = task_star_pb2.TaskStar()
    pb.task_id = task.task_id
    pb.name = task.name or ""
    pb.description = task.description or ""
    pb.tips.extend(task.tips or [])
    pb.target_device_id = task.target_device_id or ""
    pb.device_type = DEVICE_TYPE_TO_PB.get(task.device_type, 0)  # type: ignore[arg-type]
    pb.priority = PRIORITY_TO_PB.get(task.priority, task_star_pb2.TASK_PRIORITY_MEDIUM)
    if task.timeout is not None:
        set_duration(pb.timeout, task.timeout)
    pb.retry_count = task.retry_count
    dict_to_struct(task._task_data, pb.task_data)
    pb.expected_output_type = task.expected_output_type or ""
    pb.required_capabilities.extend(task.required_capabilities)
    if orion_id:
        pb.resource_name = star_name(orion_id, task.task_id)
    data = pb.SerializeToString()
    task._wire_cache = (revision, orion_id, data)
    return data


def task_to_pb(task: TaskStar, orion_id: str | None = None,
               out: task_star_pb2.TaskStar | None = None) -> task_star_pb2.TaskStar:
    pb = out if out is not None else task_star_pb2.TaskStar()
    pb.MergeFromString(task_definition_bytes(task, orion_id))
    status = task.status
    result = task.result
    if result is not None or status is TaskStatus.COMPLETED:
        _set_value(pb.result, result)
    error = task.error
    fill_task_state(pb, TASK_STATUS_TO_PB[status], "" if error is None else str(error),
                    error_reason(error), task.current_retry, task.epoch_times(),
                    task.execution_duration, status in TERMINAL_STATUSES)
    return pb


def fill_task_state(pb: task_star_pb2.TaskStar, status: int, error: str, reason: str,
                    current_retry: int, times: tuple[float, float, float | None, float | None],
                    duration: float | None, is_terminal: bool) -> None:
    """A star's runtime fields but its result (``times``: ``TaskStar.epoch_times()``)."""
    pb.status = status
    if error:
        pb.error = error
    if reason:
        pb.error_reason = reason
    pb.current_retry = current_retry
    created, updated, started, ended = times
    set_epoch(pb.created_at, created)
    set_epoch(pb.updated_at, updated)
    if started is not None:
        set_epoch(pb.execution_start_time, started)
        if ended is not None:
            set_epoch(pb.execution_end_time, ended)
            set_duration(pb.execution_duration, duration)
    elif ended is not None:
        set_epoch(pb.execution_end_time, ended)
    pb.is_terminal = is_terminal


def line_to_pb(line: TaskStarLine, orion_id: str | None = None,
               out: orion_pb2.TaskStarLine | None = None) -> orion_pb2.TaskStarLine:
    pb = out if out is not None else orion_pb2.TaskStarLine()
    pb.line_id = line.line_id
    pb.from_task_id = line.from_task_id
    pb.to_task_id = line.to_task_id
    pb.dependency_type = DEPENDENCY_TYPE_TO_PB[line.dependency_type]
    pb.condition_description = line.condition_description or ""
    if line.condition:
        pb.condition.expression = line.condition
    dict_to_struct(line.metadata, pb.metadata)
    if orion_id:
        pb.resource_name = line_name(orion_id, line.line_id)
    pb.is_satisfied = bool(line.is_satisfied())
    set_timestamp(pb.created_at, line.created_at)
    set_timestamp(pb.updated_at, line.updated_at)
    return pb


def orion_to_pb(orion: TaskOrion, version: int = 0,
                out: orion_pb2.TaskOrion | None = None) -> orion_pb2.TaskOrion:
    """Full snapshot: every star and line with its runtime state."""
    pb = out if out is not None else orion_pb2.TaskOrion()
    oid = orion.orion_id
    pb.orion_id = oid
    pb.name = orion.name or ""
    pb.state = ORION_STATE_TO_PB[orion.state]
    for task in orion.get_all_tasks():
        task_to_pb(task, oid, pb.tasks.add())
    for line in orion.get_all_dependencies():
        line_to_pb(line, oid, pb.dependencies.add())
    dict_to_struct(orion.metadata, pb.metadata)
    pb.resource_name = orion_name(oid)
    pb.version = version
    set_timestamp(pb.created_at, orion.created_at)
    set_timestamp(pb.updated_at, orion.updated_at)
    set_timestamp(pb.execution_start_time, orion.execution_start_time)
    set_timestamp(pb.execution_end_time, orion.execution_end_time)
    return pb


def statistics_to_pb(stats: Mapping[str, Any], out: orion_pb2.OrionStatistics | None = None
                     ) -> orion_pb2.OrionStatistics:
    """The reference API's ``statistics`` dict (TaskOrion.get_statistics)."""
    pb = out if out is not None else orion_pb2.OrionStatistics()
    pb.orion_id = str(stats.get("orion_id") or "")
    pb.name = str(stats.get("name") or "")
    pb.state = orion_state_to_pb(stats.get("state"))
    pb.total_tasks = int(stats.get("total_tasks") or 0)
    pb.total_dependencies = int(stats.get("total_dependencies") or 0)
    for status, count in (stats.get("task_status_counts") or {}).items():
        key = status.value if isinstance(status, Enum) else str(status)
        pb.task_status_counts[key] = int(count)
    pb.longest_path_length = int(stats.get("longest_path_length") or 0)
    pb.longest_path_tasks.extend(stats.get("longest_path_tasks") or [])
    pb.max_width = int(stats.get("max_width") or 0)
    pb.critical_path_length = float(stats.get("critical_path_length") or 0.0)
    pb.total_work = float(stats.get("total_work") or 0.0)
    pb.parallelism_ratio = float(stats.get("parallelism_ratio") or 0.0)
    pb.parallelism_calculation_mode = str(stats.get("parallelism_calculation_mode") or "")
    pb.critical_path_tasks.extend(stats.get("critical_path_tasks") or [])
    if stats.get("execution_duration") is not None:
        set_duration(pb.execution_duration, float(stats["execution_duration"]))
    for key in ("created_at", "updated_at", "execution_start_time", "execution_end_time"):
        set_timestamp(getattr(pb, key), _parse_time(stats.get(key)))
    return pb


def result_to_pb(result: Mapping[str, Any], orion_id: str,
                 out: orion_pb2.OrionResult | None = None) -> orion_pb2.OrionResult:
    """``orchestrate_orion``'s return dict (results, errors, status, total_tasks, statistics)."""
    pb = out if out is not None else orion_pb2.OrionResult()
    pb.orion_id = orion_id
    for task_id, value in (result.get("results") or {}).items():
        if value is not None:
            value_to_pb(value, pb.results[task_id])
    for task_id, error in (result.get("errors") or {}).items():
        pb.errors[task_id] = str(error)
    pb.status = orion_state_to_pb(result.get("status"))
    pb.total_tasks = int(result.get("total_tasks") or 0)
    if result.get("statistics"):
        statistics_to_pb(result["statistics"], pb.statistics)
    return pb


def result_from_orion(orion: TaskOrion, statistics: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """The result dict of an orion that has ended (what ``orchestrate_orion`` returned);
    ``statistics`` if the caller has them (computing them is O(stars))."""
    tasks = orion.get_all_tasks()
    return {"results": {t.task_id: t.result for t in tasks},
            "errors": {t.task_id: str(t.error) for t in tasks if t.error is not None},
            "status": orion.state.value, "total_tasks": orion.task_count,
            "statistics": statistics or orion.get_statistics()}


def status_to_pb(status: Mapping[str, Any], out: orion_pb2.OrionStatus | None = None
                 ) -> orion_pb2.OrionStatus:
    """``get_orion_status``'s dict."""
    pb = out if out is not None else orion_pb2.OrionStatus()
    oid = str(status.get("orion_id") or "")
    pb.orion_id = oid
    pb.name = str(status.get("name") or "")
    pb.state = orion_state_to_pb(status.get("state"))
    if status.get("statistics"):
        statistics_to_pb(status["statistics"], pb.statistics)
    pb.ready_tasks.extend(status.get("ready_tasks") or [])
    pb.running_tasks.extend(status.get("running_tasks") or [])
    pb.completed_tasks.extend(status.get("completed_tasks") or [])
    pb.failed_tasks.extend(status.get("failed_tasks") or [])
    pb.cancelled_tasks.extend(status.get("cancelled_tasks") or [])
    dict_to_struct(status.get("metadata") or {}, pb.metadata)
    if oid:
        pb.resource_name = orion_name(oid)
    return pb


def summary_to_pb(orion: TaskOrion, metadata: Mapping[str, Any] | None = None,
                  out: orion_pb2.OrionSummary | None = None) -> orion_pb2.OrionSummary:
    pb = out if out is not None else orion_pb2.OrionSummary()
    pb.orion_id = orion.orion_id
    pb.name = orion.name or ""
    pb.state = ORION_STATE_TO_PB[orion.state]
    pb.task_count = orion.task_count
    pb.dependency_count = orion.dependency_count
    dict_to_struct({**orion.metadata, **(metadata or {})}, pb.metadata)
    pb.resource_name = orion_name(orion.orion_id)
    set_timestamp(pb.created_at, orion.created_at)
    set_timestamp(pb.updated_at, orion.updated_at)
    return pb


def device_to_pb(info: DeviceInfo, out: device_pb2.Device | None = None) -> device_pb2.Device:
    pb = out if out is not None else device_pb2.Device()
    pb.device_id = info.device_id
    pb.device_type = DEVICE_TYPE_TO_PB.get(info.device_type, 0)  # type: ignore[arg-type]
    system = info.metadata.get("system_info") if isinstance(info.metadata, dict) else None
    platform = info.metadata.get("platform") or (system or {}).get("platform") or info.os or ""
    pb.platform = str(platform)
    pb.capabilities.extend(info.capabilities)
    pb.status = DEVICE_STATUS_TO_PB.get(info.status, 0)
    dict_to_struct(info.metadata, pb.metadata)
    set_timestamp(pb.last_heartbeat, info.last_heartbeat)
    pb.current_task_ids.extend(lease.task_id for lease in list(info.running.values()))
    pb.capacity = info.capacity
    pb.resource_name = device_name(info.device_id)
    connected_at = getattr(info, "connected_at", None)
    if connected_at is not None:
        set_timestamp(pb.connected_at, connected_at)
    pb.draining = bool(info.draining)
    return pb


def device_dict_to_pb(data: Mapping[str, Any], out: device_pb2.Device | None = None
                      ) -> device_pb2.Device:
    """A device as the reference API's dicts describe it (``DeviceInfo.to_dict``)."""
    pb = out if out is not None else device_pb2.Device()
    pb.device_id = str(data.get("device_id") or "")
    pb.device_type = device_type_to_pb(data.get("device_type") or data.get("os"))
    metadata = data.get("metadata") or {}
    system = metadata.get("system_info") or {}
    pb.platform = str(metadata.get("platform") or system.get("platform") or data.get("os") or "")
    pb.capabilities.extend(data.get("capabilities") or [])
    pb.status = device_status_to_pb(data.get("status"))
    dict_to_struct(metadata, pb.metadata)
    set_timestamp(pb.last_heartbeat, _parse_time(data.get("last_heartbeat")))
    pb.current_task_ids.extend(data.get("current_tasks") or [])
    pb.capacity = int(data.get("capacity") or 0)
    if pb.device_id:
        pb.resource_name = device_name(pb.device_id)
    pb.draining = bool(data.get("draining"))
    return pb


def utilization_to_pb(device_id: str, tasks: Iterable[TaskStar], capacity: int,
                      out: device_pb2.DeviceUtilization | None = None
                      ) -> device_pb2.DeviceUtilization:
    pb = out if out is not None else device_pb2.DeviceUtilization()
    pb.device_id = device_id
    pb.capacity = capacity
    for task in tasks:
        pb.assigned_task_count += 1
        status = task.status
        if status is TaskStatus.RUNNING:
            pb.running_task_count += 1
        if not task.is_terminal:
            pb.unfinished_task_count += 1
        if status is TaskStatus.COMPLETED:
            pb.completed_task_count += 1
        elif status is TaskStatus.FAILED:
            pb.failed_task_count += 1
    return pb


# ====================================================================== pb -> domain
def task_spec_from_pb(pb: task_star_pb2.TaskStar, where: str, problems: Problems, *,
                      fill_id: bool = True) -> dict[str, Any]:
    """The definition fields (1-19) of a star as the plain description core.spec reads."""
    spec: dict[str, Any] = {"task_id": pb.task_id or (str(uuid.uuid4()) if fill_id else ""),
                            "description": pb.description}
    if pb.name:
        spec["name"] = pb.name
    if pb.tips:
        spec["tips"] = list(pb.tips)
    if pb.target_device_id:
        spec["target_device_id"] = pb.target_device_id
    device_type = enum_from_pb(pb.device_type, DEVICE_TYPE_FROM_PB, "DeviceType",
                               f"{where}.device_type", problems)
    if device_type is not None:
        spec["device_type"] = device_type.value
    priority = enum_from_pb(pb.priority, PRIORITY_FROM_PB, "TaskPriority", f"{where}.priority",
                            problems)
    if priority is not None:
        spec["priority"] = priority.value
    if pb.HasField("timeout"):
        spec["timeout"] = duration_seconds(pb.timeout)
    spec["retry_count"] = pb.retry_count
    if pb.HasField("task_data"):
        spec["task_data"] = struct_to_dict(pb.task_data)
    if pb.expected_output_type:
        spec["expected_output_type"] = pb.expected_output_type
    if pb.required_capabilities:
        spec["required_capabilities"] = list(pb.required_capabilities)
    return spec


def _task_state_from_pb(pb: task_star_pb2.TaskStar, where: str, problems: Problems
                        ) -> dict[str, Any]:
    """Runtime fields of a star, for copies that carry state (a planner's merge copy)."""
    state: dict[str, Any] = {}
    status = enum_from_pb(pb.status, TASK_STATUS_FROM_PB, "TaskStatus", f"{where}.status",
                          problems, default=TaskStatus.PENDING)
    state["status"] = status.value
    if pb.HasField("result"):
        state["result"] = value_from_pb(pb.result)
    if pb.error:
        state["error"] = pb.error
    state["current_retry"] = pb.current_retry
    for key in ("created_at", "updated_at", "execution_start_time", "execution_end_time"):
        if pb.HasField(key):
            state[key] = timestamp_to_datetime(getattr(pb, key)).isoformat()
    return state


def line_spec_from_pb(pb: orion_pb2.TaskStarLine, where: str, problems: Problems
                      ) -> dict[str, Any]:
    spec: dict[str, Any] = {"from_task_id": pb.from_task_id, "to_task_id": pb.to_task_id}
    if pb.line_id:
        spec["line_id"] = pb.line_id
    dep = enum_from_pb(pb.dependency_type, DEPENDENCY_TYPE_FROM_PB, "DependencyType",
                       f"{where}.dependency_type", problems)
    if dep is not None:
        spec["dependency_type"] = dep.value
    if pb.condition_description:
        spec["condition_description"] = pb.condition_description
    if pb.HasField("condition") and pb.condition.expression:
        spec["condition"] = pb.condition.expression
    if pb.HasField("metadata"):
        spec["metadata"] = struct_to_dict(pb.metadata)
    return spec


def orion_spec_from_pb(pb: orion_pb2.TaskOrion, field: str, problems: Problems, *,
                       with_state: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if pb.orion_id:
        spec["orion_id"] = pb.orion_id
    if pb.name:
        spec["name"] = pb.name
    if pb.HasField("metadata"):
        spec["metadata"] = struct_to_dict(pb.metadata)
    tasks = []
    for i, task in enumerate(pb.tasks):
        where = f"{field}.tasks[{i}]"
        tspec = task_spec_from_pb(task, where, problems)
        if with_state:
            tspec.update(_task_state_from_pb(task, where, problems))
        tasks.append(tspec)
    spec["tasks"] = tasks
    spec["dependencies"] = [line_spec_from_pb(line, f"{field}.dependencies[{i}]", problems)
                            for i, line in enumerate(pb.dependencies)]
    return spec


def orion_from_pb(pb: orion_pb2.TaskOrion, field: str = "orion") -> TaskOrion:
    """A new orion from a request; raises InvalidArgumentError (reason INVALID_ORION) with one
    violation per problem, and builds nothing unless everything is valid."""
    problems = Problems()
    spec = orion_spec_from_pb(pb, field, problems)
    problems.extend(validate_spec(spec), field)
    problems.raise_if_any("Invalid orion", "INVALID_ORION")
    return orion_from_spec(spec, validated=True)


def orion_with_state_from_pb(pb: orion_pb2.TaskOrion, field: str = "orion") -> TaskOrion:
    """An orion snapshot *with* runtime state (a planner's copy, or a client reading a reply)."""
    problems = Problems()
    spec = orion_spec_from_pb(pb, field, problems, with_state=True)
    problems.extend(validate_spec(spec), field)
    problems.raise_if_any("Invalid orion", "INVALID_ORION")
    orion = TaskOrion.from_dict({**spec, "tasks": spec["tasks"],
                                 "dependencies": spec["dependencies"]})
    state = ORION_STATE_FROM_PB.get(pb.state)
    if state is OrionState.CANCELLED:
        orion.mark_cancelled()
    return orion


def task_from_pb(pb: task_star_pb2.TaskStar, field: str = "task") -> TaskStar:
    """One star from a request (ExecuteSingleTask, AddTask)."""
    problems = Problems()
    spec = task_spec_from_pb(pb, field, problems)
    check_task_fields(spec, field, problems.items)
    problems.raise_if_any("Invalid task", "INVALID_TASK")
    return TaskStar.from_dict(spec)


def task_with_state_from_pb(pb: task_star_pb2.TaskStar) -> TaskStar:
    problems = Problems()
    spec = task_spec_from_pb(pb, "task", problems, fill_id=False)
    spec.update(_task_state_from_pb(pb, "task", problems))
    return TaskStar.from_dict(spec)


def strategy_from_pb(value: int, field: str, problems: Problems, *, required: bool = False
                     ) -> str | None:
    return enum_from_pb(value, STRATEGY_FROM_PB, "AssignmentStrategy", field, problems,  # type: ignore[no-any-return]
                        required=required)


# ---------------------------------------------------------------------- edits
_TASK_MASK_FIELDS = frozenset(TASK_FIELDS)
_LINE_MASK_FIELDS = frozenset(LINE_FIELDS)


def _task_field_value(pb: task_star_pb2.TaskStar, name: str, where: str, problems: Problems
                      ) -> Any:
    if name == "name":
        return pb.name
    if name == "description":
        return pb.description
    if name == "tips":
        return list(pb.tips) or None
    if name == "target_device_id":
        return pb.target_device_id or None
    if name == "device_type":
        return enum_from_pb(pb.device_type, DEVICE_TYPE_FROM_PB, "DeviceType",
                            f"{where}.device_type", problems)
    if name == "priority":
        return enum_from_pb(pb.priority, PRIORITY_FROM_PB, "TaskPriority", f"{where}.priority",
                            problems, default=TaskPriority.MEDIUM)
    if name == "timeout":
        if not pb.HasField("timeout"):
            return None
        seconds = duration_seconds(pb.timeout)
        if seconds <= 0:
            problems.add(f"{where}.timeout", "must be a positive duration")
        return seconds
    if name == "retry_count":
        if pb.retry_count < 0:
            problems.add(f"{where}.retry_count", "must be a non-negative integer")
        return pb.retry_count
    if name == "task_data":
        return struct_to_dict(pb.task_data)
    if name == "expected_output_type":
        return pb.expected_output_type or None
    if name == "required_capabilities":
        return list(pb.required_capabilities)
    raise KeyError(name)


def _mask_paths(paths: Iterable[str], allowed: frozenset[str], where: str, problems: Problems
                ) -> list[str]:
    good = []
    for path in paths:
        if path in allowed:
            good.append(path)
        else:
            problems.add(f"{where}.update_mask", f"field {path!r} cannot be updated; updatable "
                         f"fields: {', '.join(sorted(allowed))}", "UNKNOWN_FIELD")
    return good


def _line_field_value(pb: orion_pb2.TaskStarLine, name: str, where: str, problems: Problems
                      ) -> Any:
    if name == "dependency_type":
        return enum_from_pb(pb.dependency_type, DEPENDENCY_TYPE_FROM_PB, "DependencyType",
                            f"{where}.dependency_type", problems,
                            default=DependencyType.UNCONDITIONAL)
    if name == "condition":
        expression = pb.condition.expression if pb.HasField("condition") else ""
        if expression:
            try:
                compile_condition(expression)
            except ConditionError as exc:
                problems.add(f"{where}.condition", str(exc), "INVALID_CONDITION")
        return expression or None
    if name == "condition_description":
        return pb.condition_description
    if name == "metadata":
        return struct_to_dict(pb.metadata)
    raise KeyError(name)


def edit_ops_from_pb(ops: Iterable[edit_pb2.EditOperation], problems: Problems,
                     field: str = "operations") -> list[EditOperation]:
    """Wire edit operations -> core.edits operations; problems collects every bad one."""
    result: list[EditOperation] = []
    for i, op in enumerate(ops):
        where = f"{field}[{i}]"
        kind = op.WhichOneof("operation")
        if kind is None:
            problems.add(where, "no operation set (add_task, remove_task, update_task, "
                         "add_dependency, remove_dependency or update_dependency)",
                         "MISSING_FIELD")
            continue
        where = f"{where}.{kind}"
        before = len(problems.items)
        built: EditOperation | None = None
        if kind == "add_task":
            spec = task_spec_from_pb(op.add_task.task, f"{where}.task", problems)
            check_task_fields(spec, f"{where}.task", problems.items)
            if len(problems.items) == before:
                built = AddTask(TaskStar.from_dict(spec))
        elif kind == "remove_task":
            if not op.remove_task.task_id:
                problems.add(f"{where}.task_id", "must be a non-empty string", "MISSING_FIELD")
            built = RemoveTask(op.remove_task.task_id)
        elif kind == "update_task":
            task = op.update_task.task
            if not task.task_id:
                problems.add(f"{where}.task.task_id", "must name the star to update",
                             "MISSING_FIELD")
            paths = list(op.update_task.update_mask.paths)
            names = (_mask_paths(paths, _TASK_MASK_FIELDS, where, problems) if paths
                     else [n for n in TASK_FIELDS if n != "name" or task.name])
            fields = {n: _task_field_value(task, n, f"{where}.task", problems) for n in names}
            built = UpdateTask(task.task_id, fields)
        elif kind == "add_dependency":
            dep = op.add_dependency.dependency
            spec = line_spec_from_pb(dep, f"{where}.dependency", problems)
            check_id(spec.get("line_id"), f"{where}.dependency.line_id", problems.items)
            for key in ("from_task_id", "to_task_id"):
                if not spec[key]:
                    problems.add(f"{where}.dependency.{key}", "must be a non-empty string",
                                 "MISSING_FIELD")
            if spec.get("condition"):
                try:
                    compile_condition(spec["condition"])
                except ConditionError as exc:
                    problems.add(f"{where}.dependency.condition", str(exc), "INVALID_CONDITION")
            if len(problems.items) == before:
                built = AddDependency(TaskStarLine.from_dict(spec))
        elif kind == "remove_dependency":
            if not op.remove_dependency.line_id:
                problems.add(f"{where}.line_id", "must be a non-empty string", "MISSING_FIELD")
            built = RemoveDependency(op.remove_dependency.line_id)
        elif kind == "update_dependency":
            dep = op.update_dependency.dependency
            if not dep.line_id:
                problems.add(f"{where}.dependency.line_id", "must name the line to update",
                             "MISSING_FIELD")
            paths = list(op.update_dependency.update_mask.paths)
            names = (_mask_paths(paths, _LINE_MASK_FIELDS, where, problems) if paths
                     else list(LINE_FIELDS))
            built = UpdateDependency(dep.line_id, {
                n: _line_field_value(dep, n, f"{where}.dependency", problems) for n in names})
        if built is not None and len(problems.items) == before:
            result.append(built)
    return result


def created_ids(ops: Iterable[EditOperation]) -> tuple[list[str], list[str]]:
    """Ids of the stars and lines an edit batch adds, in order."""
    tasks, lines = [], []
    for op in ops:
        if isinstance(op, AddTask):
            tasks.append(op.task.task_id)
        elif isinstance(op, AddDependency):
            lines.append(op.dependency.line_id)
    return tasks, lines


def edit_ops_to_pb(ops: Iterable[EditOperation]) -> list[edit_pb2.EditOperation]:
    """core.edits operations -> wire operations (what a Python planner sends)."""
    result = []
    for op in ops:
        pb = edit_pb2.EditOperation()
        if isinstance(op, AddTask):
            task_to_pb(op.task, None, pb.add_task.task)
            _clear_runtime(pb.add_task.task)
        elif isinstance(op, RemoveTask):
            pb.remove_task.task_id = op.task_id
        elif isinstance(op, UpdateTask):
            target = pb.update_task.task
            target.task_id = op.task_id
            for name, value in op.fields.items():
                _set_task_field(target, name, value)
            pb.update_task.update_mask.paths.extend(op.fields)
        elif isinstance(op, AddDependency):
            line_to_pb(op.dependency, None, pb.add_dependency.dependency)
            pb.add_dependency.dependency.ClearField("is_satisfied")
        elif isinstance(op, RemoveDependency):
            pb.remove_dependency.line_id = op.line_id
        elif isinstance(op, UpdateDependency):
            target_line = pb.update_dependency.dependency
            target_line.line_id = op.line_id
            for name, value in op.fields.items():
                _set_line_field(target_line, name, value)
            pb.update_dependency.update_mask.paths.extend(op.fields)
        else:
            raise TypeError(f"not an edit operation: {op!r}")
        result.append(pb)
    return result


_RUNTIME_TASK_FIELDS = ("status", "result", "error", "current_retry", "created_at", "updated_at",
                        "execution_start_time", "execution_end_time", "execution_duration",
                        "is_terminal", "error_reason", "resource_name")


def _clear_runtime(pb: task_star_pb2.TaskStar) -> None:
    for name in _RUNTIME_TASK_FIELDS:
        pb.ClearField(name)  # type: ignore[arg-type]


def _set_task_field(pb: task_star_pb2.TaskStar, name: str, value: Any) -> None:
    if name == "device_type":
        pb.device_type = device_type_to_pb(value)
    elif name == "priority":
        member = value if isinstance(value, TaskPriority) else _by_value(TaskPriority, value)
        pb.priority = PRIORITY_TO_PB.get(member, 0)
    elif name == "timeout":
        if value is not None:
            set_duration(pb.timeout, float(value))
    elif name == "task_data":
        dict_to_struct(value or {}, pb.task_data)
    elif name in ("tips", "required_capabilities"):
        getattr(pb, name).extend(value or [])
    elif name in ("target_device_id", "expected_output_type", "name", "description"):
        setattr(pb, name, value or "")
    elif name == "retry_count":
        pb.retry_count = int(value)
    else:
        raise ValueError(f"unknown task field {name!r}")


def _set_line_field(pb: orion_pb2.TaskStarLine, name: str, value: Any) -> None:
    if name == "dependency_type":
        member = value if isinstance(value, DependencyType) else _by_value(DependencyType, value)
        pb.dependency_type = DEPENDENCY_TYPE_TO_PB.get(member, 0)
    elif name == "condition":
        if value:
            pb.condition.expression = value
    elif name == "condition_description":
        pb.condition_description = value or ""
    elif name == "metadata":
        dict_to_struct(value or {}, pb.metadata)
    else:
        raise ValueError(f"unknown dependency field {name!r}")


def device_from_pb(pb: device_pb2.Device) -> dict[str, Any]:
    """A device as the reference API's ``get_available_devices`` rows describe it."""
    member = DEVICE_TYPE_FROM_PB.get(pb.device_type)
    status = DEVICE_STATUS_FROM_PB.get(pb.status)
    return {"device_id": pb.device_id,
            "device_type": member.value if member else (pb.platform or "unknown"),
            "capabilities": list(pb.capabilities),
            "status": status.value if status else "unknown",
            "metadata": struct_to_dict(pb.metadata), "capacity": pb.capacity,
            "running_tasks": len(pb.current_task_ids),
            "current_tasks": list(pb.current_task_ids), "draining": pb.draining,
            "platform": pb.platform}


def statistics_from_pb(pb: orion_pb2.OrionStatistics) -> dict[str, Any]:
    state = ORION_STATE_FROM_PB.get(pb.state)

    def ts(name: str) -> str | None:
        return timestamp_to_datetime(getattr(pb, name)).isoformat() if pb.HasField(name) else None  # type: ignore[arg-type]

    return {"orion_id": pb.orion_id, "name": pb.name, "state": state.value if state else None,
            "total_tasks": pb.total_tasks, "total_dependencies": pb.total_dependencies,
            "task_status_counts": dict(pb.task_status_counts),
            "longest_path_length": pb.longest_path_length,
            "longest_path_tasks": list(pb.longest_path_tasks), "max_width": pb.max_width,
            "critical_path_length": pb.critical_path_length, "total_work": pb.total_work,
            "parallelism_ratio": pb.parallelism_ratio,
            "parallelism_calculation_mode": pb.parallelism_calculation_mode,
            "critical_path_tasks": list(pb.critical_path_tasks),
            "execution_duration": (duration_seconds(pb.execution_duration)
                                   if pb.HasField("execution_duration") else None),
            "created_at": ts("created_at"), "updated_at": ts("updated_at"),
            "execution_start_time": ts("execution_start_time"),
            "execution_end_time": ts("execution_end_time")}


def result_from_pb(pb: orion_pb2.OrionResult) -> dict[str, Any]:
    """``orchestrate_orion``'s dict from the wire result (stars without a result map to None)."""
    state = ORION_STATE_FROM_PB.get(pb.status)
    results: dict[str, Any] = {task_id: None for task_id in pb.errors}
    results.update({task_id: value_from_pb(v) for task_id, v in pb.results.items()})
    return {"orion_id": pb.orion_id, "results": results, "errors": dict(pb.errors),
            "status": state.value if state else None, "total_tasks": pb.total_tasks,
            "statistics": statistics_from_pb(pb.statistics)}


def status_from_pb(pb: orion_pb2.OrionStatus) -> dict[str, Any]:
    state = ORION_STATE_FROM_PB.get(pb.state)
    return {"orion_id": pb.orion_id, "name": pb.name, "state": state.value if state else None,
            "statistics": statistics_from_pb(pb.statistics),
            "ready_tasks": list(pb.ready_tasks), "running_tasks": list(pb.running_tasks),
            "completed_tasks": list(pb.completed_tasks), "failed_tasks": list(pb.failed_tasks),
            "cancelled_tasks": list(pb.cancelled_tasks), "metadata": struct_to_dict(pb.metadata)}


def summary_from_pb(pb: orion_pb2.OrionSummary) -> dict[str, Any]:
    state = ORION_STATE_FROM_PB.get(pb.state)
    return {"orion_id": pb.orion_id, "name": pb.name, "state": state.value if state else None,
            "task_count": pb.task_count, "dependency_count": pb.dependency_count,
            "metadata": struct_to_dict(pb.metadata)}
