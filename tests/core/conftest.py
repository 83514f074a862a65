"""Shared fixtures for the in-process engine tests.

- ``bus``: a fresh EventBus per test (its observer workers are stopped at teardown).
- ``dm``: an OrionDeviceManager on that bus.
- ``fleet(dm, *ids, **kw)``: connect one FakeDevice per id (same keyword options for all).
- ``orchestrator``: a TaskOrionOrchestrator without retry backoff or device grace period.
- ``Recorder`` / ``recorder``: an observer that keeps every event and can await one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orion_grpc.core import (
    Event,
    EventBus,
    EventType,
    FakeDevice,
    IEventObserver,
    OrionDeviceManager,
    TaskOrionOrchestrator,
)


class Recorder(IEventObserver):
    """Collects events in delivery order (which is publish order) and lets tests await one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []

    async def on_event(self, event: Event) -> None:
        self.events.append(event)
        for predicate, fut in list(self._waiters):
            if not fut.done() and predicate(event):
                fut.set_result(event)

    def of_type(self, *types: EventType) -> list[Event]:
        return [e for e in self.events if e.event_type in types]

    def task_ids(self, event_type: EventType) -> list[str]:
        return [e.task_id for e in self.events  # type: ignore[attr-defined]
                if e.event_type is event_type]

    async def wait_for(self, predicate: Callable[[Event], bool] | EventType,
                       timeout: float = 5.0) -> Event:
        """The first recorded event matching ``predicate`` (an EventType or a callable)."""
        if isinstance(predicate, EventType):
            wanted = predicate
            predicate = lambda e: e.event_type is wanted
        for event in self.events:
            if predicate(event):
                return event
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove(entry)


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
