"""TaskStarLine: a dependency edge between two stars."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .conditions import CompiledCondition, ConditionError, compile_condition
from .enums import DependencyType, TaskStatus, parse_enum
from .task_star import JsonSerializable, json_safe, now_ts, to_datetime, to_iso, to_timestamp

if TYPE_CHECKING:
    from .task_star import TaskStar

ConditionEvaluator = Callable[[Any], bool]


class TaskStarLine(JsonSerializable):
    """Edge ``from_task_id`` (prerequisite) → ``to_task_id`` (dependent).

    Semantics (docs/concepts.md):
    - UNCONDITIONAL, COMPLETION_ONLY: satisfied once the prerequisite is terminal, any outcome.
    - SUCCESS_ONLY: satisfied only if the prerequisite COMPLETED.
    - CONDITIONAL: satisfied if the condition holds. In-process the condition may be a Python
      callable (``condition_evaluator``, called with the result, or the error on failure); on
      the wire it is ``condition``, a safe expression over ``result``, ``status``, ``success``,
      ``error`` and ``task_id``. Without either it means "prerequisite succeeded".
    An edge that can never be satisfied cancels its dependent (and, transitively, whatever
    needed that dependent), so no run can hang on it.
    """

    # Slots, as TaskStar: an orion may hold several hundred thousand lines.
    __slots__ = ("_line_id", "_from_task_id", "_to_task_id", "_dependency_type",
                 "_condition_description", "_condition_evaluator", "_condition", "_metadata",
                 "_created_at", "_updated_at", "_is_satisfied", "_last_evaluation_result",
                 "_last_evaluation_time", "_last_evaluation_note", "_resolution", "_src",
                 "_dst")

    def __init__(
        self,
        from_task_id: str,
        to_task_id: str,
        dependency_type: DependencyType | str = DependencyType.UNCONDITIONAL,
        condition_description: str | None = None,
        condition_evaluator: ConditionEvaluator | None = None,
        line_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        condition: str | None = None,
    ) -> None:
        self._line_id = line_id or str(uuid.uuid4())
        self._from_task_id = from_task_id
        self._to_task_id = to_task_id
        self._dependency_type: DependencyType = parse_enum(  # type: ignore[assignment]
            DependencyType, dependency_type, DependencyType.UNCONDITIONAL)
        self._condition_description = condition_description or ""
        self._condition_evaluator = condition_evaluator
        self._condition: CompiledCondition | None = compile_condition(condition) if condition else None
        # None until there is some (most lines have none: no empty dict each). Timestamps are
        # epoch floats, shown as datetimes (as TaskStar's: cheaper to take and to keep).
        self._metadata: dict[str, Any] | None = dict(metadata) if metadata else None
        self._created_at = now_ts()
        self._updated_at = self._created_at
        self._is_satisfied = False
        self._last_evaluation_result: bool | None = None
        self._last_evaluation_time: float | None = None
        self._last_evaluation_note: str = ""
        self._resolution = 0  # owned by the orion: unresolved / satisfied / unsatisfiable
        # Owned by the orion too: its two stars while it links them (no lookup by id to get
        # from a line to a star on the scheduler's and the statistics' paths).
        self._src: TaskStar | None = None
        self._dst: TaskStar | None = None

    # ------------------------------------------------------------------ properties
    @property
    def line_id(self) -> str:
        return self._line_id

    @property
    def from_task_id(self) -> str:
        return self._from_task_id

    @property
    def to_task_id(self) -> str:
        return self._to_task_id

    source_task_id = from_task_id
    target_task_id = to_task_id

    @property
    def dependency_type(self) -> DependencyType:
        return self._dependency_type

    @dependency_type.setter
    def dependency_type(self, value: DependencyType | str) -> None:
        self._dependency_type = parse_enum(  # type: ignore[assignment]
            DependencyType, value, DependencyType.UNCONDITIONAL)
        self.reset_satisfaction()

    @property
    def condition_description(self) -> str:
        return self._condition_description

    @condition_description.setter
    def condition_description(self, value: str) -> None:
        self._condition_description = value
        self._updated_at = now_ts()

    @property
    def condition(self) -> str | None:
        """The wire-safe condition expression, if any."""
        return self._condition.source if self._condition else None

    @condition.setter
    def condition(self, value: str | None) -> None:
        self._condition = compile_condition(value) if value else None
        self.reset_satisfaction()

    @property
    def condition_evaluator(self) -> ConditionEvaluator | None:
        return self._condition_evaluator

    def set_condition_evaluator(self, evaluator: ConditionEvaluator | None) -> None:
        self._condition_evaluator = evaluator
        self.reset_satisfaction()

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata) if self._metadata else {}

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        self._metadata = {**(self._metadata or {}), **metadata}
        self._updated_at = now_ts()

    @property
    def created_at(self) -> datetime:
        return to_datetime(self._created_at)  # type: ignore[return-value]

    @property
    def updated_at(self) -> datetime:
        return to_datetime(self._updated_at)  # type: ignore[return-value]

    @property
    def last_evaluation_result(self) -> bool | None:
        return self._last_evaluation_result

    @property
    def last_evaluation_time(self) -> datetime | None:
        return to_datetime(self._last_evaluation_time)

    @property
    def last_evaluation_note(self) -> str:
        """Why the last evaluation said no (e.g. a condition that raised)."""
        return self._last_evaluation_note

    def is_satisfied(self, completed_tasks: list[str] | None = None) -> bool:
        if completed_tasks is not None:
            return self._from_task_id in completed_tasks
        return self._is_satisfied

    def mark_satisfied(self) -> None:
        self._is_satisfied = True
        self._last_evaluation_result = True
        self._last_evaluation_time = self._updated_at = now_ts()

    def reset_satisfaction(self) -> None:
        self._is_satisfied = False
        self._last_evaluation_result = None
        self._last_evaluation_time = None
        self._last_evaluation_note = ""
        self._updated_at = now_ts()

    # ------------------------------------------------------------------ evaluation
    def evaluate_for(self, status: TaskStatus, result: Any, error: BaseException | None) -> bool:
        """Decide this edge once its prerequisite is terminal with ``status``."""
        dep = self._dependency_type
        note = ""
        if dep is DependencyType.UNCONDITIONAL or dep is DependencyType.COMPLETION_ONLY:
            ok = True
        elif dep is DependencyType.SUCCESS_ONLY:
            ok = status is TaskStatus.COMPLETED
            if not ok:
                note = f"prerequisite {self._from_task_id} {status.value}"
        elif status is TaskStatus.CANCELLED:
            ok, note = False, f"prerequisite {self._from_task_id} was cancelled"
        elif self._condition_evaluator is not None:
            try:
                ok = bool(self._condition_evaluator(result if status is TaskStatus.COMPLETED else error))
            except Exception as exc:  # a planner's callable must not crash the scheduler
                ok, note = False, f"condition evaluator raised {type(exc).__name__}: {exc}"
        elif self._condition is not None:
            try:
                ok = self._condition.evaluate({
                    "result": result,
                    "status": status.value,
                    "success": status is TaskStatus.COMPLETED,
                    "error": str(error) if error else None,
                    "task_id": self._from_task_id,
                })
            except ConditionError as exc:
                ok, note = False, f"condition {self._condition.source!r} failed: {exc}"
        else:
            ok = status is TaskStatus.COMPLETED
        if not ok and not note:
            note = f"condition on {self._from_task_id} not met"
        self._is_satisfied = ok
        self._last_evaluation_result = ok
        self._last_evaluation_time = now_ts()
        self._last_evaluation_note = note
        return ok

    def evaluate_condition(self, prerequisite_result: Any) -> bool:
        """Reference API: evaluate against a successful prerequisite's result."""
        return self.evaluate_for(TaskStatus.COMPLETED, prerequisite_result, None)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "line_id": self._line_id,
            "from_task_id": self._from_task_id,
            "to_task_id": self._to_task_id,
            "dependency_type": self._dependency_type.value,
            "condition_description": self._condition_description,
            "condition": self.condition,
            "metadata": json_safe(self._metadata) if self._metadata else {},
            "is_satisfied": self._is_satisfied,
            "last_evaluation_result": self._last_evaluation_result,
            "last_evaluation_time": to_iso(self._last_evaluation_time),
            "created_at": to_iso(self._created_at),
            "updated_at": to_iso(self._updated_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskStarLine:
        line = cls(
            from_task_id=data["from_task_id"],
            to_task_id=data["to_task_id"],
            dependency_type=data.get("dependency_type", DependencyType.UNCONDITIONAL.value),
            condition_description=data.get("condition_description"),
            line_id=data.get("line_id"),
            metadata=data.get("metadata") or {},
            condition=data.get("condition"),
        )
        line._is_satisfied = bool(data.get("is_satisfied", False))
        line._last_evaluation_result = data.get("last_evaluation_result")
        for key in ("created_at", "updated_at", "last_evaluation_time"):
            if data.get(key):
                setattr(line, f"_{key}", to_timestamp(data[key]))
        return line

    @classmethod
    def create_unconditional(cls, from_task_id: str, to_task_id: str,
                             description: str = "Unconditional dependency") -> TaskStarLine:
        return cls(from_task_id, to_task_id, DependencyType.UNCONDITIONAL, description)

    @classmethod
    def create_success_only(cls, from_task_id: str, to_task_id: str,
                            description: str = "Success-only dependency") -> TaskStarLine:
        return cls(from_task_id, to_task_id, DependencyType.SUCCESS_ONLY, description)

    @classmethod
    def create_conditional(cls, from_task_id: str, to_task_id: str, condition_description: str,
                           condition_evaluator: ConditionEvaluator | None = None,
                           condition: str | None = None) -> TaskStarLine:
        return cls(from_task_id, to_task_id, DependencyType.CONDITIONAL, condition_description,
                   condition_evaluator, condition=condition)

    def __repr__(self) -> str:
        return f"TaskStarLine({self._from_task_id} -> {self._to_task_id}, {self._dependency_type.value})"
