"""Atomic edit batches on a live orion (the planner's way to change a running DAG).

``apply_edits`` applies every operation or none: each applied step records its inverse and a
failure rolls the batch back before re-raising as ``EditRejectedError`` naming the operation
and the rule it broke. Edge decisions against already-finished prerequisites are deferred to
commit time, so nothing irreversible (a cascade of cancellations) happens mid-batch.

Rules: I1 a star has one device and keeps it while running; I2 the DAG stays acyclic;
I3 only PENDING / WAITING_DEPENDENCY stars, and edges into them, may change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import EditRejectedError, InvalidArgumentError, OrionError, Violation
from .spec import check_task_fields
from .task_orion import TaskOrion
from .task_star import TaskStar
from .task_star_line import TaskStarLine

TASK_FIELDS = ("name", "description", "tips", "target_device_id", "device_type", "priority",
               "timeout", "retry_count", "task_data", "expected_output_type",
               "required_capabilities")
LINE_FIELDS = ("dependency_type", "condition", "condition_description", "metadata")


@dataclass
class AddTask:
    task: TaskStar


@dataclass
class RemoveTask:
    task_id: str


@dataclass
class UpdateTask:
    task_id: str
    fields: dict[str, Any]


@dataclass
class AddDependency:
    dependency: TaskStarLine


@dataclass
class RemoveDependency:
    line_id: str


@dataclass
class UpdateDependency:
    line_id: str
    fields: dict[str, Any]


EditOperation = Union[AddTask, RemoveTask, UpdateTask, AddDependency, RemoveDependency,
                      UpdateDependency]


@dataclass
class EditOutcome:
    applied: int
    cancelled_task_ids: list[str] = field(default_factory=list)


_RULE_BY_REASON = {
    "TASK_RUNNING": "I1" , "TASK_NOT_MODIFIABLE": "I3", "DEPENDENCY_CYCLE": "I2",
    "TASK_NOT_FOUND": "NOT_FOUND", "DEPENDENCY_NOT_FOUND": "NOT_FOUND",
    "TASK_ALREADY_EXISTS": "ALREADY_EXISTS", "DEPENDENCY_ALREADY_EXISTS": "ALREADY_EXISTS",
}


def _rule_for(error: OrionError, op: EditOperation) -> str:
    rule = _RULE_BY_REASON.get(error.reason, "INVALID")
    if rule == "I1" and not (isinstance(op, UpdateTask) and "target_device_id" in op.fields):
        rule = "I3"  # a running star may not change at all; I1 is the device-specific case
    return rule


def _set_fields(obj: Any, fields: dict[str, Any], allowed: tuple[str, ...], kind: str
                ) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"Unknown {kind} field(s) {unknown}; editable fields: {', '.join(allowed)}",
            "UNKNOWN_FIELD", [Violation(name, "not editable", "UNKNOWN_FIELD") for name in unknown])
    old: dict[str, Any] = {}
    try:
        for name, value in fields.items():
            old[name] = getattr(obj, name)
            if name == "task_data":
                obj._task_data = dict(value or {})
                obj._touch()
            elif name == "metadata":  # read-only property on TaskStarLine
                obj._metadata = dict(value or {})
            else:
                setattr(obj, name, value)
    except Exception:
        _set_fields(obj, old, allowed, kind)  # a bad value: put back the fields already set
        raise
    return old


_DECISION = ("_resolution", "_is_satisfied", "_last_evaluation_result", "_last_evaluation_time",
             "_last_evaluation_note")


def _restore_line(orion: TaskOrion, line: TaskStarLine, saved: tuple[Any, ...]) -> None:
    """Put an unlinked edge back exactly as it was decided before the edit."""
    orion._relink(line, saved[0])
    for name, value in zip(_DECISION, saved, strict=True):
        setattr(line, name, value)


def _check_values(fields: dict[str, Any], where: str) -> None:
    """Same value rules as a submitted orion (timeout > 0, retry_count >= 0, known enums …)."""
    problems: list[Violation] = []
    check_task_fields(fields, where, problems)
    if problems:
        raise InvalidArgumentError("; ".join(f"{v.field}: {v.description}" for v in problems),
                                   "INVALID_FIELD", problems)


def _apply_one(orion: TaskOrion, op: EditOperation) -> Callable[[], None]:
    """Apply ``op``; return its inverse."""
    if isinstance(op, AddTask):
        _check_values(op.task.to_dict(), f"tasks[{op.task.task_id}]")
        orion.add_task(op.task)
        return lambda: orion._detach(op.task.task_id)
    if isinstance(op, RemoveTask):
        task = orion.require_task(op.task_id)
        orion.check_modifiable(task, "remove")
        lines = [(line, line._resolution) for line in
                 orion.get_task_dependencies(op.task_id) + orion.get_task_dependents(op.task_id)]
        position = list(orion._tasks).index(op.task_id)
        orion.remove_task(op.task_id)

        def undo_remove() -> None:
            orion._attach(task)
            # _attach appends: move the star back to its place in the insertion order.
            for tid in list(orion._tasks)[position:-1]:
                orion._tasks[tid] = orion._tasks.pop(tid)
            for line, resolution in lines:
                orion._relink(line, resolution)
        return undo_remove
    if isinstance(op, UpdateTask):
        task = orion.require_task(op.task_id)
        orion.check_modifiable(task, "modify")
        _check_values(op.fields, f"tasks[{op.task_id}]")
        old = _set_fields(task, op.fields, TASK_FIELDS, "task")
        return lambda: _set_fields(task, old, TASK_FIELDS, "task") and None
    if isinstance(op, AddDependency):
        orion.add_dependency(op.dependency)
        return lambda: orion._unlink(op.dependency)
    if isinstance(op, RemoveDependency):
        line = orion.require_dependency(op.line_id)
        resolution = line._resolution
        orion.remove_dependency(op.line_id)
        return lambda: orion._relink(line, resolution)
    if isinstance(op, UpdateDependency):
        line = orion.require_dependency(op.line_id)
        orion.check_modifiable(orion.require_task(line.to_task_id), "modify a dependency of")
        saved = tuple(getattr(line, name) for name in _DECISION)
        orion._unlink(line)
        try:
            old = _set_fields(line, op.fields, LINE_FIELDS, "dependency")
        except Exception:
            _restore_line(orion, line, saved)
            raise
        orion._relink(line)  # decided afresh under the new type / condition

        def undo_update() -> None:
            orion._unlink(line)
            _set_fields(line, old, LINE_FIELDS, "dependency")
            _restore_line(orion, line, saved)
        return undo_update
    raise InvalidArgumentError(f"Unknown edit operation {type(op).__name__}", "UNKNOWN_EDIT")


def _update_stamps(orion: TaskOrion, edits: list[EditOperation]) -> list[tuple[Any, Any]]:
    """The stars and lines a batch may touch — those it names and their neighbours — with
    their ``_updated_at``, so a rollback can put the timestamps back too."""
    task_ids: set[str] = set()
    for op in edits:
        if isinstance(op, (RemoveTask, UpdateTask)):
            task_ids.add(op.task_id)
        elif isinstance(op, AddDependency):
            task_ids.update((op.dependency.from_task_id, op.dependency.to_task_id))
        elif isinstance(op, (RemoveDependency, UpdateDependency)):
            line = orion.get_dependency(op.line_id)
            if line is not None:
                task_ids.update((line.from_task_id, line.to_task_id))
    objects: dict[int, Any] = {}
    for task_id in task_ids:
        task = orion.get_task(task_id)
        if task is None:
            continue
        objects[id(task)] = task
        for line in orion.get_task_dependencies(task_id) + orion.get_task_dependents(task_id):
            objects[id(line)] = line
            for end in (line.from_task_id, line.to_task_id):
                neighbour = orion.get_task(end)
                if neighbour is not None:
                    objects[id(neighbour)] = neighbour
    return [(obj, obj._updated_at) for obj in objects.values()]


def apply_edits(orion: TaskOrion, edits: list[EditOperation]) -> EditOutcome:
    """Apply ``edits`` atomically; raise EditRejectedError (nothing changed) on the first bad one."""
    undo: list[Callable[[], None]] = []
    # A rolled-back batch leaves no trace, not even a new updated_at.
    touched = orion._updated_ts
    stamps = _update_stamps(orion, edits)

    def roll_back() -> None:
        for inverse in reversed(undo):
            inverse()
        orion._updated_ts = touched
        for obj, stamp in stamps:
            obj._updated_at = stamp

    orion._deferred = []
    try:
        for index, op in enumerate(edits):
            try:
                undo.append(_apply_one(orion, op))
            except OrionError as exc:
                roll_back()
                raise EditRejectedError(exc, index, _rule_for(exc, op)) from exc
            except (TypeError, ValueError) as exc:  # e.g. a condition that does not parse
                roll_back()
                cause = InvalidArgumentError(str(exc), "INVALID_EDIT")
                raise EditRejectedError(cause, index, "INVALID") from exc
    finally:
        cancelled = orion._commit_deferred()
    if orion._journal is not None and edits:
        orion._journal.orion_saved(orion)  # the structure changed: rewrite the orion whole
    orion._touch()
    return EditOutcome(len(edits), [t.task_id for t in cancelled])
