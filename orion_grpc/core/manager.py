"""OrionManager: the registry of orions and the device-assignment strategies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from .device_manager import DeviceInfo, OrionDeviceManager
from .enums import MODIFIABLE_STATUSES, TERMINAL_STATUSES, TaskStatus
from .errors import InvalidArgumentError, UnavailableError, Violation
from .task_orion import TaskOrion
from .task_star import TaskStar

if TYPE_CHECKING:
    from .journal import Journal

STRATEGIES = ("round_robin", "capability_match", "load_balance")


def is_eligible(task: TaskStar, device: DeviceInfo) -> bool:
    """Hard requirements of a star: its device type (if set) and every required capability."""
    if task.device_type is not None and device.device_type is not task.device_type:
        return False
    caps = task._required_capabilities
    return not caps or set(caps).issubset(device.capabilities)


def describe_needs(task: TaskStar) -> str:
    needs = []
    if task.device_type is not None:
        needs.append(f"device_type={task.device_type.value}")
    if task._required_capabilities:
        needs.append(f"capabilities={sorted(task._required_capabilities)}")
    return ", ".join(needs) or "any device"


class OrionManager:
    """Registers orions, answers status queries and assigns stars to devices."""

    def __init__(self, device_manager: OrionDeviceManager | None = None,
                 enable_logging: bool = True) -> None:
        self._device_manager = device_manager
        self._logger = logging.getLogger(__name__) if enable_logging else None
        self._orions: dict[str, TaskOrion] = {}
        self._orion_metadata: dict[str, dict[str, Any]] = {}
        self.journal: Journal | None = None  # set when a store persists the engine

    def _log(self, level: int, msg: str, *args: Any) -> None:
        if self._logger is not None:
            self._logger.log(level, msg, *args)

    def set_device_manager(self, device_manager: OrionDeviceManager) -> None:
        self._device_manager = device_manager
        self._log(logging.INFO, "Device manager updated")

    @property
    def device_manager(self) -> OrionDeviceManager | None:
        return self._device_manager

    # ------------------------------------------------------------------ registry
    def register_orion(self, orion: TaskOrion, metadata: dict[str, Any] | None = None) -> str:
        # The server registers an orion before it starts (so it is visible at once) and the
        # run registers it again: say so once.
        is_new = self._orions.get(orion.orion_id) is not orion
        self._orions[orion.orion_id] = orion
        self._orion_metadata[orion.orion_id] = dict(metadata or {})
        if self.journal is not None:
            self.journal.orion_registered(orion, self._orion_metadata[orion.orion_id])
        if is_new:
            self._log(logging.INFO, "Registered orion '%s' (%s)", orion.name, orion.orion_id)
        return orion.orion_id

    def unregister_orion(self, orion_id: str) -> bool:
        orion = self._orions.pop(orion_id, None)
        self._orion_metadata.pop(orion_id, None)
        if orion is None:
            return False
        if self.journal is not None:
            self.journal.orion_deleted(orion_id)
        self._log(logging.INFO, "Unregistered orion '%s' (%s)", orion.name, orion_id)
        return True

    def get_orion(self, orion_id: str) -> TaskOrion | None:
        return self._orions.get(orion_id)

    def list_orions(self) -> list[dict[str, Any]]:
        return [{"orion_id": o.orion_id, "name": o.name, "state": o.state.value,
                 "task_count": o.task_count, "dependency_count": o.dependency_count,
                 "metadata": dict(self._orion_metadata.get(o.orion_id, {}))}
                for o in self._orions.values()]

    async def get_orion_status(self, orion_id: str) -> dict[str, Any] | None:
        orion = self._orions.get(orion_id)
        if orion is None:
            return None
        return orion_status(orion, self._orion_metadata.get(orion_id, {}))

    # ------------------------------------------------------------------ devices
    def _online_devices(self) -> list[DeviceInfo]:
        dm = self._device_manager
        return [d for d in dm.get_online_devices() if not d.draining] if dm else []

    async def get_available_devices(self) -> list[dict[str, Any]]:
        return [{"device_id": d.device_id,
                 "device_type": d.device_type.value if d.device_type else (d.os or "unknown"),
                 "capabilities": list(d.capabilities), "status": d.status.value,
                 "metadata": dict(d.metadata), "capacity": d.capacity,
                 "running_tasks": len(d.running)}
                for d in self._online_devices()]

    def device_loads(self, exclude: TaskOrion | None = None) -> dict[str, int]:
        """Unfinished stars assigned per device across registered orions, plus running
        attempts that belong to no registered orion (e.g. single tasks)."""
        loads: dict[str, int] = {}
        for orion in self._orions.values():
            if orion is exclude:
                continue
            for task in orion._tasks.values():
                dev = task._target_device_id
                if dev is not None and task._status not in TERMINAL_STATUSES:
                    loads[dev] = loads.get(dev, 0) + 1
        if self._device_manager is not None:
            for dev in self._device_manager.get_online_devices():
                extra = sum(1 for lease in dev.running.values()
                            if lease.orion_id is None or lease.orion_id not in self._orions)
                if extra:
                    loads[dev.device_id] = loads.get(dev.device_id, 0) + extra
        return loads

    async def assign_devices_automatically(self, orion: TaskOrion, strategy: str = "round_robin",
                                           device_preferences: dict[str, str] | None = None
                                           ) -> dict[str, str]:
        """Assign every pending star a device; atomic (nothing changes on error)."""
        if self._device_manager is None:
            raise UnavailableError("Device manager not available for device assignment",
                                   "NO_DEVICE_MANAGER")
        if strategy not in STRATEGIES:
            raise InvalidArgumentError(
                f"Unknown assignment strategy: {strategy}", "UNKNOWN_STRATEGY",
                [Violation("assignment_strategy",
                           f"must be one of {', '.join(STRATEGIES)}", "UNKNOWN_STRATEGY")])
        devices = self._online_devices()
        if not devices:
            raise UnavailableError("No available devices for assignment", "NO_DEVICE_AVAILABLE")
        self._log(logging.INFO, "Assigning devices to orion '%s' using strategy '%s'",
                  orion.name, strategy)
        plan = plan_assignments(
            [t for t in orion._tasks.values() if t._status in MODIFIABLE_STATUSES],
            devices, strategy, device_preferences or {}, self.device_loads(exclude=orion))
        for task_id, device_id in plan.items():
            orion._tasks[task_id].target_device_id = device_id
        self._log(logging.INFO, "Assigned %d tasks to devices", len(plan))
        return plan

    def pick_device(self, task: TaskStar, strategy: str | None = None,
                    exclude: Collection[str] = ()) -> str | None:
        """One eligible online device for ``task`` (least loaded), or None; never one of
        ``exclude``."""
        devices = [d for d in self._online_devices() if d.device_id not in exclude]
        try:
            plan = plan_assignments([task], devices, strategy or "load_balance", {},
                                    self.device_loads())
        except (InvalidArgumentError, UnavailableError):
            return None
        return plan.get(task.task_id)

    def validate_orion_assignments(self, orion: TaskOrion) -> tuple[bool, list[str]]:
        errors: list[str] = []
        dm = self._device_manager
        for task in orion._tasks.values():
            if task.is_terminal or task._status is TaskStatus.RUNNING:
                continue
            dev = task.target_device_id
            if not dev:
                errors.append(f"Task '{task.task_id}' has no device assignment")
            elif dm is not None and dm.get_device_info(dev) is None:
                errors.append(f"Task '{task.task_id}' is assigned to unknown device '{dev}'")
            elif dm is not None and not dm.is_online(dev):
                errors.append(f"Task '{task.task_id}' is assigned to disconnected device '{dev}'")
        if errors:
            self._log(logging.WARNING, "Orion '%s' has %d assignment errors", orion.name,
                      len(errors))
        return not errors, errors

    def get_task_device_info(self, orion: TaskOrion, task_id: str) -> dict[str, Any] | None:
        task = orion.get_task(task_id)
        if task is None or not task.target_device_id or self._device_manager is None:
            return None
        info = self._device_manager.get_device_info(task.target_device_id)
        if info is None:
            return None
        return {"device_id": info.device_id,
                "device_type": info.device_type.value if info.device_type else info.os,
                "capabilities": list(info.capabilities), "metadata": dict(info.metadata),
                "status": info.status.value}

    def reassign_task_device(self, orion: TaskOrion, task_id: str, new_device_id: str) -> bool:
        """False for an unknown star; raises for a RUNNING one (invariant I1)."""
        task = orion.get_task(task_id)
        if task is None:
            return False
        old = task.target_device_id
        task.target_device_id = new_device_id
        self._log(logging.INFO, "Reassigned task '%s' from device '%s' to '%s'",
                  task_id, old, new_device_id)
        return True

    def clear_device_assignments(self, orion: TaskOrion) -> int:
        cleared = 0
        for task in orion._tasks.values():
            if task.target_device_id and task._status in MODIFIABLE_STATUSES:
                task.target_device_id = None
                cleared += 1
        self._log(logging.INFO, "Cleared %d device assignments from orion '%s'", cleared,
                  orion.name)
        return cleared

    def get_device_utilization(self, orion: TaskOrion) -> dict[str, int]:
        usage: dict[str, int] = {}
        for task in orion._tasks.values():
            if task.target_device_id:
                usage[task.target_device_id] = usage.get(task.target_device_id, 0) + 1
        return usage


def orion_status(orion: TaskOrion, metadata: dict[str, Any]) -> dict[str, Any]:
    def ids(status: TaskStatus) -> list[str]:
        return [t.task_id for t in orion._with_status(status)]
    return {
        "orion_id": orion.orion_id,
        "name": orion.name,
        "state": orion.state.value,
        "statistics": orion.get_statistics(),
        "ready_tasks": [t.task_id for t in orion.get_ready_tasks()],
        "running_tasks": ids(TaskStatus.RUNNING),
        "completed_tasks": ids(TaskStatus.COMPLETED),
        "failed_tasks": ids(TaskStatus.FAILED),
        "cancelled_tasks": ids(TaskStatus.CANCELLED),
        "waiting_tasks": ids(TaskStatus.WAITING_DEPENDENCY),
        "metadata": dict(metadata),
    }


def plan_assignments(tasks: list[TaskStar], devices: list[DeviceInfo], strategy: str,
                     preferences: dict[str, str], base_load: dict[str, int]) -> dict[str, str]:
    """Pure assignment planner: {task_id: device_id}. Raises if a star has no candidate."""
    online = {d.device_id: d for d in devices}
    load = {d.device_id: base_load.get(d.device_id, 0) for d in devices}
    plan: dict[str, str] = {}
    cursor = 0
    problems: list[Violation] = []
    score: Callable[[DeviceInfo], float]
    if strategy == "load_balance":
        # base_load already counts running stars (they are unfinished and assigned) and
        # attempts outside registered orions; normalising by capacity is what sets this
        # strategy apart from capability_match.
        def score(d: DeviceInfo) -> float:
            return load[d.device_id] / d.capacity
    else:
        def score(d: DeviceInfo) -> float:
            return load[d.device_id]
    for task in tasks:
        preferred = preferences.get(task.task_id)
        if preferred in online and is_eligible(task, online[preferred]):
            chosen: DeviceInfo | None = online[preferred]
        elif strategy == "round_robin":
            chosen = None
            n = len(devices)
            for step in range(n):
                candidate = devices[(cursor + step) % n]
                if is_eligible(task, candidate):
                    chosen = candidate
                    cursor = (cursor + step + 1) % n
                    break
        else:
            candidates = [d for d in devices if is_eligible(task, d)]
            chosen = min(candidates, key=score) if candidates else None  # min keeps first on ties
        if chosen is None:
            problems.append(Violation(
                f"tasks[{task.task_id}]",
                f"No eligible device for task '{task.task_id}' (needs {describe_needs(task)}); "
                f"online devices: " + ", ".join(
                    f"{d.device_id} ({d.os or 'unknown'}: {sorted(d.capabilities)})"
                    for d in devices), "NO_ELIGIBLE_DEVICE"))
            continue
        plan[task.task_id] = chosen.device_id
        load[chosen.device_id] += 1
    if problems:
        raise InvalidArgumentError("; ".join(v.description for v in problems),
                                   "NO_ELIGIBLE_DEVICE", problems)
    return plan
