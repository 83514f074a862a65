"""TaskOrionOrchestrator: runs orions on devices.

One ``_Run`` per orion being orchestrated. The scheduler is event driven: lease completions,
freed device slots and orion edits set a wake-up flag, and the run loop then does all the
work that became possible (so a burst of completions costs one loop turn, not one each).
Ready stars wait in one priority queue per device; a device never holds more than its
capacity. Nothing polls and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import log_context
from .device_manager import (
    REASON_CANCELLED,
    REASON_DEVICE_DISCONNECTION,
    REASON_REJECTED,
    Lease,
    LeaseOutcome,
    OrionDeviceManager,
)
from .enums import MODIFIABLE_STATUSES, OrionState, TaskPriority, TaskStatus
from .errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    Violation,
)
from .events import EventBus, EventType, OrionEvent, TaskEvent, get_event_bus
from .manager import OrionManager, is_eligible, orion_status
from .task_orion import TaskOrion
from .task_star import TaskFailure, TaskStar

if TYPE_CHECKING:
    from .hooks import TracerHooks
    from .synchronizer import OrionModificationSynchronizer

logger = logging.getLogger(__name__)

SYNCHRONIZER_EVENTS = frozenset({EventType.TASK_COMPLETED, EventType.TASK_FAILED,
                                 EventType.ORION_STARTED, EventType.ORION_MODIFIED})


class RunSuspendedError(UnavailableError):
    """A run was suspended by a shutdown of its engine (with a store): the orion was left as
    it is, and continues when an engine restarts on the same store."""

    def __init__(self, orion_id: str) -> None:
        super().__init__(
            f"the server is shutting down: orion {orion_id} was stopped where it is and "
            "continues when the server starts again on the same store; wait for it then "
            "(with the same request_id, a retry waits for the same run)", "RUN_SUSPENDED",
            {"orion_id": orion_id})


class TaskExecutionError(RuntimeError):
    """``execute_single_task`` failed on its device."""

    def __init__(self, task_id: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"Task {task_id}: {message}")
        self.task_id = task_id
        self.reason = reason


class TaskOrionOrchestrator:
    """Validates, assigns and runs orions; the seed API's central class."""

    def __init__(self, device_manager: OrionDeviceManager | None = None,
                 enable_logging: bool = True, event_bus: EventBus | None = None, *,
                 orion_manager: OrionManager | None = None,
                 max_concurrent_tasks: int | None = None,
                 retry_backoff_base: float = 0.5, retry_backoff_max: float = 30.0,
                 device_grace_period: float = 10.0) -> None:
        """
        :param max_concurrent_tasks: optional cap on running stars per orion.
        :param retry_backoff_base: delay before the first retry; doubles per attempt (±10%
            jitter) up to ``retry_backoff_max``.
        :param device_grace_period: how long ready stars wait for their device to come back
            before they move to another eligible device (or fail with device_disconnection).
        """
        self._device_manager = device_manager
        self._enable_logging = enable_logging
        self._logger = logger if enable_logging else None
        self._event_bus = event_bus or (device_manager.event_bus if device_manager else None) \
            or get_event_bus()
        self._manager = orion_manager or OrionManager(device_manager, enable_logging)
        if orion_manager is not None and device_manager is not None:
            orion_manager.set_device_manager(device_manager)
        self._runs: dict[str, _Run] = {}
        self._synchronizer: OrionModificationSynchronizer | None = None
        self._tracer_hooks: TracerHooks | None = None
        self.max_concurrent_tasks = max_concurrent_tasks
        self.retry_backoff_base = retry_backoff_base
        self.retry_backoff_max = retry_backoff_max
        self.device_grace_period = device_grace_period
        self._source_id = f"orchestrator_{id(self)}"

    # ------------------------------------------------------------------ wiring
    def set_device_manager(self, device_manager: OrionDeviceManager) -> None:
        self._device_manager = device_manager
        self._manager.set_device_manager(device_manager)

    def set_modification_synchronizer(self, synchronizer: OrionModificationSynchronizer) -> None:
        self._synchronizer = synchronizer
        # Idempotent. Only what it acts on: finished stars, started and modified orions
        # (every other event would cost a queue hop for nothing).
        self._event_bus.subscribe(synchronizer, SYNCHRONIZER_EVENTS)
        if self._logger:
            self._logger.info("Modification synchronizer attached to orchestrator")

    def set_tracer_hooks(self, hooks: TracerHooks | None) -> None:
        """Let ``hooks`` watch every orion this orchestrator runs from now on (None: stop).

        See ``orion_grpc.core.hooks``; ``orion_grpc.observability`` has the OpenTelemetry ones.
        """
        self._tracer_hooks = hooks

    @property
    def tracer_hooks(self) -> TracerHooks | None:
        return self._tracer_hooks

    @property
    def device_manager(self) -> OrionDeviceManager | None:
        return self._device_manager

    @property
    def orion_manager(self) -> OrionManager:
        return self._manager

    @property
    def event_bus(self) -> EventBus:
        return self._event_bus

    def get_running_orion(self, orion_id: str) -> TaskOrion | None:
        run = self._runs.get(orion_id)
        return run.orion if run else None

    def is_running(self, orion_id: str) -> bool:
        return orion_id in self._runs

    @property
    def running_count(self) -> int:
        """Orions running now."""
        return len(self._runs)

    def notify_orion_changed(self, orion_id: str) -> None:
        run = self._runs.get(orion_id)
        if run is not None:
            run.wake.set()

    # ------------------------------------------------------------------ orchestration
    def _require_device_manager(self) -> OrionDeviceManager:
        if self._device_manager is None:
            raise FailedPreconditionError(
                "OrionDeviceManager not set. Use set_device_manager() first.",
                "NO_DEVICE_MANAGER")
        return self._device_manager

    async def prepare_orion(self, orion: TaskOrion, device_assignments: dict[str, str] | None = None,
                            assignment_strategy: str | None = None) -> None:
        """Validate the DAG and settle every star's device; raises and changes nothing on error."""
        self._require_device_manager()
        if orion.orion_id in self._runs:
            raise AlreadyExistsError(f"Orion {orion.orion_id} is already being orchestrated",
                                     "ORION_ALREADY_RUNNING", {"orion_id": orion.orion_id})
        ok, errors = orion.validate_dag()
        if not ok:
            raise InvalidArgumentError(f"Invalid DAG: {errors}", "INVALID_DAG",
                                       [Violation("orion", e, "INVALID_DAG") for e in errors])
        if device_assignments:
            unknown_tasks = sorted(t for t in device_assignments if orion.get_task(t) is None)
            if unknown_tasks:
                raise InvalidArgumentError(
                    f"device_assignments names tasks not in the orion: {unknown_tasks}",
                    "UNKNOWN_TASK", [Violation(f"device_assignments[{t}]", "no such task",
                                               "UNKNOWN_TASK") for t in unknown_tasks])
            self._check_assignments(orion, device_assignments)
            for task_id, device_id in device_assignments.items():
                self._manager.reassign_task_device(orion, task_id, device_id)
        elif assignment_strategy:
            await self._manager.assign_devices_automatically(orion, assignment_strategy)
        self._check_assignments(orion, {})

    def _check_assignments(self, orion: TaskOrion, overrides: dict[str, str]) -> None:
        dm = self._require_device_manager()
        known = dm.get_all_devices()
        missing, invalid = [], []
        for task in orion._tasks.values():
            if task._status not in MODIFIABLE_STATUSES:
                continue
            dev = overrides.get(task.task_id, task.target_device_id)
            if not dev:
                missing.append(task.task_id)
            elif dev not in known:
                invalid.append(f"{task.task_id} (assigned to unknown device: {dev})")
        if not missing and not invalid:
            return
        lines = ["Device assignment validation failed:"]
        violations = []
        if missing:
            lines.append(f"  - Tasks without device assignment: {missing}")
            violations += [Violation(f"tasks[{t}].target_device_id", "no device assigned",
                                     "NO_DEVICE_ASSIGNMENT") for t in missing]
        if invalid:
            lines.append(f"  - Tasks with invalid device IDs: {invalid}")
            violations += [Violation("target_device_id", e, "UNKNOWN_DEVICE") for e in invalid]
        lines.append(f"  Available devices: {dm.get_connected_devices()}")
        lines.append("  Please provide either 'device_assignments' or 'assignment_strategy' "
                     "parameter.")
        raise InvalidArgumentError("\n".join(lines), "INVALID_DEVICE_ASSIGNMENT", violations)

    async def orchestrate_orion(self, orion: TaskOrion,
                                device_assignments: dict[str, str] | None = None,
                                assignment_strategy: str | None = None,
                                metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``orion`` to the end and return its results (see docs/concepts.md)."""
        await self.prepare_orion(orion, device_assignments, assignment_strategy)
        return await self.run_prepared(orion, assignment_strategy, metadata)

    async def run_prepared(self, orion: TaskOrion, assignment_strategy: str | None = None,
                           metadata: dict[str, Any] | None = None, *,
                           synchronize: bool = True) -> dict[str, Any]:
        """Run an orion that ``prepare_orion`` accepted.

        ``synchronize=False`` keeps an attached modification synchronizer out of this run (a
        server hosts orions with and without a planner; only the former wait for one).
        """
        return await self._drive(_Run(self, orion, assignment_strategy, metadata or {},
                                      synchronize))

    def resume_run(self, orion: TaskOrion, assignment_strategy: str | None = None,
                   metadata: dict[str, Any] | None = None, *, synchronize: bool = True,
                   grace: float = 0.0) -> Coroutine[Any, Any, dict[str, Any]]:
        """Continue a run restored from a store (core/recovery.py); returns the coroutine that
        drives it to the end, like ``run_prepared``.

        The run adopts its restored leases NOW, not when the coroutine first runs, so a
        device that reconnects and replays a result at once is never missed. Stars whose
        device has not reconnected yet wait ``grace`` seconds for it before the usual
        ``device_grace_period`` rules move or fail them. An orion that never started is
        simply started.
        """
        run = _Run(self, orion, assignment_strategy, metadata or {}, synchronize, grace)
        self._runs[orion.orion_id] = run
        if orion.execution_start_time is not None:
            run._resume()
        return self._drive(run)

    async def _drive(self, run: _Run) -> dict[str, Any]:
        orion = run.orion
        self._runs[orion.orion_id] = run
        try:
            return await run.execute()
        except asyncio.CancelledError:
            if not run.suspended:
                run.cancel("orchestration task cancelled")
                run._finish()  # publish ORION_CANCELLED; the caller gets no result to read
            raise
        finally:
            self._runs.pop(orion.orion_id, None)

    def suspend_runs(self) -> list[asyncio.Event]:
        """Stop every run where it is, without cancelling anything (a graceful shutdown of an
        engine with a store: the orion, its leases and the work on devices stay as they are,
        and a restart resumes them). Each run ends with ``RunSuspendedError``; returns their
        ``finished`` events."""
        for run in self._runs.values():
            run.suspend()
        return [run.finished for run in self._runs.values()]

    async def cancel_orion(self, orion_id: str, reason: str | None = None) -> bool:
        """Cancel a running orion: pending stars cancelled, running ones told to stop.

        Returns False if no orion with that id is running. The orchestrator stays usable.
        """
        run = self._runs.get(orion_id)
        if run is None:
            return False
        run.cancel(reason or "Orion cancelled by request")
        await run.finished.wait()
        return True

    cancel_execution = cancel_orion  # reference name

    async def execute_single_task(self, task: TaskStar, target_device_id: str | None = None) -> Any:
        """Run one star outside any orion (honouring its retries) and return its result."""
        dm = self._require_device_manager()
        if target_device_id:
            task.target_device_id = target_device_id
        if not task.target_device_id:
            device = self._manager.pick_device(task)
            if device is None:
                raise UnavailableError("No available devices for task execution",
                                       "NO_DEVICE_AVAILABLE")
            task.target_device_id = device
        if dm.get_device_info(task.target_device_id) is None:
            raise NotFoundError(f"Device {task.target_device_id} is not registered",
                                "DEVICE_NOT_FOUND", {"device_id": task.target_device_id})
        attempt = 0
        while True:
            outcome = await task.execute(dm)
            if outcome.is_successful:
                return outcome.result
            if attempt >= task.retry_count:
                raise TaskExecutionError(task.task_id, str(outcome.error),
                                         outcome.metadata.get("reason"))
            attempt += 1
            await asyncio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        base = min(self.retry_backoff_max, self.retry_backoff_base * (2 ** max(0, attempt - 1)))
        return base * random.uniform(0.9, 1.1) if base > 0 else 0.0

    # ------------------------------------------------------------------ queries
    async def get_orion_status(self, orion: TaskOrion | str) -> dict[str, Any] | None:
        orion_id = orion if isinstance(orion, str) else orion.orion_id
        status = await self._manager.get_orion_status(orion_id)
        if status is None and isinstance(orion, TaskOrion):
            return orion_status(orion, {})
        return status

    async def get_available_devices(self) -> list[dict[str, Any]]:
        return await self._manager.get_available_devices()

    async def assign_devices_automatically(self, orion: TaskOrion, strategy: str = "round_robin",
                                           device_preferences: dict[str, str] | None = None
                                           ) -> dict[str, str]:
        return await self._manager.assign_devices_automatically(orion, strategy,
                                                                device_preferences)

    # ------------------------------------------------------------------ events
    def _publish_task(self, event_type: EventType, task: TaskStar, orion: TaskOrion,
                      extra: dict[str, Any] | None = None) -> None:
        bus = self._event_bus
        if not bus.has_subscribers(event_type):
            return
        data = {"orion_id": orion.orion_id, "orion": orion,
                "device_id": task.target_device_id, "attempt": task.current_retry}
        if extra:
            data.update(extra)
        bus.publish(TaskEvent(event_type=event_type, source_id=self._source_id,
                              timestamp=time.time(), data=data, task_id=task.task_id,
                              status=task.status.value, result=task.result,
                              error=str(task.error) if task.error else None))

    def _publish_orion(self, event_type: EventType, orion: TaskOrion, data: dict[str, Any],
                       new_ready: list[str] | None = None) -> None:
        bus = self._event_bus
        if not bus.has_subscribers(event_type):
            return
        bus.publish(OrionEvent(event_type=event_type, source_id=self._source_id,
                               timestamp=time.time(), data={"orion": orion, **data},
                               orion_id=orion.orion_id, orion_state=orion.state.value,
                               new_ready_tasks=new_ready))


class _ReadyQueue:
    """One device's ready stars: highest priority first, FIFO within a priority.

    A lane (deque) per TaskPriority level: O(1) push and pop, where a heap of 10^5 ready stars
    cost O(log n) tuple comparisons per star.
    """

    __slots__ = ("_lanes", "_size")

    def __init__(self) -> None:
        self._lanes: tuple[deque[TaskStar], ...] = tuple(deque() for _ in _PRIORITY_LANES)
        self._size = 0

    def push(self, task: TaskStar) -> None:
        self._lanes[_PRIORITY_LANES[task.priority]].append(task)
        self._size += 1

    def pop(self) -> TaskStar:
        for lane in self._lanes:
            if lane:
                self._size -= 1
                return lane.popleft()
        raise IndexError("pop from an empty ready queue")

    def drain(self) -> list[TaskStar]:
        """Every queued star, in dispatch order; the queue is left empty."""
        tasks = [task for lane in self._lanes for task in lane]
        for lane in self._lanes:
            lane.clear()
        self._size = 0
        return tasks

    def __len__(self) -> int:
        return self._size


# Lane of each priority in a _ReadyQueue: the highest first.
_PRIORITY_LANES = {p: i for i, p in enumerate(sorted(TaskPriority, key=lambda p: -p.value))}


class _Run:
    """The scheduling state of one orion being orchestrated."""

    def __init__(self, orch: TaskOrionOrchestrator, orion: TaskOrion, strategy: str | None,
                 metadata: dict[str, Any], synchronize: bool = True,
                 resume_grace: float | None = None) -> None:
        self.orch = orch
        self.resume_grace = resume_grace
        self.resumed = False  # continues a run restored from a store (see _resume)
        self.suspended = False  # stopped by a shutdown, left as it is (see suspend)
        self.synchronize = synchronize
        self.orion = orion
        self.dm = orch._require_device_manager()
        self.strategy = strategy
        self.metadata = metadata
        self.heaps: dict[str, _ReadyQueue] = {}  # device id -> its ready stars
        # star id -> time.monotonic() it was queued for its device (-> Lease.queue_wait)
        self.queued: dict[str, float] = {}
        self.leases: dict[str, Lease] = {}
        self.backoff: dict[str, asyncio.TimerHandle] = {}
        self.offline_since: dict[str, float] = {}
        self.grace_timers: dict[str, asyncio.TimerHandle] = {}
        self.rejected_by: dict[str, set[str]] = {}  # task id -> devices that refused it
        self.wake = asyncio.Event()
        self.finished = asyncio.Event()
        self.cancelled = False
        self.cancel_reason = ""
        self.hooks = orch._tracer_hooks  # fixed for the whole run
        self._lease_done = self._on_lease_done  # one bound method for every lease, not one each

    # ------------------------------------------------------------------ main loop
    async def execute(self) -> dict[str, Any]:
        tokens = log_context.bind(orion_id=self.orion.orion_id)  # for every log line of the run
        try:
            return await self._execute()
        finally:
            log_context.unbind(tokens)

    async def _execute(self) -> dict[str, Any]:
        orch, orion, dm = self.orch, self.orion, self.dm
        orch._manager.register_orion(orion, self.metadata)
        if orch._manager.journal is not None:
            orch._manager.journal.run_started(orion, self.strategy, self.metadata,
                                              self.synchronize)
        if orch._synchronizer is not None:
            if self.synchronize:
                orch._synchronizer.attach(orion.orion_id)
            else:
                orch._synchronizer.exclude(orion.orion_id)
        if not self.resumed:
            orion.start_execution()
        if not self.resumed and orch._event_bus.has_subscribers(EventType.ORION_STARTED):
            orch._publish_orion(EventType.ORION_STARTED, orion, {
                "total_tasks": orion.task_count, "assignment_strategy": self.strategy,
                "synchronized": self.synchronize,
                "device_assignments": {t.task_id: t.target_device_id
                                       for t in orion.get_all_tasks()},
                **self.metadata})
        wake = self.wake.set
        dm.add_capacity_listener(self._on_capacity)
        orion.add_change_listener(wake)
        hooks = self.hooks
        try:
            if hooks is not None:
                self._call_hook(hooks.on_orion_start, orion)
            while not self.cancelled:
                # Clear before the work, not after it: a wake-up raised by the work itself
                # (e.g. _pump moving stars to a device it has already passed) must not be lost.
                self.wake.clear()
                await self._synchronize()
                if self.cancelled:
                    break  # cancelled while waiting for the planner: dispatch nothing more
                self._intake()
                self._pump()
                if not self.leases and not self.backoff:
                    if orion.is_complete():
                        break
                    if not self.queued and not orion._ready and not self.grace_timers:
                        self._fail_stalled()
                        continue
                await self.wake.wait()
        except asyncio.CancelledError:
            # The awaiting task was cancelled: cancel the orion (below) like cancel_orion does,
            # or its leases keep running and its stars stay RUNNING / PENDING forever.
            if not self.suspended:
                self.cancel("orchestration task cancelled")
            raise
        finally:
            dm.remove_capacity_listener(self._on_capacity)
            orion.remove_change_listener(wake)
            for handle in [*self.backoff.values(), *self.grace_timers.values()]:
                handle.cancel()
            if self.cancelled and not self.suspended:
                self._cancel_everything()
            if not self.suspended:
                orion.complete_execution()
            if hooks is not None:
                self._call_hook(hooks.on_orion_end, orion, orion.state)
            self.finished.set()
        if self.suspended:
            raise RunSuspendedError(orion.orion_id)
        return self._finish()

    def suspend(self) -> None:
        """Stop scheduling and leave everything as it is: no cancel reaches a device, outcomes
        arriving from now on are ignored, the orion keeps its state (see suspend_runs)."""
        self.suspended = True
        self.leases.clear()  # _on_lease_done ignores leases it does not hold
        if not self.cancelled:
            self.cancelled = True  # ends the loop ...
            self.wake.set()  # ... at its next turn
            sync = self.orch._synchronizer
            if sync is not None and sync.tracks(self.orion.orion_id):
                sync.clear_pending_modifications()  # the loop may be waiting for the planner

    def _resume(self) -> None:
        """Continue a run restored from a store: adopt its restored leases, and let stars wait
        ``resume_grace`` for devices that have not reconnected yet."""
        self.resumed = True
        leases = self.dm.leases_of(self.orion.orion_id)
        for task in self.orion.get_running_tasks():
            lease = leases.get(task.task_id)
            if lease is None:  # defensive: a star and its lease are committed together
                lease = Lease(f"lost:{task.task_id}", task.target_device_id or "", task.task_id,
                              self.orion.orion_id, task.current_retry, "", {}, None,
                              self._on_lease_done, None)
                self.leases[task.task_id] = lease
                self._on_lease_done(lease, LeaseOutcome(
                    False, error="its attempt was lost when the server restarted",
                    reason=REASON_DEVICE_DISCONNECTION))
                continue
            lease.on_done = self._on_lease_done
            self.leases[task.task_id] = lease
        # _device_offline counts device_grace_period from offline_since: date it so that the
        # wait for a device that has not reconnected yet ends resume_grace from now.
        start = time.monotonic() + max(0.0, (self.resume_grace or 0.0)
                                       - self.orch.device_grace_period)
        for device in self.dm.get_all_devices().values():
            if not device.is_online:
                self.offline_since[device.device_id] = start

    async def _synchronize(self) -> None:
        """Before dispatching, let the planner acknowledge finished stars (bounded wait)."""
        sync = self.orch._synchronizer
        if sync is None or not self.synchronize or not sync.tracks(self.orion.orion_id):
            return
        bus = self.orch._event_bus
        if bus.is_subscribed(sync):
            await bus.flush(sync, timeout=sync.modification_timeout)
        if sync.has_pending_modifications():
            await sync.wait_for_pending_modifications()
        sync.merge_and_sync_orion_states(self.orion)

    def _intake(self) -> None:
        backoff = self.backoff
        for task in self.orion.pop_ready():
            if task._task_id not in backoff:
                self._enqueue(task)

    def _enqueue(self, task: TaskStar, since: float | None = None) -> None:
        if task.task_id in self.queued or task.task_id in self.leases:
            return
        device_id = task.target_device_id
        if not device_id or self.dm.get_device_info(device_id) is None:
            device_id = self.orch._manager.pick_device(task, self.strategy)
            if device_id is None:
                self._fail_unplaceable(task, f"Task {task.task_id} has no usable device "
                                             f"(assigned: {task.target_device_id!r})")
                return
            task.target_device_id = device_id
        refused = self.rejected_by.get(task.task_id)
        if refused and device_id in refused:
            # The device said it will not run this star (no such executor, full, draining):
            # try an eligible device that has not refused it; if none, the same one again.
            other = self.orch._manager.pick_device(task, self.strategy, exclude=refused)
            if other is not None:
                device_id = task.target_device_id = other
        self.queued[task.task_id] = time.monotonic() if since is None else since
        heap = self.heaps.get(device_id)
        if heap is None:
            heap = self.heaps[device_id] = _ReadyQueue()
        heap.push(task)

    def _pump(self) -> None:
        dm, orion = self.dm, self.orion
        cap = self.orch.max_concurrent_tasks
        for device_id in list(self.heaps):
            heap = self.heaps[device_id]
            while heap:
                if cap is not None and len(self.leases) >= cap:
                    return
                if not dm.has_capacity(device_id):
                    if dm.is_online(device_id):
                        self.offline_since.pop(device_id, None)
                    else:
                        self._device_offline(device_id, heap)
                    break
                self.offline_since.pop(device_id, None)
                task = heap.pop()
                since = self.queued.pop(task.task_id, None)
                if not orion.is_dispatchable(task):
                    continue  # edited away, blocked again, or cancelled while queued
                if task.target_device_id != device_id:
                    self._enqueue(task, since)  # reassigned while queued
                    continue
                self._dispatch(task, since)
            if not heap:
                del self.heaps[device_id]

    def _dispatch(self, task: TaskStar, queued_since: float | None = None) -> None:
        task.start_execution()
        hooks = self.hooks
        trace_context = None if hooks is None else \
            self._call_hook(hooks.on_dispatch, self.orion, task, task.current_retry)
        lease = self.dm.start_lease(
            task.target_device_id, task.task_id, task.to_request_string(), task._task_data,
            task.timeout, self._lease_done, orion_id=self.orion.orion_id,
            attempt=task.current_retry, trace_context=trace_context)
        if queued_since is not None:
            lease.queue_wait = time.monotonic() - queued_since
        self.leases[task.task_id] = lease
        if self.orch._event_bus.has_subscribers(EventType.TASK_STARTED):
            self.orch._publish_task(EventType.TASK_STARTED, task, self.orion,
                                    {"lease_id": lease.lease_id})

    # ------------------------------------------------------------------ callbacks
    def _on_capacity(self, device_id: str) -> None:
        if device_id in self.heaps:
            self.wake.set()

    def _on_lease_done(self, lease: Lease, outcome: LeaseOutcome) -> None:
        if self.leases.get(lease.task_id) is not lease:
            return
        del self.leases[lease.task_id]
        self.wake.set()
        orion, orch = self.orion, self.orch
        task = orion._tasks.get(lease.task_id)
        hooks = self.hooks
        if hooks is not None and task is not None:
            self._call_hook(hooks.on_attempt_end, orion, task, lease, outcome)
        if task is None or task._status is not TaskStatus.RUNNING:
            return
        if outcome.success:
            ready, cancelled = orion._finish_star(task, True, outcome.result)
            if orch._event_bus.has_subscribers(EventType.TASK_COMPLETED):
                orch._publish_task(EventType.TASK_COMPLETED, task, orion,
                                   {"newly_ready_tasks": [t.task_id for t in ready]})
            self._publish_cancelled(cancelled)
            return
        error = TaskFailure(outcome.error or "task failed", outcome.reason or "task_error")
        if task.current_retry < task.retry_count:
            if outcome.reason == REASON_REJECTED:
                self.rejected_by.setdefault(task.task_id, set()).add(lease.device_id)
            task.complete_with_failure(error)
            task.retry()
            delay = orch._backoff(task.current_retry)
            self.backoff[task.task_id] = asyncio.get_running_loop().call_later(
                delay, self._end_backoff, task.task_id)
            orch._publish_task(EventType.TASK_RETRYING, task, orion, {
                "reason": outcome.reason, "error": outcome.error, "retry_in": delay,
                "failed_device_id": lease.device_id})
            return
        ready, cancelled = orion._finish_star(task, False, error=error)
        orch._publish_task(EventType.TASK_FAILED, task, orion,
                           {"newly_ready_tasks": [t.task_id for t in ready],
                            "reason": outcome.reason})
        self._publish_cancelled(cancelled)

    def _end_backoff(self, task_id: str) -> None:
        self.backoff.pop(task_id, None)
        task = self.orion._tasks.get(task_id)
        if task is not None and self.orion.is_dispatchable(task):
            self._enqueue(task)
        self.wake.set()

    def _publish_cancelled(self, cancelled: list[TaskStar]) -> None:
        for task in cancelled:
            self.orch._publish_task(EventType.TASK_CANCELLED, task, self.orion)

    # ------------------------------------------------------------------ device loss
    def _device_offline(self, device_id: str, heap: _ReadyQueue) -> None:
        """Ready stars wait ``device_grace_period`` for their device, then move or fail."""
        now = time.monotonic()
        since = self.offline_since.setdefault(device_id, now)
        grace = self.orch.device_grace_period
        if now - since < grace:
            if device_id not in self.grace_timers:
                self.grace_timers[device_id] = asyncio.get_running_loop().call_later(
                    grace - (now - since), self._grace_over, device_id)
            return
        stranded = heap.drain()
        for task in stranded:
            since = self.queued.pop(task.task_id, None)
            if not self.orion.is_dispatchable(task):
                continue
            others = [d for d in self.dm.get_online_devices()
                      if d.device_id != device_id and is_eligible(task, d)]
            if others:
                task.target_device_id = None  # _enqueue picks an eligible device
                self._enqueue(task, since)
                self.wake.set()  # its new heap may be one _pump has already passed
            else:
                self._fail_unplaceable(task, f"Device {device_id} is disconnected and no other "
                                             "eligible device is online",
                                       REASON_DEVICE_DISCONNECTION)

    def _grace_over(self, device_id: str) -> None:
        self.grace_timers.pop(device_id, None)
        self.wake.set()

    def _fail_unplaceable(self, task: TaskStar, message: str, reason: str = "no_device") -> None:
        ready, cancelled = self.orion.finish_task(task.task_id, False,
                                                  error=TaskFailure(message, reason))
        self.orch._publish_task(EventType.TASK_FAILED, task, self.orion,
                                {"newly_ready_tasks": [t.task_id for t in ready],
                                 "reason": reason})
        self._publish_cancelled(cancelled)

    def _fail_stalled(self) -> None:
        """Defensive: nothing runs or waits yet stars remain; end them instead of hanging."""
        stuck = [t for t in self.orion._tasks.values() if not t.is_terminal]
        logger.error("orion %s stalled with %d unfinished stars; cancelling them",
                     self.orion.orion_id, len(stuck))
        for task in stuck:
            if not task.is_terminal:
                self._publish_cancelled(self.orion.cancel_task(
                    task.task_id, "stalled: no prerequisite can finish"))

    # ------------------------------------------------------------------ cancellation
    def cancel(self, reason: str) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.cancel_reason = reason
            self.wake.set()
            sync = self.orch._synchronizer
            if sync is not None and sync.tracks(self.orion.orion_id):
                sync.clear_pending_modifications()  # the loop may be waiting for the planner

    def _cancel_everything(self) -> None:
        hooks = self.hooks
        for lease in list(self.leases.values()):
            self.dm.cancel_lease(lease.lease_id, self.cancel_reason)
            task = self.orion._tasks.get(lease.task_id)
            if hooks is not None and task is not None:  # cancel_lease does not call on_done
                self._call_hook(hooks.on_attempt_end, self.orion, task, lease, LeaseOutcome(
                    False, error=self.cancel_reason, reason=REASON_CANCELLED))
        self.leases.clear()
        for task in self.orion.cancel_all(self.cancel_reason):
            self.orch._publish_task(EventType.TASK_CANCELLED, task, self.orion)

    # ------------------------------------------------------------------ tracer hooks
    def _call_hook(self, hook: Any, *args: Any) -> Any:
        """Call a tracer hook; a failing tracer is logged, never allowed to break the run."""
        try:
            return hook(*args)
        except Exception:
            logger.exception("tracer hook %s failed (orion %s)",
                             getattr(hook, "__name__", hook), self.orion.orion_id)
            return None

    # ------------------------------------------------------------------ result
    def _finish(self) -> dict[str, Any]:
        orion, orch = self.orion, self.orch
        state = orion.state
        statistics = orion.get_statistics()
        event = {OrionState.COMPLETED: EventType.ORION_COMPLETED,
                 OrionState.CANCELLED: EventType.ORION_CANCELLED}.get(state, EventType.ORION_FAILED)
        orch._publish_orion(event, orion, {"total_tasks": orion.task_count,
                                           "statistics": statistics,
                                           "execution_duration": orion.execution_duration})
        tasks = orion._tasks.values()
        return {
            "results": {t.task_id: t.result for t in tasks},
            "errors": {t.task_id: str(t.error) for t in tasks if t.error is not None},
            "status": state.value,
            "total_tasks": orion.task_count,
            "statistics": statistics,
        }
