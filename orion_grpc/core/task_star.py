"""TaskStar: one unit of work in an orion."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from .enums import TERMINAL_STATUSES, DeviceType, TaskPriority, TaskStatus, parse_enum
from .errors import FailedPreconditionError

if TYPE_CHECKING:
    from .device_manager import ExecutionResult, OrionDeviceManager


def utcnow() -> datetime:
    return datetime.now(UTC)


def now_ts() -> float:
    """Epoch seconds at microsecond precision (what datetimes and ISO strings can carry)."""
    return round(time.time(), 6)


def to_datetime(ts: float | None) -> datetime | None:
    """Timestamps are kept as epoch floats (cheap on the hot path) and shown as datetimes."""
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def to_timestamp(value: str | datetime | float | None) -> float | None:
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# Keys of a TaskStar dict that carry runtime state (from_dict restores them).
_STATE_KEYS = frozenset({"status", "result", "error", "current_retry", "created_at",
                         "updated_at", "execution_start_time", "execution_end_time"})


class TaskFailure(Exception):
    """Why an attempt failed; ``reason`` is machine-readable (timeout, device_disconnection, …)."""

    def __init__(self, message: str, reason: str = "task_error") -> None:
        super().__init__(message)
        self.reason = reason


class _StatusListener(Protocol):
    def _on_task_status(self, task: TaskStar, old: TaskStatus, new: TaskStatus) -> None: ...


def to_iso(ts: float | None) -> str | None:
    return to_datetime(ts).isoformat() if ts is not None else None  # type: ignore[union-attr]


def json_safe(value: Any) -> Any:
    """Return ``value`` unchanged if JSON can encode it, else a faithful JSON-able stand-in."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): json_safe(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [json_safe(v) for v in value]
        if hasattr(value, "__dict__"):
            return {k: json_safe(v) for k, v in vars(value).items() if not k.startswith("_")}
        return str(value)


class JsonSerializable:
    """``to_json`` / ``from_json`` for the model classes, on top of their to_dict/from_dict."""

    __slots__ = ()  # no instance dict of its own: subclasses may use __slots__

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def to_json(self, save_path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        if save_path:
            with open(save_path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_json(cls, json_data: str | None = None, file_path: str | None = None) -> Any:
        return cls.from_dict(_load_json_object(json_data, file_path))


class TaskStar(JsonSerializable):
    """A star: description, target device, retry/timeout policy and execution state.

    Parameter names and defaults follow the reference API; ``required_capabilities`` is Orion's
    addition used by the capability_match strategy.
    """

    # Slots: an orion holds up to 10^5 stars; a slotted star is one smaller allocation whose
    # fields sit next to its header (fewer cache misses on a large orion than a separate
    # values array), and it cannot grow stray attributes.
    __slots__ = ("_task_id", "_name", "_description", "_tips", "_target_device_id",
                 "_device_type", "_priority", "_timeout", "_retry_count", "_current_retry",
                 "_task_data", "_expected_output_type", "_required_capabilities", "_status",
                 "_result", "_error", "_execution_start_time", "_execution_end_time",
                 "_created_at", "_updated_at", "_revision", "_wire_cache", "_listener",
                 "_unresolved", "_ord", "_lines_out", "_lines_in", "_mark", "_best")

    def __init__(
        self,
        task_id: str | None = None,
        name: str = "",
        description: str = "",
        tips: list[str] | None = None,
        target_device_id: str | None = None,
        device_type: DeviceType | str | None = None,
        priority: TaskPriority | int | str = TaskPriority.MEDIUM,
        timeout: float | None = None,
        retry_count: int = 0,
        task_data: dict[str, Any] | None = None,
        expected_output_type: str | None = None,
        required_capabilities: list[str] | None = None,
    ) -> None:
        self._task_id: str = task_id or str(uuid.uuid4())
        self._name: str | None = name or None  # None: the default, derived when read
        self._description = description
        self._tips = list(tips) if tips is not None else None
        self._target_device_id = target_device_id
        self._device_type = parse_enum(DeviceType, device_type)
        self._priority = parse_enum(TaskPriority, priority, TaskPriority.MEDIUM)
        self._timeout = timeout
        self._retry_count = retry_count
        self._current_retry = 0
        self._task_data: dict[str, Any] = dict(task_data) if task_data else {}
        self._expected_output_type = expected_output_type
        # A tuple (() when none, shared): an empty list per star was one more object for
        # the garbage collector to walk, 10^5 times over in a large orion.
        self._required_capabilities: tuple[str, ...] = tuple(required_capabilities or ())

        self._status = TaskStatus.PENDING
        self._result: Any = None
        self._error: BaseException | None = None
        self._execution_start_time: float | None = None
        self._execution_end_time: float | None = None
        self._created_at = now_ts()
        self._updated_at = self._created_at
        # Bumped by every change of the definition (``_touch``); adapters key caches on it.
        self._revision = 0
        # Opaque to the engine: an adapter's cached encoding of this revision of the
        # definition (the gRPC layer keeps the protobuf bytes here; see api/convert.py).
        self._wire_cache: Any = None
        # Set by the owning TaskOrion so it can keep its status counts without scanning.
        self._listener: _StatusListener | None = None
        # Scheduling bookkeeping owned by the orion: unsatisfied in-edges, topological slot.
        self._unresolved = 0
        self._ord = 0
        # Its lines out and in (see task_orion.Lines), also kept by the orion, and scratch
        # space for the orion's graph passes (TaskOrion._levels).
        self._lines_out: Any = ()
        self._lines_in: Any = ()
        self._mark = 0
        self._best: float | None = None

    # ------------------------------------------------------------------ identity and spec
    @property
    def task_id(self) -> str:
        return self._task_id

    def _guard_running(self, what: str) -> None:
        if self._status == TaskStatus.RUNNING:
            raise FailedPreconditionError(
                f"Cannot modify {what} of running task {self._task_id}", "TASK_RUNNING")

    def _touch(self) -> None:
        self._updated_at = now_ts()
        self._revision += 1

    @property
    def revision(self) -> int:
        """Changes whenever the definition (anything but the runtime state) changes."""
        return self._revision

    def epoch_times(self) -> tuple[float, float, float | None, float | None]:
        """created, updated, execution start, execution end as epoch seconds (the datetime
        properties build objects; converters on hot paths want the numbers)."""
        return (self._created_at, self._updated_at, self._execution_start_time,
                self._execution_end_time)

    @property
    def name(self) -> str:
        name = self._name
        return f"task_{self._task_id[:8]}" if name is None else name

    @name.setter
    def name(self, value: str) -> None:
        self._guard_running("name")
        self._name = value
        self._touch()

    @property
    def description(self) -> str:
        return self._description

    @description.setter
    def description(self, value: str) -> None:
        self._guard_running("description")
        self._description = value
        self._touch()

    # The reference's backwards-compatible alias.
    task_description = description

    @property
    def tips(self) -> list[str] | None:
        return self._tips

    @tips.setter
    def tips(self, value: list[str] | None) -> None:
        self._guard_running("tips")
        self._tips = list(value) if value is not None else None
        self._touch()

    @property
    def target_device_id(self) -> str | None:
        return self._target_device_id

    @target_device_id.setter
    def target_device_id(self, value: str | None) -> None:
        self._guard_running("device assignment")
        self._target_device_id = value
        self._touch()

    @property
    def device_type(self) -> DeviceType | None:
        return self._device_type  # type: ignore[return-value]

    @device_type.setter
    def device_type(self, value: DeviceType | str | None) -> None:
        self._guard_running("device type")
        self._device_type = parse_enum(DeviceType, value)
        self._touch()

    @property
    def priority(self) -> TaskPriority:
        return self._priority  # type: ignore[return-value]

    @priority.setter
    def priority(self, value: TaskPriority | int | str) -> None:
        self._guard_running("priority")
        self._priority = parse_enum(TaskPriority, value, TaskPriority.MEDIUM)
        self._touch()

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._guard_running("timeout")
        self._timeout = value
        self._touch()

    @property
    def retry_count(self) -> int:
        return self._retry_count

    @retry_count.setter
    def retry_count(self, value: int) -> None:
        self._guard_running("retry count")
        self._retry_count = value
        self._touch()

    @property
    def current_retry(self) -> int:
        return self._current_retry

    @property
    def task_data(self) -> dict[str, Any]:
        return self._task_data.copy()

    def update_task_data(self, data: dict[str, Any]) -> None:
        self._guard_running("task data")
        self._task_data.update(data)
        self._touch()

    @property
    def expected_output_type(self) -> str | None:
        return self._expected_output_type

    @expected_output_type.setter
    def expected_output_type(self, value: str | None) -> None:
        self._guard_running("expected output type")
        self._expected_output_type = value
        self._touch()

    @property
    def required_capabilities(self) -> list[str]:
        return list(self._required_capabilities)

    @required_capabilities.setter
    def required_capabilities(self, value: list[str]) -> None:
        self._guard_running("required capabilities")
        self._required_capabilities = tuple(value)
        self._touch()

    # ------------------------------------------------------------------ runtime state
    @property
    def status(self) -> TaskStatus:
        return self._status

    @property
    def result(self) -> Any:
        return self._result

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def created_at(self) -> datetime:
        return to_datetime(self._created_at)  # type: ignore[return-value]

    @property
    def updated_at(self) -> datetime:
        return to_datetime(self._updated_at)  # type: ignore[return-value]

    @property
    def execution_start_time(self) -> datetime | None:
        return to_datetime(self._execution_start_time)

    @property
    def execution_end_time(self) -> datetime | None:
        return to_datetime(self._execution_end_time)

    @property
    def execution_duration(self) -> float | None:
        if self._execution_start_time is not None and self._execution_end_time is not None:
            return round(self._execution_end_time - self._execution_start_time, 6)
        return None

    @property
    def is_terminal(self) -> bool:
        return self._status in TERMINAL_STATUSES

    def _set_status(self, new: TaskStatus) -> None:
        old = self._status
        self._status = new
        if self._listener is not None and old is not new:
            self._listener._on_task_status(self, old, new)

    def start_execution(self) -> None:
        """PENDING/WAITING_DEPENDENCY → RUNNING."""
        if self._status not in (TaskStatus.PENDING, TaskStatus.WAITING_DEPENDENCY):
            raise FailedPreconditionError(
                f"Cannot start task {self._task_id} in status {self._status.value}",
                "INVALID_TASK_TRANSITION")
        self._execution_start_time = now_ts()
        self._execution_end_time = None
        self._updated_at = self._execution_start_time
        self._set_status(TaskStatus.RUNNING)

    def complete_with_success(self, result: Any) -> None:
        """RUNNING → COMPLETED."""
        if self._status != TaskStatus.RUNNING:
            raise FailedPreconditionError(
                f"Cannot complete task {self._task_id} in status {self._status.value}",
                "INVALID_TASK_TRANSITION")
        self._result = result
        self._error = None
        self._execution_end_time = self._updated_at = now_ts()
        self._set_status(TaskStatus.COMPLETED)

    def complete_with_failure(self, error: BaseException | str | None) -> None:
        """RUNNING → FAILED."""
        if self._status != TaskStatus.RUNNING:
            raise FailedPreconditionError(
                f"Cannot fail task {self._task_id} in status {self._status.value}",
                "INVALID_TASK_TRANSITION")
        self._error = error if isinstance(error, BaseException) else TaskFailure(str(error))
        self._execution_end_time = self._updated_at = now_ts()
        self._set_status(TaskStatus.FAILED)

    def cancel(self, reason: str | None = None) -> None:
        """Any non-terminal status → CANCELLED (no-op when already terminal)."""
        if self.is_terminal:
            return
        now = now_ts()
        if self._status == TaskStatus.RUNNING:
            self._execution_end_time = now
        if reason:
            self._error = TaskFailure(reason, "cancelled")
        self._updated_at = now
        self._set_status(TaskStatus.CANCELLED)

    def should_retry(self) -> bool:
        return self._status == TaskStatus.FAILED and self._current_retry < self._retry_count

    def retry(self) -> None:
        """FAILED → PENDING, consuming one retry."""
        if not self.should_retry():
            raise FailedPreconditionError(f"Task {self._task_id} cannot be retried",
                                          "RETRY_NOT_ALLOWED")
        self._current_retry += 1
        self._error = None
        self._execution_start_time = None
        self._execution_end_time = None
        self._touch()
        self._set_status(TaskStatus.PENDING)

    def _mark_waiting(self, waiting: bool) -> None:
        """Scheduler bookkeeping: PENDING ⇄ WAITING_DEPENDENCY (blocked vs ready)."""
        if waiting and self._status == TaskStatus.PENDING:
            self._set_status(TaskStatus.WAITING_DEPENDENCY)
        elif not waiting and self._status == TaskStatus.WAITING_DEPENDENCY:
            self._set_status(TaskStatus.PENDING)

    def _restore_state(self, status: TaskStatus, result: Any, error: BaseException | None,
                       current_retry: int) -> None:
        """Load persisted runtime state (from_dict, merges)."""
        self._result = result
        self._error = error
        self._current_retry = current_retry
        self._set_status(status)

    # ------------------------------------------------------------------ execution
    def to_request_string(self) -> str:
        """The text sent to a device: description plus tips."""
        tips = "\n".join(f" - {tip}" for tip in self._tips) if self._tips else "No tips available."
        return f"Task Description: {self._description}\nTips for Completion:\n{tips}"

    async def execute(self, device_manager: OrionDeviceManager) -> ExecutionResult:
        """Run this star once on its target device (outside any orion)."""
        if not device_manager:
            raise ValueError("Device manager is required for task execution")
        if not self._target_device_id:
            raise ValueError(f"No device assigned to task {self._task_id}")
        return await device_manager.assign_task_to_device(
            task_id=self._task_id,
            device_id=self._target_device_id,
            task_description=self.to_request_string(),
            task_data=self.task_data,
            timeout=self._timeout or 1000.0,
        )

    def validate(self) -> bool:
        return not self.get_validation_errors()

    def get_validation_errors(self) -> list[str]:
        errors: list[str] = []
        if not self._task_id or not isinstance(self._task_id, str):
            errors.append("Task ID must be a non-empty string")
        if not self.name or not isinstance(self.name, str):
            errors.append("Task name must be a non-empty string")
        if not self._description or not isinstance(self._description, str):
            errors.append("Task description must be a non-empty string")
        if self._timeout is not None and (
            isinstance(self._timeout, bool) or not isinstance(self._timeout, (int, float))
            or self._timeout <= 0
        ):
            errors.append("Timeout must be a positive number")
        if isinstance(self._retry_count, bool) or not isinstance(self._retry_count, int) \
                or self._retry_count < 0:
            errors.append("Retry count must be a non-negative integer")
        return errors

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self._task_id,
            "name": self.name,
            "description": self._description,
            "tips": self._tips,
            "task_description": self._description,
            "target_device_id": self._target_device_id,
            "device_type": self._device_type.value if self._device_type else None,
            "priority": self._priority.value,  # type: ignore[union-attr]
            "status": self._status.value,
            "result": json_safe(self._result),
            "error": str(self._error) if self._error else None,
            "timeout": self._timeout,
            "retry_count": self._retry_count,
            "current_retry": self._current_retry,
            "task_data": json_safe(self._task_data),
            "expected_output_type": self._expected_output_type,
            "required_capabilities": list(self._required_capabilities),
            "created_at": to_iso(self._created_at),
            "updated_at": to_iso(self._updated_at),
            "execution_start_time": to_iso(self._execution_start_time),
            "execution_end_time": to_iso(self._execution_end_time),
            "execution_duration": self.execution_duration,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskStar:
        task = cls(
            task_id=data.get("task_id"),
            name=data.get("name", ""),
            description=data.get("description", data.get("task_description", "")),
            tips=data.get("tips"),
            target_device_id=data.get("target_device_id"),
            device_type=data.get("device_type"),
            priority=data.get("priority", TaskPriority.MEDIUM.value),
            timeout=data.get("timeout"),
            retry_count=data.get("retry_count", 0),
            task_data=data.get("task_data") or {},
            expected_output_type=data.get("expected_output_type"),
            required_capabilities=data.get("required_capabilities"),
        )
        if _STATE_KEYS.isdisjoint(data):
            return task  # a definition only (a new star): nothing to restore
        status = parse_enum(TaskStatus, data.get("status"), TaskStatus.PENDING)
        error = TaskFailure(data["error"], data.get("error_reason") or "task_error") \
            if data.get("error") else None
        task._restore_state(status, data.get("result"), error,  # type: ignore[arg-type]
                            int(data.get("current_retry", 0)))
        for key in ("created_at", "updated_at", "execution_start_time", "execution_end_time"):
            if data.get(key):
                setattr(task, f"_{key}", to_timestamp(data[key]))
        return task

    def __repr__(self) -> str:
        return f"TaskStar(id={self._task_id}, name={self.name}, status={self._status.value})"


def _load_json_object(json_data: str | None, file_path: str | None) -> dict[str, Any]:
    """Shared by the from_json constructors: exactly one source, must be a JSON object."""
    if json_data is None and file_path is None:
        raise ValueError("Either json_data or file_path must be provided")
    if json_data is not None and file_path is not None:
        raise ValueError("Only one of json_data or file_path should be provided")
    if file_path:
        with open(file_path, encoding="utf-8") as fh:
            data = json.load(fh)
    else:
        data = json.loads(json_data)  # type: ignore[arg-type]
    if not isinstance(data, dict):
        raise ValueError("JSON data must represent a dictionary/object")
    return data
