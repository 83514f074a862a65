"""Device registry, device links and leases.

The engine reaches devices only through a ``DeviceLink`` (send an assignment, send a cancel).
The gRPC bidi stream is one implementation, ``FakeDevice`` another. Links report back by
calling ``complete_lease`` / ``device_lost`` on the manager.

A *lease* is one attempt of one star on one device. Results are accepted only for a live
lease held by the reporting device (fencing), so a late answer for a timed-out or reassigned
attempt can never finish a star twice. Each device runs at most ``capacity`` leases.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .enums import ONLINE_DEVICE_STATUSES, DeviceStatus, DeviceType, TaskStatus, parse_enum
from .errors import NotFoundError, UnavailableError
from .events import DeviceEvent, EventBus, EventType, get_event_bus
from .task_star import utcnow

if TYPE_CHECKING:
    from .journal import Journal

logger = logging.getLogger(__name__)

# Machine-readable failure reasons of an attempt.
REASON_TASK_ERROR = "task_error"
REASON_TIMEOUT = "timeout"
REASON_DEVICE_DISCONNECTION = "device_disconnection"
REASON_CANCELLED = "cancelled"
REASON_REJECTED = "rejected"


@dataclass
class DeviceInfo:
    """What the registry knows about a device (the reference calls it AgentProfile)."""

    device_id: str
    server_url: str = ""
    os: str | None = None
    capabilities: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    status: DeviceStatus = DeviceStatus.DISCONNECTED
    last_heartbeat: datetime | None = None
    connection_attempts: int = 0
    max_retries: int = 5
    current_task_id: str | None = None
    capacity: int = 1
    draining: bool = False
    running: dict[str, Lease] = field(default_factory=dict, repr=False)

    @property
    def device_type(self) -> DeviceType | None:
        return parse_enum(DeviceType, self.os)  # type: ignore[return-value]

    @property
    def is_online(self) -> bool:
        return self.status in ONLINE_DEVICE_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "status": self.status.value,
            "os": self.os,
            "device_type": self.device_type.value if self.device_type else self.os,
            "server_url": self.server_url,
            "capabilities": list(self.capabilities),
            "metadata": dict(self.metadata),
            "last_heartbeat": self.last_heartbeat.isoformat() if self.last_heartbeat else None,
            "connection_attempts": self.connection_attempts,
            "max_retries": self.max_retries,
            "current_task_id": self.current_task_id,
            "current_tasks": [lease.task_id for lease in self.running.values()],
            "capacity": self.capacity,
            "draining": self.draining,
        }


AgentProfile = DeviceInfo  # reference name


@dataclass
class LeaseOutcome:
    """How an attempt ended."""

    success: bool
    result: Any = None
    error: str | None = None
    reason: str | None = None  # None on success; REASON_* otherwise


class Lease:
    """One attempt of one star on one device."""

    __slots__ = ("lease_id", "device_id", "task_id", "orion_id", "attempt", "task_description",
                 "task_data", "timeout", "deadline", "trace_context", "on_done", "timer",
                 "started_at", "queue_wait", "__weakref__")

    def __init__(self, lease_id: str, device_id: str, task_id: str, orion_id: str | None,
                 attempt: int, task_description: str, task_data: dict[str, Any],
                 timeout: float | None, on_done: Callable[[Lease, LeaseOutcome], None],
                 trace_context: dict[str, str] | None) -> None:
        self.lease_id = lease_id
        self.device_id = device_id
        self.task_id = task_id
        self.orion_id = orion_id
        self.attempt = attempt
        self.task_description = task_description
        self.task_data = task_data
        self.timeout = timeout
        self.started_at = time.time()
        # Seconds the star waited, ready, in the scheduler's queue for this device (set by
        # the orchestrator; 0 for leases it did not queue, e.g. ExecuteSingleTask).
        self.queue_wait = 0.0
        self.deadline = self.started_at + timeout if timeout else None
        self.trace_context = trace_context or {}
        self.on_done = on_done
        self.timer: asyncio.TimerHandle | None = None


class DeviceLink(ABC):
    """Transport to one connected device. Methods must not block."""

    @abstractmethod
    def send_assignment(self, lease: Lease) -> None:
        """Deliver an attempt; the device answers through ``OrionDeviceManager.complete_lease``."""

    @abstractmethod
    def send_cancel(self, lease_id: str, reason: str) -> None:
        """Ask the device to stop an attempt (its result, if any, will be fenced off)."""

    def close(self, reason: str) -> None:
        """The manager dropped this link (superseded, unregistered or lost)."""


@dataclass
class ExecutionResult:
    """Result of one execution (reference API)."""

    task_id: str
    status: TaskStatus
    result: Any = None
    error: Exception | str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def execution_time(self) -> float | None:
        if self.start_time and self.end_time:
            return (self.end_time - self.start_time).total_seconds()
        return None

    @property
    def is_successful(self) -> bool:
        return self.status in (TaskStatus.COMPLETED, "completed", "success") and self.error is None


CapacityListener = Callable[[str], None]


class OrionDeviceManager:
    """Registry of devices, their links, and the leases running on them."""

    def __init__(self, task_name: str = "orion", heartbeat_interval: float = 30.0,
                 reconnect_delay: float = 5.0, event_bus: EventBus | None = None) -> None:
        self.task_name = task_name
        self.heartbeat_interval = heartbeat_interval
        self.reconnect_delay = reconnect_delay
        self.event_bus = event_bus or get_event_bus()
        self._devices: dict[str, DeviceInfo] = {}
        self._links: dict[str, DeviceLink] = {}
        self._leases: dict[str, Lease] = {}
        self._lease_ids = itertools.count(1)
        self._capacity_listeners: list[CapacityListener] = []
        # Lease ids are "<device>:<prefix><n>"; a server restarted on a store sets a prefix
        # of its own so no id of an earlier run is ever issued again (fencing relies on it).
        self.lease_prefix = ""
        self.journal: Journal | None = None  # set when a store persists the engine
        self._holds: dict[str, asyncio.TimerHandle] = {}  # offline devices keeping leases

    # ------------------------------------------------------------------ registration
    async def register_device(self, device_id: str, server_url: str = "", os: str | None = None,
                              capabilities: list[str] | None = None,
                              metadata: dict[str, Any] | None = None, auto_connect: bool = True,
                              *, capacity: int = 1, link: DeviceLink | None = None) -> bool:
        """Register (or re-register) a device; with ``link`` and auto_connect, connect it."""
        self.register(device_id, server_url, os, capabilities, metadata, capacity=capacity)
        if auto_connect and link is not None:
            return await self.connect_device(device_id, link=link)
        return True

    def register(self, device_id: str, server_url: str = "", os: str | None = None,
                 capabilities: list[str] | None = None, metadata: dict[str, Any] | None = None,
                 *, capacity: int = 1) -> DeviceInfo:
        if not device_id:
            raise ValueError("device_id must be a non-empty string")
        if capacity < 1:
            raise ValueError(f"Device {device_id}: capacity must be at least 1, got {capacity}")
        info = self._devices.get(device_id)
        if info is None:
            info = self._devices[device_id] = DeviceInfo(device_id)
        info.server_url = server_url
        info.os = os.value if isinstance(os, DeviceType) else os
        info.capabilities = list(capabilities or [])
        info.metadata = dict(metadata or {})
        info.capacity = capacity
        return info

    async def connect_device(self, device_id: str, is_reconnection: bool = False,
                             *, link: DeviceLink | None = None) -> bool:
        info = self._devices.get(device_id)
        if info is None:
            logger.error("Device %s not registered", device_id)
            return False
        link = link or self._links.get(device_id)
        if link is None:
            logger.error("Device %s has no link to connect through", device_id)
            return False
        self.attach_link(device_id, link, is_reconnection=is_reconnection)
        return True

    def attach_link(self, device_id: str, link: DeviceLink, *, is_reconnection: bool = False) -> None:
        """Bring a device online through ``link``; a newer link supersedes an older one."""
        info = self._require(device_id)
        old = self._links.get(device_id)
        if old is not None and old is not link:
            old.close("superseded by a new session")
        self._links[device_id] = link
        self._end_hold(device_id)
        if not is_reconnection:
            info.connection_attempts += 1
        info.last_heartbeat = utcnow()
        was_online = info.is_online
        info.status = DeviceStatus.BUSY if info.running else DeviceStatus.IDLE
        if not was_online:
            self._publish_device(EventType.DEVICE_CONNECTED, info)
        self._notify_capacity(device_id)

    def unregister_device(self, device_id: str) -> bool:
        if device_id not in self._devices:
            return False
        self.device_lost(device_id, "device unregistered")
        del self._devices[device_id]
        return True

    async def disconnect_device(self, device_id: str) -> None:
        self.device_lost(device_id, "disconnected by request")

    def device_lost(self, device_id: str, reason: str = "connection lost") -> None:
        """The device is gone: fail its attempts with ``device_disconnection``."""
        info = self._devices.get(device_id)
        if info is None:
            return
        was_online = self._go_offline(info, reason)
        for lease in list(info.running.values()):
            self._finish(lease, LeaseOutcome(
                False, error=f"Device {device_id} disconnected: {reason}",
                reason=REASON_DEVICE_DISCONNECTION))
        info.current_task_id = None
        if was_online:
            self._publish_device(EventType.DEVICE_DISCONNECTED, info)

    def hold_leases(self, device_id: str, grace: float, reason: str = "connection lost") -> None:
        """The device is offline but may come back: its attempts stay leased to it.

        Within ``grace`` seconds a new session of the device (``attach_link``) takes them
        up again — the device reports which it still runs and replays finished results; after
        that the device is lost (``device_lost``: its attempts fail with
        device_disconnection and the normal retry rules apply).
        """
        info = self._devices.get(device_id)
        if info is None:
            return
        was_online = self._go_offline(info, reason)
        if info.running:
            self._holds[device_id] = asyncio.get_running_loop().call_later(
                grace, self.device_lost, device_id,
                f"{reason}; it did not come back within {grace:g}s")
        if was_online:
            self._publish_device(EventType.DEVICE_DISCONNECTED, info)

    def _go_offline(self, info: DeviceInfo, reason: str) -> bool:
        """Close the device's link and mark it disconnected; True if it was online."""
        self._end_hold(info.device_id)
        link = self._links.pop(info.device_id, None)
        if link is not None:
            link.close(reason)
        was_online = info.is_online
        info.status = DeviceStatus.DISCONNECTED
        return was_online

    def is_holding(self, device_id: str) -> bool:
        """True while an offline device keeps its leases (see ``hold_leases``)."""
        return device_id in self._holds

    def _end_hold(self, device_id: str) -> None:
        timer = self._holds.pop(device_id, None)
        if timer is not None:
            timer.cancel()

    def heartbeat(self, device_id: str) -> None:
        info = self._devices.get(device_id)
        if info is not None:
            info.last_heartbeat = utcnow()

    def expire_silent_devices(self, max_silence: float) -> list[str]:
        """Mark online devices without a heartbeat for ``max_silence`` seconds as lost."""
        cutoff = time.time() - max_silence
        lost = [d.device_id for d in self._devices.values()
                if d.is_online and d.last_heartbeat is not None
                and d.last_heartbeat.timestamp() < cutoff]
        for device_id in lost:
            self.device_lost(device_id, f"no heartbeat for {max_silence:g}s")
        return lost

    def set_draining(self, device_id: str, draining: bool = True) -> None:
        """A draining device keeps its running attempts but gets no new ones."""
        self._require(device_id).draining = draining
        if not draining:
            self._notify_capacity(device_id)

    # ------------------------------------------------------------------ queries
    def _require(self, device_id: str) -> DeviceInfo:
        info = self._devices.get(device_id)
        if info is None:
            raise NotFoundError(f"Device {device_id} is not registered", "DEVICE_NOT_FOUND",
                                {"device_id": device_id})
        return info

    def get_device_info(self, device_id: str) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def get_all_devices(self, connected: bool = False) -> dict[str, DeviceInfo]:
        if connected:
            return {k: v for k, v in self._devices.items() if v.is_online}
        return dict(self._devices)

    def get_connected_devices(self) -> list[str]:
        """Ids of online devices (connected, idle or busy), in registration order."""
        return [k for k, v in self._devices.items() if v.is_online]

    def get_online_devices(self) -> list[DeviceInfo]:
        return [v for v in self._devices.values() if v.is_online]

    def get_device_capabilities(self, device_id: str) -> dict[str, Any]:
        info = self._devices.get(device_id)
        return {"capabilities": list(info.capabilities), "metadata": dict(info.metadata)} if info else {}

    def get_device_system_info(self, device_id: str) -> dict[str, Any] | None:
        info = self._devices.get(device_id)
        return info.metadata.get("system_info") if info else None

    def get_device_status(self, device_id: str) -> dict[str, Any]:
        info = self._devices.get(device_id)
        if info is None:
            return {"error": f"Device {device_id} not found"}
        return info.to_dict()

    def is_online(self, device_id: str) -> bool:
        info = self._devices.get(device_id)
        return info is not None and info.is_online

    def running_count(self, device_id: str) -> int:
        info = self._devices.get(device_id)
        return len(info.running) if info else 0

    def has_capacity(self, device_id: str) -> bool:
        info = self._devices.get(device_id)
        return (info is not None and info.is_online and not info.draining
                and len(info.running) < info.capacity)

    def get_lease(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    @property
    def lease_count(self) -> int:
        """Attempts running on devices right now (every orion, and single stars)."""
        return len(self._leases)

    # ------------------------------------------------------------------ capacity listeners
    def add_capacity_listener(self, listener: CapacityListener) -> None:
        self._capacity_listeners.append(listener)

    def remove_capacity_listener(self, listener: CapacityListener) -> None:
        try:
            self._capacity_listeners.remove(listener)
        except ValueError:
            pass

    def _notify_capacity(self, device_id: str) -> None:
        for listener in tuple(self._capacity_listeners):
            listener(device_id)

    # ------------------------------------------------------------------ leases
    def start_lease(self, device_id: str, task_id: str, task_description: str,
                    task_data: dict[str, Any], timeout: float | None,
                    on_done: Callable[[Lease, LeaseOutcome], None], *, orion_id: str | None = None,
                    attempt: int = 0, trace_context: dict[str, str] | None = None) -> Lease:
        """Send one attempt to a device that has a free slot."""
        info = self._devices.get(device_id)
        if info is None or not info.is_online:
            raise UnavailableError(f"Device {device_id} is not connected", "DEVICE_NOT_CONNECTED",
                                   {"device_id": device_id})
        if len(info.running) >= info.capacity or info.draining:
            raise UnavailableError(f"Device {device_id} has no free capacity", "DEVICE_AT_CAPACITY",
                                   {"device_id": device_id})
        lease = Lease(f"{device_id}:{self.lease_prefix}{next(self._lease_ids)}", device_id,
                      task_id, orion_id, attempt, task_description, task_data, timeout, on_done,
                      trace_context)
        self._leases[lease.lease_id] = lease
        if self.journal is not None and orion_id is not None:
            self.journal.lease_started(lease)
        info.running[lease.lease_id] = lease
        info.current_task_id = task_id
        if info.status is not DeviceStatus.BUSY:
            info.status = DeviceStatus.BUSY
            self._publish_device(EventType.DEVICE_STATUS_CHANGED, info)
        if timeout:
            lease.timer = asyncio.get_running_loop().call_later(timeout, self._expire, lease.lease_id)
        self._links[device_id].send_assignment(lease)
        return lease

    def complete_lease(self, device_id: str, lease_id: str, success: bool, result: Any = None,
                       error: str | None = None, reason: str | None = None) -> bool:
        """A device reports an attempt's end. False (and ignored) if the lease is not its own."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.device_id != device_id:
            logger.debug("fenced off result for lease %s from %s", lease_id, device_id)
            return False
        outcome = LeaseOutcome(True, result) if success else \
            LeaseOutcome(False, result, error or "task failed", reason or REASON_TASK_ERROR)
        self._finish(lease, outcome)
        return True

    def cancel_lease(self, lease_id: str, reason: str = "cancelled") -> bool:
        """Stop an attempt: tell the device, release the slot; ``on_done`` is NOT called."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return False
        link = self._links.get(lease.device_id)
        if link is not None:
            link.send_cancel(lease_id, reason)
        self._release(lease)
        return True

    def _expire(self, lease_id: str) -> None:
        lease = self._leases.get(lease_id)
        if lease is None:
            return
        link = self._links.get(lease.device_id)
        if link is not None:
            link.send_cancel(lease_id, REASON_TIMEOUT)
        self._finish(lease, LeaseOutcome(
            False, error=f"Task {lease.task_id} timed out after {lease.timeout:g}s on device "
                         f"{lease.device_id}", reason=REASON_TIMEOUT))

    def _release(self, lease: Lease) -> None:
        del self._leases[lease.lease_id]
        if self.journal is not None and lease.orion_id is not None:
            self.journal.lease_ended(lease.lease_id)
        if lease.timer is not None:
            lease.timer.cancel()
        info = self._devices.get(lease.device_id)
        if info is None:
            return
        info.running.pop(lease.lease_id, None)
        if not info.running:
            info.current_task_id = None
            if info.status is DeviceStatus.BUSY:
                info.status = DeviceStatus.IDLE
                self._publish_device(EventType.DEVICE_STATUS_CHANGED, info)
        self._notify_capacity(lease.device_id)

    def restore_lease(self, record: dict[str, Any], task_description: str,
                      task_data: dict[str, Any],
                      on_done: Callable[[Lease, LeaseOutcome], None]) -> Lease:
        """Re-create a lease from the store after a restart, held by its (offline) device.

        An unknown device is registered as a placeholder (offline, no capabilities) until it
        connects again. The lease's deadline still counts from its original start.
        """
        device_id = record["device_id"]
        info = self._devices.get(device_id) or self.register(device_id)
        lease = Lease(record["lease_id"], device_id, record["task_id"], record.get("orion_id"),
                      int(record.get("attempt", 0)), task_description, task_data,
                      record.get("timeout"), on_done, record.get("trace_context"))
        lease.started_at = float(record.get("started_at") or lease.started_at)
        lease.deadline = record.get("deadline")
        self._leases[lease.lease_id] = lease
        info.running[lease.lease_id] = lease
        if lease.deadline is not None:
            lease.timer = asyncio.get_running_loop().call_later(
                max(0.0, lease.deadline - time.time()), self._expire, lease.lease_id)
        return lease

    def leases_of(self, orion_id: str) -> dict[str, Lease]:
        """Live leases of an orion's stars, by task id."""
        return {lease.task_id: lease for lease in self._leases.values()
                if lease.orion_id == orion_id}

    def _finish(self, lease: Lease, outcome: LeaseOutcome) -> None:
        self._release(lease)
        lease.on_done(lease, outcome)

    # ------------------------------------------------------------------ reference helper
    async def assign_task_to_device(self, task_id: str, device_id: str, task_description: str,
                                    task_data: dict[str, Any], timeout: float = 1000
                                    ) -> ExecutionResult:
        """Run one task on one device and wait for it (queues while the device is full)."""
        info = self._devices.get(device_id)
        if info is None:
            raise ValueError(f"Device {device_id} is not registered")
        if not info.is_online:
            raise ValueError(f"Device {device_id} is not connected (status: {info.status.value})")
        loop = asyncio.get_running_loop()
        while not self.has_capacity(device_id):
            if not self.is_online(device_id):
                raise ValueError(f"Device {device_id} is not connected "
                                 f"(status: {info.status.value})")
            freed: asyncio.Future[None] = loop.create_future()

            def on_capacity(dev: str, fut: asyncio.Future[None] = freed) -> None:
                if not fut.done():
                    fut.set_result(None)
            self.add_capacity_listener(on_capacity)
            try:
                await freed
            finally:
                self.remove_capacity_listener(on_capacity)
        done: asyncio.Future[LeaseOutcome] = loop.create_future()
        start = utcnow()
        self.start_lease(device_id, task_id, task_description, task_data, timeout,
                         lambda _lease, outcome: done.done() or done.set_result(outcome))
        outcome = await done
        return ExecutionResult(
            task_id=task_id,
            status=TaskStatus.COMPLETED if outcome.success else TaskStatus.FAILED,
            result=outcome.result,
            error=None if outcome.success else outcome.error,
            metadata={"device_id": device_id, "reason": outcome.reason},
            start_time=start, end_time=utcnow())

    # ------------------------------------------------------------------ events
    def _publish_device(self, event_type: EventType, info: DeviceInfo) -> None:
        bus = self.event_bus
        if not bus.has_subscribers(event_type):
            return
        bus.publish(DeviceEvent(
            event_type=event_type, source_id=f"device_manager.{info.device_id}",
            timestamp=time.time(), data={"event_name": event_type.value,
                                         "device_count": len(self._devices)},
            device_id=info.device_id, device_status=info.status.value,
            device_info=info.to_dict(), all_devices_source=self._all_devices_dicts))

    def _all_devices_dicts(self) -> dict[str, dict[str, Any]]:
        """``DeviceEvent.all_devices``: every device's dict (none past 100 devices)."""
        if len(self._devices) > 100:
            return {}
        return {k: v.to_dict() for k, v in self._devices.items()}

    async def shutdown(self) -> None:
        for device_id in list(self._links):
            self.device_lost(device_id, "device manager shut down")
        for device_id in list(self._holds):
            self._end_hold(device_id)


ConstellationDeviceManager = OrionDeviceManager  # reference name
