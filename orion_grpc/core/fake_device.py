"""An in-process device for tests, benchmarks and the demo.

It speaks the same DeviceLink contract as a real device stream: it receives assignments,
answers through ``OrionDeviceManager.complete_lease`` after a configurable latency, and can
fail, hang or drop off the fleet on demand.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .device_manager import REASON_REJECTED, REASON_TASK_ERROR, DeviceLink, Lease, OrionDeviceManager

Handler = Callable[[Lease], Any]


@dataclass
class Received:
    task_id: str
    attempt: int
    lease_id: str


class FakeDevice(DeviceLink):
    """A configurable fake device.

    - ``latency``: seconds per attempt (float) or ``fn(lease) -> seconds``; 0 answers on the
      next loop iteration.
    - ``handler(lease) -> result``: computes the result; raising fails the attempt.
    - ``fail_task_ids``: these stars always fail here; ``fail_attempts``: {task_id: n} fails
      the first n attempts; ``failure_rate`` with ``seed``: random failures.
    - ``hang_task_ids``: never answered (for timeout tests).
    - ``reject_task_ids``: refused at once (reason ``rejected``), as a daemon refuses an
      assignment it cannot run.
    - ``disconnect_after``: drop off the fleet after receiving that many assignments.
    """

    def __init__(self, device_id: str, device_type: str = "linux",
                 capabilities: list[str] | None = None, capacity: int = 1,
                 latency: float | Callable[[Lease], float] = 0.0, handler: Handler | None = None,
                 fail_task_ids: set[str] | None = None, fail_attempts: dict[str, int] | None = None,
                 failure_rate: float = 0.0, seed: int = 0, hang_task_ids: set[str] | None = None,
                 disconnect_after: int | None = None, metadata: dict[str, Any] | None = None,
                 record: bool = True, reject_task_ids: set[str] | None = None) -> None:
        self.device_id = device_id
        self.device_type = device_type
        self.capabilities = list(capabilities or [])
        self.capacity = capacity
        self.latency = latency
        self.handler = handler
        self.fail_task_ids = set(fail_task_ids or ())
        self.fail_attempts = dict(fail_attempts or {})
        self.failure_rate = failure_rate
        self.rng = random.Random(seed)
        self.hang_task_ids = set(hang_task_ids or ())
        self.reject_task_ids = set(reject_task_ids or ())
        self.disconnect_after = disconnect_after
        self.metadata = dict(metadata or {"system_info": {"platform": device_type,
                                                          "hostname": f"fake-{device_id}"}})
        self.record = record
        self.received: list[Received] = []
        self.cancelled: list[tuple[str, str]] = []
        self.assignment_count = 0
        self.running = 0
        self.max_running = 0
        self.closed_reason: str | None = None
        self._manager: OrionDeviceManager | None = None
        self._live: set[str] = set()
        # Leases to answer at the next loop turn (latency 0): one callback for all of them,
        # in the order they came, not a loop handle (and its context copy) per assignment.
        self._due: list[Lease] = []

    async def connect(self, manager: OrionDeviceManager) -> FakeDevice:
        """Register with ``manager`` and come online."""
        self._manager = manager
        self.closed_reason = None
        await manager.register_device(self.device_id, f"fake://{self.device_id}",
                                      self.device_type, self.capabilities, self.metadata,
                                      capacity=self.capacity, link=self)
        return self

    def disconnect(self, reason: str = "fake device disconnected") -> None:
        """Simulate losing the connection."""
        if self._manager is not None:
            self._manager.device_lost(self.device_id, reason)

    # ------------------------------------------------------------------ DeviceLink
    def send_assignment(self, lease: Lease) -> None:
        self.assignment_count += 1
        if self.record:
            self.received.append(Received(lease.task_id, lease.attempt, lease.lease_id))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self._live.add(lease.lease_id)
        loop = asyncio.get_running_loop()
        if self.disconnect_after is not None and self.assignment_count >= self.disconnect_after:
            loop.call_soon(self.disconnect)
            return
        if lease.task_id in self.hang_task_ids:
            return
        if lease.task_id in self.reject_task_ids:
            loop.call_soon(self._reject, lease)
            return
        delay = self.latency(lease) if callable(self.latency) else self.latency
        if delay > 0:
            loop.call_later(delay, self._answer, lease)
        else:
            if not self._due:
                loop.call_soon(self._answer_due)
            self._due.append(lease)

    def send_cancel(self, lease_id: str, reason: str) -> None:
        self.cancelled.append((lease_id, reason))
        if lease_id in self._live:
            self._live.discard(lease_id)
            self.running -= 1

    def close(self, reason: str) -> None:
        self.closed_reason = reason
        self.running -= len(self._live)
        self._live.clear()

    # ------------------------------------------------------------------ behaviour
    def _reject(self, lease: Lease) -> None:
        if lease.lease_id not in self._live or self._manager is None:
            return
        self._live.discard(lease.lease_id)
        self.running -= 1
        self._manager.complete_lease(self.device_id, lease.lease_id, False, None,
                                     f"device {self.device_id} rejected the assignment",
                                     REASON_REJECTED)

    def _answer_due(self) -> None:
        due, self._due = self._due, []
        for lease in due:
            try:
                self._answer(lease)
            except Exception as exc:  # as if each answer were its own callback: report it
                asyncio.get_running_loop().call_exception_handler({   # and answer the rest
                    "message": f"FakeDevice {self.device_id} failed to answer {lease.lease_id}",
                    "exception": exc})

    def _answer(self, lease: Lease) -> None:
        if lease.lease_id not in self._live or self._manager is None:
            return  # cancelled or disconnected meanwhile
        self._live.discard(lease.lease_id)
        self.running -= 1
        success, result, error = True, None, None
        try:
            if lease.task_id in self.fail_task_ids:
                raise RuntimeError(f"{lease.task_id} fails on {self.device_id}")
            remaining = self.fail_attempts.get(lease.task_id, 0)
            if remaining > 0:
                self.fail_attempts[lease.task_id] = remaining - 1
                raise RuntimeError(f"{lease.task_id} attempt {lease.attempt} failed on purpose")
            if self.failure_rate and self.rng.random() < self.failure_rate:
                raise RuntimeError(f"random failure of {lease.task_id}")
            result = self.handler(lease) if self.handler else {
                "device_id": self.device_id, "task_id": lease.task_id, "status": "ok"}
        except Exception as exc:
            success, error = False, str(exc)
        self._manager.complete_lease(self.device_id, lease.lease_id, success, result, error,
                                     None if success else REASON_TASK_ERROR)
