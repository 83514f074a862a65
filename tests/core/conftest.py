"""Shared fixtures for the in-process engine tests.

- ``bus``: a fresh EventBus per test (its observer workers are stopped at teardown).
- ``dm``: an OrionDeviceManager on that bus.
- ``fleet(dm, *ids, **kw)``: connect one FakeDevice per id (same keyword options for all).
- ``orchestrator``: a TaskOrionOrchestrator without retry backoff or device grace period.
- ``Recorder`` / ``recorder``: an observer that keeps every event and can await one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from orion_grpc.core import (
    EventBus,
    EventType,
    FakeDevice,
    OrionDeviceManager,
    TaskOrionOrchestrator,
)
from orion_grpc.core.events import EventRecorder


class Recorder(EventRecorder):
    """The engine's EventRecorder plus a shortcut the orchestrator tests use a lot."""

    def task_ids(self, event_type: EventType) -> list[str]:
        return [e.task_id for e in self.events  # type: ignore[attr-defined]
                if e.event_type is event_type]


async def fleet(dm: OrionDeviceManager, *ids: str, **kw: Any) -> list[FakeDevice]:
    """Connect a FakeDevice for each id to ``dm``; returns them in order."""
    return [await FakeDevice(device_id, **kw).connect(dm) for device_id in ids]


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    event_bus = EventBus()
    yield event_bus
    await event_bus.close()


@pytest.fixture
def dm(bus: EventBus) -> OrionDeviceManager:
    return OrionDeviceManager(event_bus=bus)


@pytest.fixture
def orchestrator(dm: OrionDeviceManager, bus: EventBus) -> TaskOrionOrchestrator:
    return TaskOrionOrchestrator(dm, event_bus=bus, retry_backoff_base=0.0,
                                 device_grace_period=0.0)


@pytest.fixture
def recorder(bus: EventBus) -> Recorder:
    rec = Recorder()
    bus.subscribe(rec)
    return rec
