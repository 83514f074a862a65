"""OrionModificationSynchronizer: lets a planning agent edit an orion while it runs.

Each star that finishes in a synchronized orion becomes a *pending modification*; the
scheduler waits (bounded by the modification timeout) until the planner acknowledges every
pending star — by an ORION_MODIFIED event whose ``on_task_ids`` lists them, or through
``edit_orion`` — before it dispatches more work. Edits arriving during the wait join the
same batch. On timeout the scheduler proceeds and the stars count as timed out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .edits import (
    AddDependency,
    AddTask,
    EditOperation,
    EditOutcome,
    RemoveDependency,
    RemoveTask,
    UpdateDependency,
    UpdateTask,
    apply_edits,
)
from .enums import MODIFIABLE_STATUSES, TERMINAL_STATUSES, OrionState, TaskStatus
from .errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, Violation
from .events import Event, EventType, IEventObserver, OrionEvent, TaskEvent
from .task_orion import TaskOrion
from .task_star import TaskFailure, TaskStar
from .task_star_line import TaskStarLine

if TYPE_CHECKING:
    from .orchestrator import TaskOrionOrchestrator

_STATE_LEVEL = {TaskStatus.PENDING: 0, TaskStatus.WAITING_DEPENDENCY: 1, TaskStatus.RUNNING: 2,
                TaskStatus.COMPLETED: 3, TaskStatus.FAILED: 3, TaskStatus.CANCELLED: 3}


def normalize_task_ids(value: Any) -> list[str]:
    """``on_task_ids`` may be one id or a collection of ids (the reference stalled on a str)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


class OrionModificationSynchronizer(IEventObserver):
    """Coordinates the scheduler with a planner that edits the running orion."""

    def __init__(self, orchestrator: TaskOrionOrchestrator,
                 logger: logging.Logger | None = None) -> None:
        self.orchestrator = orchestrator
        self.logger = logger or logging.getLogger(__name__)
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self._acknowledged: set[str] = set()
        self._current_orion_id: str | None = None
        self._current_orion: TaskOrion | None = None  # the planner's copy, if it sent one
        self._modification_timeout = 600.0
        self._stats = {"total_modifications": 0, "completed_modifications": 0,
                       "timeout_modifications": 0}
        # Everyone waiting for the pending set to change (the scheduler, API callers).
        self._waiters: set[asyncio.Event] = set()
        self._excluded: set[str] = set()  # orions run with synchronize=False

    # ------------------------------------------------------------------ configuration
    @property
    def modification_timeout(self) -> float:
        return self._modification_timeout

    def set_modification_timeout(self, timeout: float) -> None:
        if timeout <= 0:
            raise InvalidArgumentError("Timeout must be positive", "INVALID_TIMEOUT",
                                       [Violation("timeout", "must be > 0", "INVALID_TIMEOUT")])
        self._modification_timeout = timeout
        self.logger.info("Modification timeout set to %ss", timeout)

    def attach(self, orion_id: str) -> None:
        """Synchronize this orion (done automatically on its ORION_STARTED event)."""
        if orion_id != self._current_orion_id:
            self._current_orion_id = orion_id
            self._current_orion = None
            self._acknowledged.clear()

    def exclude(self, orion_id: str) -> None:
        """Never synchronize this orion (it runs without a planner)."""
        self._excluded.add(orion_id)
        if len(self._excluded) > 10_000:  # bounded: forget the oldest ids
            for old in list(self._excluded)[:5_000]:
                self._excluded.discard(old)

    def tracks(self, orion_id: str) -> bool:
        return self._current_orion_id == orion_id

    @property
    def current_orion_id(self) -> str | None:
        return self._current_orion_id

    # ------------------------------------------------------------------ events
    async def on_event(self, event: Event) -> None:
        if isinstance(event, TaskEvent):
            self._on_task_event(event)
        elif isinstance(event, OrionEvent):
            self._on_orion_event(event)

    def _on_task_event(self, event: TaskEvent) -> None:
        if event.event_type not in (EventType.TASK_COMPLETED, EventType.TASK_FAILED):
            return
        orion_id = event.data.get("orion_id")
        if orion_id is None:
            self.logger.debug("Task event %s missing orion_id, skipping", event.task_id)
            return
        if orion_id in self._excluded:
            return
        if self._current_orion_id is None:
            self._current_orion_id = orion_id
        if orion_id != self._current_orion_id:
            return
        self.add_pending(event.task_id)

    def add_pending(self, task_id: str) -> None:
        if task_id in self._pending or task_id in self._acknowledged:
            return
        self._pending[task_id] = asyncio.get_running_loop().create_future()
        self._stats["total_modifications"] += 1
        self.logger.info("Registered pending modification for task '%s' (orion: %s)",
                         task_id, self._current_orion_id)
        self._signal()

    def _on_orion_event(self, event: OrionEvent) -> None:
        if event.event_type is EventType.ORION_STARTED:
            if event.data.get("synchronized", True):
                self.attach(event.orion_id)
            return
        if event.event_type is not EventType.ORION_MODIFIED:
            return
        task_ids = normalize_task_ids(event.data.get("on_task_ids", event.data.get("on_task_id")))
        new_orion = event.data.get("new_orion")
        if isinstance(new_orion, TaskOrion) and new_orion.orion_id == self._current_orion_id:
            self._current_orion = new_orion
        if not task_ids:
            self.logger.warning("ORION_MODIFIED event missing 'on_task_ids' field")
            return
        self.complete_modifications(task_ids)

    def complete_modifications(self, task_ids: Iterable[str]) -> int:
        """Acknowledge finished stars; returns how many were pending."""
        done = 0
        for task_id in task_ids:
            self._acknowledged.add(task_id)
            future = self._pending.pop(task_id, None)
            if future is None:
                self.logger.debug("Modification for task '%s' was not pending", task_id)
                continue
            if not future.done():
                future.set_result(True)
            self._stats["completed_modifications"] += 1
            done += 1
        self._signal()
        return done

    def _signal(self) -> None:
        for changed in self._waiters:
            changed.set()

    async def wait_until_settled(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until nothing is pending, without giving up on anything:
        unlike ``wait_for_pending_modifications`` a timeout here drops and counts nothing.
        Any number of callers may wait at once. True if nothing is pending."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        changed = asyncio.Event()
        self._waiters.add(changed)
        try:
            while self._pending:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            self._waiters.discard(changed)
        return not self._pending

    # ------------------------------------------------------------------ waiting
    async def wait_for_pending_modifications(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending; True if all were acknowledged, False on timeout."""
        if not self._pending:
            return True
        timeout = timeout or self._modification_timeout
        await self.wait_until_settled(timeout)
        if not self._pending:
            return True
        timed_out = list(self._pending)
        self.logger.warning("Timeout waiting for modifications after %ss; proceeding. "
                            "Pending: %s", timeout, timed_out)
        self._stats["timeout_modifications"] += len(timed_out)
        self._drop_pending()
        return False

    def _drop_pending(self) -> None:
        for task_id, future in self._pending.items():
            self._acknowledged.add(task_id)
            if not future.done():
                future.set_result(False)
        self._pending.clear()
        self._signal()

    def clear_pending_modifications(self) -> None:
        """Emergency: stop waiting for the planner."""
        if self._pending:
            self.logger.warning("Forcefully clearing %d pending modification(s)",
                                len(self._pending))
        self._drop_pending()

    # ------------------------------------------------------------------ queries
    def has_pending_modifications(self) -> bool:
        return bool(self._pending)

    def get_pending_count(self) -> int:
        return len(self._pending)

    def get_pending_task_ids(self) -> list[str]:
        return list(self._pending)

    def get_statistics(self) -> dict[str, int]:
        return dict(self._stats)

    def get_current_orion(self) -> TaskOrion | None:
        if self._current_orion is not None:
            return self._current_orion
        if self._current_orion_id is None:
            return None
        return self._live(self._current_orion_id)

    def _live(self, orion_id: str) -> TaskOrion | None:
        orch = self.orchestrator
        return orch.get_running_orion(orion_id) or orch.orion_manager.get_orion(orion_id)

    # ------------------------------------------------------------------ editing
    def require_editable(self, orion: TaskOrion) -> None:
        """Edits apply to orions that have not run yet or are running. Once a run has ended
        its stars will never be scheduled again: an added star would stay pending forever."""
        if orion.state in FINISHED_ORION_STATES and \
                not self.orchestrator.is_running(orion.orion_id):
            raise FailedPreconditionError(
                f"Orion {orion.orion_id} has finished ({orion.state.value}): edits apply to "
                "orions that have not run yet or are running; submit a new orion for more work",
                "ORION_FINISHED", metadata={"orion_id": orion.orion_id,
                                            "state": orion.state.value})

    def edit_orion(self, orion_id: str, edits: list[EditOperation],
                   on_task_ids: Iterable[str] | str | None = None) -> EditOutcome:
        """Apply an atomic edit batch to a live orion, then acknowledge ``on_task_ids``."""
        orion = self._live(orion_id)
        if orion is None:
            raise NotFoundError(f"Orion {orion_id} not found", "ORION_NOT_FOUND",
                                {"orion_id": orion_id})
        self.require_editable(orion)
        outcome = apply_edits(orion, edits)
        ids = normalize_task_ids(on_task_ids)
        orch = self.orchestrator
        for task_id in outcome.cancelled_task_ids:
            task = orion.get_task(task_id)
            if task is not None:
                orch._publish_task(EventType.TASK_CANCELLED, task, orion)
        orch._publish_orion(EventType.ORION_MODIFIED, orion, {
            "on_task_ids": ids, "modification_type": "edit_batch", "edit_count": len(edits),
            "timestamp": time.time()})
        if self.tracks(orion_id):
            self.complete_modifications(ids)
        orch.notify_orion_changed(orion_id)
        return outcome

    def merge_and_sync_orion_states(self, orchestrator_orion: TaskOrion) -> TaskOrion:
        """Fold the planner's copy into the live orion: structure from the planner, execution
        state only forward. Returns the live orion (the scheduler keeps one object)."""
        planner = self._current_orion
        if planner is None or planner is orchestrator_orion:
            return orchestrator_orion
        self._current_orion = None
        try:
            return self.merge_orion(orchestrator_orion, planner)
        except ValueError as exc:
            self.logger.error("Planner's orion could not be merged: %s", exc)
            return orchestrator_orion

    def merge_orion(self, orchestrator_orion: TaskOrion, planner: TaskOrion) -> TaskOrion:
        """Merge ``planner`` (e.g. a copy received over the wire) into the live orion now.

        Like ``merge_and_sync_orion_states`` but explicit, and a structural change that breaks
        an invariant raises ``EditRejectedError`` (nothing changed) instead of being logged.
        """
        self.require_editable(orchestrator_orion)
        edits, advances = diff_orions(orchestrator_orion, planner)
        if edits:
            apply_edits(orchestrator_orion, edits)
        for task_id, planner_task in advances:
            live = orchestrator_orion.get_task(task_id)
            if live is None or live.status not in MODIFIABLE_STATUSES:
                continue
            if planner_task.status is TaskStatus.CANCELLED:
                orchestrator_orion.cancel_task(task_id, "cancelled by the planner")
            else:
                orchestrator_orion.finish_task(
                    task_id, planner_task.status is TaskStatus.COMPLETED, planner_task.result,
                    planner_task.error or TaskFailure("failed by the planner"))
        self.orchestrator.notify_orion_changed(orchestrator_orion.orion_id)
        return orchestrator_orion

    merge_and_sync_constellation_states = merge_and_sync_orion_states


FINISHED_ORION_STATES = frozenset({OrionState.COMPLETED, OrionState.FAILED,
                                   OrionState.PARTIALLY_FAILED, OrionState.CANCELLED})


def diff_orions(live: TaskOrion, planner: TaskOrion
                ) -> tuple[list[EditOperation], list[tuple[str, TaskStar]]]:
    """Edits that give ``live`` the planner's structure, and the stars whose state the planner
    has moved further than the live run."""
    edits: list[EditOperation] = []
    advances: list[tuple[str, TaskStar]] = []
    live_tasks, plan_tasks = live._tasks, planner._tasks
    for line in live.get_all_dependencies():
        if planner.get_dependency(line.line_id) is None and \
                live_tasks[line.to_task_id].status in MODIFIABLE_STATUSES:
            edits.append(RemoveDependency(line.line_id))
    for task_id, task in live_tasks.items():
        if task_id not in plan_tasks and task.status in MODIFIABLE_STATUSES:
            edits.append(RemoveTask(task_id))
    for task_id, ptask in plan_tasks.items():
        ltask = live_tasks.get(task_id)
        if ltask is None:
            if ptask.status in MODIFIABLE_STATUSES:
                edits.append(AddTask(_fresh_copy(ptask)))
            continue
        if ltask.status in MODIFIABLE_STATUSES:
            changes = {f: getattr(ptask, f) for f in ("name", "description", "tips",
                                                      "target_device_id", "device_type",
                                                      "priority", "timeout", "retry_count",
                                                      "task_data", "expected_output_type",
                                                      "required_capabilities")
                       if getattr(ptask, f) != getattr(ltask, f)}
            if changes:
                edits.append(UpdateTask(task_id, changes))
            if _STATE_LEVEL[ptask.status] > _STATE_LEVEL[ltask.status] and \
                    ptask.status in TERMINAL_STATUSES:
                advances.append((task_id, ptask))
    for line in planner.get_all_dependencies():
        existing = live.get_dependency(line.line_id)
        if existing is None:
            if line.from_task_id in plan_tasks and line.to_task_id in plan_tasks:
                edits.append(AddDependency(_fresh_line(line)))
        elif live_tasks[line.to_task_id].status in MODIFIABLE_STATUSES:
            changes = {f: getattr(line, f) for f in ("dependency_type", "condition",
                                                     "condition_description")
                       if getattr(line, f) != getattr(existing, f)}
            if changes:
                edits.append(UpdateDependency(line.line_id, changes))
    return edits, advances


def _fresh_copy(task: TaskStar) -> TaskStar:
    return TaskStar(task.task_id, task.name, task.description, task.tips, task.target_device_id,
                    task.device_type, task.priority, task.timeout, task.retry_count,
                    task.task_data, task.expected_output_type, task.required_capabilities)


def _fresh_line(line: TaskStarLine) -> TaskStarLine:
    return TaskStarLine(line.from_task_id, line.to_task_id, line.dependency_type,
                        line.condition_description, line.condition_evaluator, line.line_id,
                        line.metadata, line.condition)


ConstellationModificationSynchronizer = OrionModificationSynchronizer  # reference name
