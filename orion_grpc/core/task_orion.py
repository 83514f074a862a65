"""TaskOrion: a DAG of stars with incremental dependency resolution.

Costs (the reference rescans the whole DAG on every step; we never do):
- add_task O(1); add_dependency amortised O(1) when edges are added in topological order,
  otherwise bounded by the region that must be reordered (Pearce–Kelly dynamic topological
  order), which also gives the cycle check;
- finishing a star costs O(its out-degree) (+ whatever it transitively cancels);
- state and status counts are kept incrementally, so ``state`` is O(1).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .enums import MODIFIABLE_STATUSES, TERMINAL_STATUSES, OrionState, TaskStatus
from .errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from .task_star import JsonSerializable, TaskStar, json_safe, to_datetime, to_timestamp, utcnow
from .task_star_line import TaskStarLine

if TYPE_CHECKING:
    from .journal import Journal

# Resolution of an edge, stored on the line object (attribute access beats dict lookups).
UNRESOLVED, SATISFIED, UNSATISFIABLE = 0, 1, 2

# A star's lines in one direction (``TaskStar._lines_out`` / ``_lines_in``, kept by its orion):
# the shared () while it has none, a list while it has a few, a dict by line id past _HUB (so
# a hub's lines are removed by key, not by a scan). Most stars have a line or two each way: a
# dict per direction and star was most of a large orion's memory.
Lines = tuple[()] | list[TaskStarLine] | dict[str, TaskStarLine]
_HUB = 16


def _each(lines: Lines) -> Iterable[TaskStarLine]:
    return lines.values() if lines.__class__ is dict else lines  # type: ignore[union-attr]


def _with(lines: Lines, line: TaskStarLine) -> Lines:
    """``lines`` plus ``line`` (appended: iteration follows insertion order)."""
    if lines.__class__ is dict:
        lines[line._line_id] = line  # type: ignore[index]
        return lines
    if not lines:
        return [line]
    lines.append(line)  # type: ignore[union-attr]
    if len(lines) > _HUB:
        return {ln._line_id: ln for ln in lines}
    return lines


def _without(lines: Lines, line: TaskStarLine) -> Lines:
    if lines.__class__ is dict:
        lines.pop(line._line_id, None)  # type: ignore[union-attr]
    elif line in lines:
        lines.remove(line)  # type: ignore[union-attr]
    return lines


def _duration(task: TaskStar) -> float:
    return task.execution_duration or 0.0


def _completed_duration(task: TaskStar) -> float:
    return (task.execution_duration or 0.0) if task._status is TaskStatus.COMPLETED else 0.0


def _best_of(task: TaskStar) -> float:
    return task._best  # type: ignore[return-value]


def default_orion_id() -> str:
    return f"orion_{datetime.now().strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:8]}"


class TaskOrion(JsonSerializable):
    """A DAG of TaskStars joined by TaskStarLines."""

    def __init__(self, orion_id: str | None = None, name: str | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self._orion_id = orion_id or default_orion_id()
        self._name = name or self._orion_id
        self._tasks: dict[str, TaskStar] = {}
        self._dependencies: dict[str, TaskStarLine] = {}
        self._counts: dict[TaskStatus, int] = dict.fromkeys(TaskStatus, 0)
        # Stars that became ready since the scheduler last looked, by id.
        self._ready: dict[str, TaskStar] = {}
        self._next_ord = 0
        self._scheduling = False  # set by start_execution: maintain WAITING_DEPENDENCY
        self._cancel_requested = False
        # During an edit batch: edges to decide at commit (see edits.apply_edits).
        self._deferred: list[TaskStarLine] | None = None
        self._change_listeners: list[Callable[[], None]] = []
        # Set while a store journals this orion (core/journal.py): every status change and
        # lifecycle step is noted there, and persisted at the end of the loop step.
        self._journal: Journal | None = None
        self._metadata: dict[str, Any] = dict(metadata) if metadata else {}
        self._created_at = utcnow()
        self._updated_ts = time.time()  # epoch float: _touch runs on every mutation
        self._execution_start_time: datetime | None = None
        self._execution_end_time: datetime | None = None

    # ------------------------------------------------------------------ properties
    @property
    def orion_id(self) -> str:
        return self._orion_id

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value
        self._touch()

    @property
    def state(self) -> OrionState:
        if self._cancel_requested:
            return OrionState.CANCELLED
        total = len(self._tasks)
        if total == 0:
            return OrionState.CREATED
        c = self._counts
        failed, completed = c[TaskStatus.FAILED], c[TaskStatus.COMPLETED]
        if failed + completed + c[TaskStatus.CANCELLED] == total:
            if failed and completed:
                return OrionState.PARTIALLY_FAILED
            return OrionState.FAILED if failed else OrionState.COMPLETED
        if self._execution_start_time or c[TaskStatus.RUNNING] or failed or completed:
            return OrionState.EXECUTING
        return OrionState.READY

    def update_state(self) -> None:
        """Reference API; the state is always current here, so there is nothing to do."""

    def mark_cancelled(self) -> None:
        self._cancel_requested = True
        self._touch()
        if self._journal is not None:
            self._journal.orion_changed(self)

    @property
    def tasks(self) -> dict[str, TaskStar]:
        return self._tasks.copy()

    @property
    def dependencies(self) -> dict[str, TaskStarLine]:
        return self._dependencies.copy()

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    @property
    def dependency_count(self) -> int:
        return len(self._dependencies)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata.copy()

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        self._metadata.update(metadata)
        self._touch()
        if self._journal is not None:
            self._journal.orion_changed(self)

    @property
    def created_at(self) -> datetime:
        return self._created_at

    @property
    def updated_at(self) -> datetime:
        return to_datetime(self._updated_ts)  # type: ignore[return-value]

    @property
    def execution_start_time(self) -> datetime | None:
        return self._execution_start_time

    @property
    def execution_end_time(self) -> datetime | None:
        return self._execution_end_time

    @property
    def execution_duration(self) -> float | None:
        if self._execution_start_time and self._execution_end_time:
            return (self._execution_end_time - self._execution_start_time).total_seconds()
        return None

    def status_counts(self) -> dict[TaskStatus, int]:
        return dict(self._counts)

    def _touch(self) -> None:
        self._updated_ts = time.time()
        for listener in self._change_listeners:
            listener()

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Called after every mutation (the scheduler uses it to wake up)."""
        self._change_listeners.append(listener)

    def remove_change_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._change_listeners:
            self._change_listeners.remove(listener)

    # ------------------------------------------------------------------ status bookkeeping
    def _on_task_status(self, task: TaskStar, old: TaskStatus, new: TaskStatus) -> None:
        counts = self._counts
        counts[old] -= 1
        counts[new] += 1
        if new is TaskStatus.PENDING and task._unresolved == 0:
            self._ready[task._task_id] = task
        elif new not in MODIFIABLE_STATUSES:
            self._ready.pop(task._task_id, None)
        if self._journal is not None:
            self._journal.star_changed(self, task)

    def pop_ready(self) -> list[TaskStar]:
        """Stars that became ready since the last call (the scheduler re-checks each one)."""
        ready = list(self._ready.values())
        self._ready.clear()
        return ready

    def pop_ready_ids(self) -> list[str]:
        return [task._task_id for task in self.pop_ready()]

    def is_dispatchable(self, task: TaskStar) -> bool:
        """True if ``task`` belongs here, is pending and has every prerequisite satisfied."""
        return (task._listener is self  # attached here, not removed since (no lookup by id)
                and task._status in MODIFIABLE_STATUSES
                and task._unresolved == 0)

    # ------------------------------------------------------------------ tasks
    def add_task(self, task: TaskStar) -> None:
        if task.task_id in self._tasks:
            raise AlreadyExistsError(f"Task with ID {task.task_id} already exists",
                                     "TASK_ALREADY_EXISTS", {"task_id": task.task_id})
        self._attach(task)
        self._touch()

    def _attach(self, task: TaskStar) -> None:
        tid = task._task_id
        self._tasks[tid] = task
        task._lines_out = task._lines_in = ()
        task._unresolved = 0
        task._ord = self._next_ord
        self._next_ord += 1
        self._counts[task._status] += 1
        task._listener = self
        if task._status is TaskStatus.WAITING_DEPENDENCY:
            task._mark_waiting(False)  # no prerequisites yet: it is ready (listener queues it)
        elif task._status is TaskStatus.PENDING:
            self._ready[tid] = task

    def get_task(self, task_id: str) -> TaskStar | None:
        return self._tasks.get(task_id)

    def require_task(self, task_id: str) -> TaskStar:
        task = self._tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"Task {task_id} not found", "TASK_NOT_FOUND", {"task_id": task_id})
        return task

    def check_modifiable(self, task: TaskStar, action: str = "modify") -> None:
        """Invariant I3: only PENDING / WAITING_DEPENDENCY stars may change."""
        if task._status is TaskStatus.RUNNING:
            raise FailedPreconditionError(f"Cannot {action} running task {task.task_id}",
                                          "TASK_RUNNING", metadata={"task_id": task.task_id})
        if task._status not in MODIFIABLE_STATUSES:
            raise FailedPreconditionError(
                f"Cannot {action} task {task.task_id} in status {task._status.value}: only "
                "pending or waiting_dependency tasks can be changed",
                "TASK_NOT_MODIFIABLE", metadata={"task_id": task.task_id})

    def remove_task(self, task_id: str) -> None:
        self.check_modifiable(self.require_task(task_id), "remove")
        self._detach(task_id)
        self._touch()

    # ------------------------------------------------------------------ dependencies
    def add_dependency(self, dependency: TaskStarLine) -> None:
        if dependency.line_id in self._dependencies:
            raise AlreadyExistsError(f"Dependency with ID {dependency.line_id} already exists",
                                     "DEPENDENCY_ALREADY_EXISTS", {"line_id": dependency.line_id})
        src = self._tasks.get(dependency.from_task_id)
        if src is None:
            raise NotFoundError(f"Source task {dependency.from_task_id} not found",
                                "TASK_NOT_FOUND", {"task_id": dependency.from_task_id})
        dst = self._tasks.get(dependency.to_task_id)
        if dst is None:
            raise NotFoundError(f"Target task {dependency.to_task_id} not found",
                                "TASK_NOT_FOUND", {"task_id": dependency.to_task_id})
        self.check_modifiable(dst, "add a dependency to")
        self._order_edge(src, dst)
        self._link(dependency)
        self._touch()

    def _order_edge(self, src: TaskStar, dst: TaskStar) -> None:
        """Keep a topological order (Pearce–Kelly); raise if src -> dst closes a cycle."""
        lo, hi = dst._ord, src._ord
        if src is not dst and hi < lo:
            return
        if src is dst:
            self._raise_cycle(src, dst)
        forward: list[TaskStar] = []
        seen = {dst._task_id}
        stack = [dst]
        while stack:
            node = stack.pop()
            forward.append(node)
            for line in _each(node._lines_out):
                nxt = line._dst
                if nxt is src:
                    self._raise_cycle(src, dst)
                if nxt._task_id not in seen and nxt._ord < hi:
                    seen.add(nxt._task_id)
                    stack.append(nxt)
        backward: list[TaskStar] = []
        seen = {src._task_id}
        stack = [src]
        while stack:
            node = stack.pop()
            backward.append(node)
            for line in _each(node._lines_in):
                prv = line._src
                if prv._task_id not in seen and prv._ord > lo:
                    seen.add(prv._task_id)
                    stack.append(prv)
        backward.sort(key=lambda t: t._ord)
        forward.sort(key=lambda t: t._ord)
        slots = sorted(t._ord for t in backward + forward)
        for task, slot in zip(backward + forward, slots, strict=True):
            task._ord = slot

    @staticmethod
    def _raise_cycle(src: TaskStar, dst: TaskStar) -> None:
        raise FailedPreconditionError(
            f"Adding dependency {src.task_id} -> {dst.task_id} would create a cycle",
            "DEPENDENCY_CYCLE", metadata={"from_task_id": src.task_id, "to_task_id": dst.task_id})

    def _link(self, line: TaskStarLine) -> None:
        """Insert an edge whose endpoints exist and whose order is already valid."""
        lid = line.line_id
        src = self._tasks[line.from_task_id]
        dst = self._tasks[line.to_task_id]
        self._dependencies[lid] = line
        line._src, line._dst = src, dst
        src._lines_out = _with(src._lines_out, line)
        dst._lines_in = _with(dst._lines_in, line)
        line._resolution = UNRESOLVED
        if dst._status in TERMINAL_STATUSES or dst._status is TaskStatus.RUNNING:
            # Only happens when loading a saved orion; the edge is history.
            line._resolution = SATISFIED
            return
        dst._unresolved += 1
        if dst._unresolved == 1:
            self._ready.pop(dst._task_id, None)
            if self._scheduling:
                dst._mark_waiting(True)
        if src._status in TERMINAL_STATUSES:
            if self._deferred is not None:
                self._deferred.append(line)
            else:
                self._resolve_edges(src, [line])

    def _relink(self, line: TaskStarLine, resolution: int = UNRESOLVED) -> None:
        """Re-insert an edge that existed before (rollback of an edit).

        An edge that was already decided (``resolution``) goes back decided: evaluating it
        again would re-run its condition and restamp it, which a rollback must not do.
        """
        self._order_edge(self._tasks[line.from_task_id], self._tasks[line.to_task_id])
        if resolution == UNRESOLVED:
            self._link(line)
            return
        self._dependencies[line.line_id] = line
        src, dst = self._tasks[line.from_task_id], self._tasks[line.to_task_id]
        line._src, line._dst = src, dst
        src._lines_out = _with(src._lines_out, line)
        dst._lines_in = _with(dst._lines_in, line)
        line._resolution = resolution

    def _detach(self, task_id: str) -> None:
        """Remove a star added by an edit that is being rolled back (no I3 check)."""
        task = self._tasks[task_id]
        for line in [*_each(task._lines_in), *_each(task._lines_out)]:
            self._unlink(line)  # needs both endpoints still present
        del self._tasks[task_id]
        self._counts[task._status] -= 1
        self._ready.pop(task_id, None)
        task._listener = None

    def _commit_deferred(self) -> list[TaskStar]:
        """End an edit batch: decide the edges whose prerequisite had already finished."""
        deferred, self._deferred = self._deferred or [], None
        cancelled: list[TaskStar] = []
        for line in deferred:
            if self._dependencies.get(line.line_id) is line:
                cancelled += self._resolve_edges(self._tasks[line.from_task_id], [line])[1]
        return cancelled

    def _unlink(self, line: TaskStarLine) -> None:
        lid = line.line_id
        if self._dependencies.get(lid) is not line:
            return
        del self._dependencies[lid]
        src, dst = line._src, line._dst
        line._src = line._dst = None
        src._lines_out = _without(src._lines_out, line)  # type: ignore[union-attr]
        dst._lines_in = _without(dst._lines_in, line)  # type: ignore[union-attr]
        if line._resolution == UNRESOLVED and dst._status in MODIFIABLE_STATUSES:
            self._satisfy_one(dst)

    def remove_dependency(self, dependency_id: str) -> None:
        line = self._dependencies.get(dependency_id)
        if line is None:
            return  # reference behaviour: unknown ids are ignored
        self.check_modifiable(self._tasks[line.to_task_id], "remove a dependency of")
        self._unlink(line)
        self._touch()

    def get_dependency(self, dependency_id: str) -> TaskStarLine | None:
        return self._dependencies.get(dependency_id)

    def require_dependency(self, dependency_id: str) -> TaskStarLine:
        line = self._dependencies.get(dependency_id)
        if line is None:
            raise NotFoundError(f"Dependency {dependency_id} not found", "DEPENDENCY_NOT_FOUND",
                                {"line_id": dependency_id})
        return line

    def find_dependency(self, from_task_id: str, to_task_id: str) -> TaskStarLine | None:
        task = self._tasks.get(from_task_id)
        for line in _each(task._lines_out) if task is not None else ():
            if line.to_task_id == to_task_id:
                return line
        return None

    def get_task_dependencies(self, task_id: str) -> list[TaskStarLine]:
        """Edges into ``task_id`` (its prerequisites)."""
        task = self._tasks.get(task_id)
        return list(_each(task._lines_in)) if task is not None else []

    def get_task_dependents(self, task_id: str) -> list[TaskStarLine]:
        """Edges out of ``task_id``."""
        task = self._tasks.get(task_id)
        return list(_each(task._lines_out)) if task is not None else []

    def get_all_dependencies(self) -> list[TaskStarLine]:
        return list(self._dependencies.values())

    # ------------------------------------------------------------------ resolution
    def _satisfy_one(self, dst: TaskStar) -> bool:
        dst._unresolved -= 1
        if dst._unresolved == 0:
            dst._mark_waiting(False)
            self._ready[dst._task_id] = dst
            return True
        return False

    def _resolve_edges(self, src: TaskStar, lines: Iterable[TaskStarLine]
                       ) -> tuple[list[TaskStar], list[TaskStar]]:
        """Decide ``lines`` (out of terminal ``src``); cascade cancellations. O(edges touched)."""
        newly_ready: list[TaskStar] = []
        cancelled: list[TaskStar] = []
        work: deque[tuple[TaskStar, Iterable[TaskStarLine]]] = deque([(src, lines)])
        while work:
            prereq, edges = work.popleft()
            status, result, error = prereq._status, prereq._result, prereq._error
            for line in edges:
                if line._resolution != UNRESOLVED:
                    continue
                dst = line._dst
                ok = line.evaluate_for(status, result, error)
                line._resolution = SATISFIED if ok else UNSATISFIABLE
                if dst._status not in MODIFIABLE_STATUSES:
                    continue
                if ok:
                    if self._satisfy_one(dst):
                        newly_ready.append(dst)
                else:
                    dst.cancel(f"Dependency {prereq.task_id} -> {dst.task_id} "
                               f"({line.dependency_type.value}) can never be satisfied: "
                               f"{line.last_evaluation_note}")
                    cancelled.append(dst)
                    work.append((dst, list(_each(dst._lines_out))))
        return newly_ready, cancelled

    def start_task(self, task_id: str) -> None:
        task = self.require_task(task_id)
        if task._unresolved:
            raise FailedPreconditionError(
                f"Cannot start task {task_id} with pending dependencies", "DEPENDENCIES_PENDING",
                metadata={"task_id": task_id})
        task.start_execution()

    def finish_task(self, task_id: str, success: bool, result: Any = None,
                    error: BaseException | str | None = None
                    ) -> tuple[list[TaskStar], list[TaskStar]]:
        """Complete or fail a star; returns (newly ready, newly cancelled) stars."""
        return self._finish_star(self.require_task(task_id), success, result, error)

    def _finish_star(self, task: TaskStar, success: bool, result: Any = None,
                     error: BaseException | str | None = None
                     ) -> tuple[list[TaskStar], list[TaskStar]]:
        """``finish_task`` of a star of this orion at hand (no lookup by id)."""
        task_id = task._task_id
        if task._status in MODIFIABLE_STATUSES:
            self.start_task(task_id)
        if success:
            task.complete_with_success(result)
        else:
            task.complete_with_failure(error)
        self._touch()
        return self._resolve_edges(task, list(_each(task._lines_out)))

    def mark_task_completed(self, task_id: str, success: bool, result: Any = None,
                            error: BaseException | str | None = None) -> list[TaskStar]:
        """Reference API: finish a star and return the stars that became ready."""
        return self.finish_task(task_id, success, result, error)[0]

    def cancel_task(self, task_id: str, reason: str = "cancelled") -> list[TaskStar]:
        """Cancel a non-terminal star and resolve its out-edges; returns every star cancelled."""
        task = self.require_task(task_id)
        if task.is_terminal:
            return []
        task.cancel(reason)
        cancelled = self._resolve_edges(task, list(_each(task._lines_out)))[1]
        self._touch()
        return [task, *cancelled]

    def cancel_all(self, reason: str) -> list[TaskStar]:
        """Cancel every non-terminal star (cancellation by request); returns them."""
        self.mark_cancelled()
        cancelled = [t for t in self._tasks.values() if not t.is_terminal]
        for task in cancelled:
            task.cancel(reason)
        self._ready.clear()
        return cancelled

    # ------------------------------------------------------------------ queries
    def get_ready_tasks(self) -> list[TaskStar]:
        ready = [t for t in self._tasks.values()
                 if t._status in MODIFIABLE_STATUSES and t._unresolved == 0]
        ready.sort(key=lambda t: t.priority.value, reverse=True)
        return ready

    def _with_status(self, status: TaskStatus) -> list[TaskStar]:
        if not self._counts[status]:
            return []
        return [t for t in self._tasks.values() if t._status is status]

    def get_running_tasks(self) -> list[TaskStar]:
        return self._with_status(TaskStatus.RUNNING)

    def get_completed_tasks(self) -> list[TaskStar]:
        return self._with_status(TaskStatus.COMPLETED)

    def get_failed_tasks(self) -> list[TaskStar]:
        return self._with_status(TaskStatus.FAILED)

    def get_pending_tasks(self) -> list[TaskStar]:
        return self._with_status(TaskStatus.PENDING)

    def get_cancelled_tasks(self) -> list[TaskStar]:
        return self._with_status(TaskStatus.CANCELLED)

    def get_all_tasks(self) -> list[TaskStar]:
        return list(self._tasks.values())

    def get_modifiable_tasks(self) -> list[TaskStar]:
        return [t for t in self._tasks.values() if t._status in MODIFIABLE_STATUSES]

    def get_modifiable_dependencies(self) -> list[TaskStarLine]:
        return [d for d in self._dependencies.values()
                if self._tasks[d.to_task_id]._status in MODIFIABLE_STATUSES]

    def is_task_modifiable(self, task_id: str) -> bool:
        task = self._tasks.get(task_id)
        return task is not None and task._status in MODIFIABLE_STATUSES

    def is_dependency_modifiable(self, dependency_id: str) -> bool:
        dep = self._dependencies.get(dependency_id)
        return dep is not None and self.is_task_modifiable(dep.to_task_id)

    def is_complete(self) -> bool:
        c = self._counts
        return c[TaskStatus.COMPLETED] + c[TaskStatus.FAILED] + c[TaskStatus.CANCELLED] \
            == len(self._tasks)

    # ------------------------------------------------------------------ lifecycle
    def start_execution(self) -> None:
        """Mark the run started; from now on blocked stars show WAITING_DEPENDENCY."""
        self._execution_start_time = utcnow()
        self._execution_end_time = None
        self._cancel_requested = False
        self._scheduling = True
        for task in self._tasks.values():
            if task._status is TaskStatus.PENDING and task._unresolved:
                task._mark_waiting(True)
        self._touch()
        if self._journal is not None:
            self._journal.orion_changed(self)

    def complete_execution(self) -> None:
        self._execution_end_time = utcnow()
        self._scheduling = False
        self._touch()
        if self._journal is not None:
            self._journal.orion_changed(self)

    # ------------------------------------------------------------------ validation & analysis
    def validate_dag(self) -> tuple[bool, list[str]]:
        errors: list[str] = []
        tasks = self._tasks
        forward = True
        for dep in self._dependencies.values():
            src, dst = tasks.get(dep._from_task_id), tasks.get(dep._to_task_id)
            if src is None:
                errors.append(f"Dependency references non-existent source task {dep.from_task_id}")
            if dst is None:
                errors.append(f"Dependency references non-existent target task {dep.to_task_id}")
            elif src is not None and src._ord >= dst._ord:
                forward = False
        # Every edge going forward in the maintained order proves there is no cycle; only
        # otherwise is Kahn's algorithm asked.
        if not forward and len(self._kahn()) != len(tasks):
            errors.insert(0, "DAG contains cycles")
        return not errors, errors

    def _edges_forward(self) -> bool:
        """True if every edge goes from a lower to a higher topological slot (``_ord``, kept
        by ``_order_edge`` on every insert): a numbering every edge climbs proves the graph
        acyclic in one pass over the edges, without building Kahn's in-degree table."""
        tasks = self._tasks
        for dep in self._dependencies.values():
            src, dst = tasks.get(dep._from_task_id), tasks.get(dep._to_task_id)
            if src is None or dst is None or src._ord >= dst._ord:
                return False
        return True

    def _levels(self, weight: Callable[[TaskStar], float] | None = None
                ) -> list[list[TaskStar]]:
        """Kahn's algorithm level by level (a star's level is one more than its deepest
        prerequisite's); stars on a cycle are in no level. Concatenated, the levels are the
        FIFO Kahn order. One pass gives the statistics the order, the width, every star's
        level and, with ``weight``, every star's heaviest path (every prerequisite of a star
        is placed before it, so the best sum is carried forward in the same pass).

        It works on the star objects and leaves its results on them (``_mark`` = -1 - the
        star's level; ``_best`` = its heaviest path): on a large orion, tables keyed by star
        id cost a cache miss per lookup, where the star is at hand anyway."""
        level: list[TaskStar] = []
        for task in self._tasks.values():
            task._mark = len(task._lines_in) or -1  # prerequisites to wait for; -1: level 0
            task._best = None
            if task._mark == -1:
                level.append(task)
        levels: list[list[TaskStar]] = []
        placed = -2  # the mark of the level being filled: -1 - its number
        while level:
            levels.append(level)
            nxt = []
            for task in level:
                if weight is not None:
                    # w, or the best prerequisite's sum + w if that is more (as a path walk
                    # in insertion order with a strict > would choose).
                    b = w = weight(task)
                    up = task._best
                    if up is not None and up + w > w:
                        b = up + w
                    task._best = b
                for line in _each(task._lines_out):
                    dst = line._dst
                    if weight is not None and (dst._best is None or b > dst._best):
                        dst._best = b
                    left = dst._mark - 1
                    if left == 0:
                        nxt.append(dst)
                        left = placed
                    dst._mark = left
            level = nxt
            placed -= 1
        return levels

    def _placed_levels(self, weight: Callable[[TaskStar], float] | None = None
                       ) -> list[list[TaskStar]]:
        """``_levels``, raising if some star is on a cycle."""
        levels = self._levels(weight)
        if sum(map(len, levels)) != len(self._tasks):
            raise ValueError("DAG contains cycles")
        return levels

    def _kahn(self) -> list[str]:
        return [task._task_id for level in self._levels() for task in level]

    def has_cycle(self) -> bool:
        return not self._edges_forward() and len(self._kahn()) != len(self._tasks)

    def get_topological_order(self) -> list[str]:
        order = self._kahn()
        if len(order) != len(self._tasks):
            raise ValueError("DAG contains cycles")
        return order

    @staticmethod
    def _heaviest(levels: list[list[TaskStar]], weight: Callable[[TaskStar], float]
                  ) -> tuple[float, list[str]]:
        """The heaviest path after ``_levels(weight)``: it ends at the first star in Kahn
        order with the largest sum, and is walked back choosing each parent as a forward
        walk over the prerequisites in insertion order would (the first giving the best sum,
        by a strict >): no parent table for every star."""
        if not levels:
            return 0.0, []
        end = max((task for level in levels for task in level), key=_best_of)
        path: list[str] = []
        node: TaskStar | None = end
        while node is not None:
            path.append(node._task_id)
            w = b = weight(node)
            parent = None
            for line in _each(node._lines_in):
                cand = line._src._best + w
                if cand > b:
                    b, parent = cand, line._src
            node = parent
        path.reverse()
        return end._best, path  # type: ignore[return-value]

    @staticmethod
    def _longest_by_count(levels: list[list[TaskStar]]) -> tuple[int, list[str]]:
        """The heaviest path with every weight 1, read off ``_levels``: a star's has its
        level + 1 stars, the path ends at the first star of the last level, and its parent is
        the first prerequisite one level up (what ``_heaviest`` would pick)."""
        if not levels:
            return 0, []
        node: TaskStar | None = levels[-1][0]
        path: list[str] = []
        while node is not None:
            path.append(node._task_id)
            up = node._mark + 1  # the mark of a star one level up
            node = next((line._src for line in _each(node._lines_in)
                         if line._src._mark == up), None)
        path.reverse()
        return len(levels), path

    def get_longest_path(self) -> tuple[int, list[str]]:
        return self._longest_by_count(self._placed_levels())

    def get_max_width(self) -> int:
        return max((len(level) for level in self._levels()), default=0)

    def get_critical_path_length_with_time(self) -> tuple[float, list[str]]:
        """The longest path through COMPLETED stars, by their durations (a failed or
        cancelled star's time led nowhere; it counts in ``get_total_work``)."""
        levels = self._placed_levels(_completed_duration)
        return self._heaviest(levels, _completed_duration)

    def get_total_work(self) -> float:
        return sum(t.execution_duration or 0.0 for t in self._tasks.values())

    def _analyse(self) -> list[list[TaskStar]]:
        """One Kahn pass for what the statistics need: the levels (order and width), every
        star's level (the longest path by count) and, once complete, every star's heaviest
        path by duration (the critical path)."""
        return self._placed_levels(_duration if self.is_complete() else None)

    def get_parallelism_metrics(self) -> dict[str, Any]:
        return self._parallelism(self._analyse())

    def _parallelism(self, levels: list[list[TaskStar]]) -> dict[str, Any]:
        if not levels:
            return {"critical_path_length": 0, "total_work": 0, "parallelism_ratio": 0.0,
                    "calculation_mode": "empty", "critical_path_tasks": []}
        if self.is_complete():
            length, path = self._heaviest(levels, _duration)
            work: float = self.get_total_work()
            mode = "actual_time"
        else:
            n, path = self._longest_by_count(levels)
            length, work, mode = float(n), float(len(self._tasks)), "node_count"
        return {"critical_path_length": length, "total_work": work,
                "parallelism_ratio": work / length if length > 0 else 0.0,
                "calculation_mode": mode, "critical_path_tasks": path}

    def get_statistics(self) -> dict[str, Any]:
        levels = self._analyse()
        longest, longest_tasks = self._longest_by_count(levels)
        metrics = self._parallelism(levels)
        return {
            "orion_id": self._orion_id,
            "name": self._name,
            "state": self.state.value,
            "total_tasks": len(self._tasks),
            "total_dependencies": len(self._dependencies),
            "task_status_counts": {s.value: n for s, n in self._counts.items() if n},
            "longest_path_length": longest,
            "longest_path_tasks": longest_tasks,
            "max_width": max((len(level) for level in levels), default=0),
            "critical_path_length": metrics["critical_path_length"],
            "total_work": metrics["total_work"],
            "parallelism_ratio": metrics["parallelism_ratio"],
            "parallelism_calculation_mode": metrics["calculation_mode"],
            "critical_path_tasks": metrics["critical_path_tasks"],
            "execution_duration": self.execution_duration,
            "created_at": self._created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "execution_start_time": (self._execution_start_time.isoformat()
                                     if self._execution_start_time else None),
            "execution_end_time": (self._execution_end_time.isoformat()
                                   if self._execution_end_time else None),
        }

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "orion_id": self._orion_id,
            "name": self._name,
            "state": self.state.value,
            "tasks": {tid: t.to_dict() for tid, t in self._tasks.items()},
            "dependencies": {lid: d.to_dict() for lid, d in self._dependencies.items()},
            "metadata": json_safe(self._metadata),
            "created_at": self._created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "execution_start_time": (self._execution_start_time.isoformat()
                                     if self._execution_start_time else None),
            "execution_end_time": (self._execution_end_time.isoformat()
                                   if self._execution_end_time else None),
            "execution_duration": self.execution_duration,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskOrion:
        """Load a saved orion, runtime state included. Raises on a structurally bad DAG."""
        orion = cls(orion_id=data.get("orion_id"), name=data.get("name"),
                    metadata=data.get("metadata") or {})
        tasks = data.get("tasks") or {}
        for tdata in (tasks.values() if isinstance(tasks, dict) else tasks):
            orion.add_task(TaskStar.from_dict(tdata))
        deps = data.get("dependencies") or {}
        for ddata in (deps.values() if isinstance(deps, dict) else deps):
            line = TaskStarLine.from_dict(ddata)
            if line.from_task_id not in orion._tasks:
                raise NotFoundError(f"Source task {line.from_task_id} not found", "TASK_NOT_FOUND")
            if line.to_task_id not in orion._tasks:
                raise NotFoundError(f"Target task {line.to_task_id} not found", "TASK_NOT_FOUND")
            orion._order_edge(orion._tasks[line.from_task_id], orion._tasks[line.to_task_id])
            orion._link(line)
            if ddata.get("last_evaluation_time"):  # re-deciding a saved edge is not news
                line._last_evaluation_time = to_timestamp(ddata["last_evaluation_time"])
        if data.get("state") == OrionState.CANCELLED.value:
            orion._cancel_requested = True
        for key in ("created_at", "execution_start_time", "execution_end_time"):
            if data.get(key):
                setattr(orion, f"_{key}", datetime.fromisoformat(data[key]))
        if data.get("updated_at"):
            orion._updated_ts = to_timestamp(data["updated_at"])  # type: ignore[assignment]
        if orion._execution_start_time and not orion._execution_end_time:
            # A saved run in progress: blocked stars keep showing WAITING_DEPENDENCY.
            orion._scheduling = True
            for task in orion._tasks.values():
                if task._status is TaskStatus.PENDING and task._unresolved:
                    task._mark_waiting(True)
        return orion

    def __repr__(self) -> str:
        return f"TaskOrion(id={self._orion_id}, tasks={len(self._tasks)}, state={self.state.value})"
