"""Helpers for the API tests (a module with a unique name: tests/ has no packages)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from orion_grpc.api.server import OrionServer
from orion_grpc.core import Event, EventType, FakeDevice, IEventObserver


async def fleet(server: OrionServer, *ids: str, **kw: Any) -> list[FakeDevice]:
    """Connect in-process FakeDevices to the server's engine. The device daemon is another
    package; these tests only need stars to finish."""
    kw.setdefault("handler", lambda lease: {"status": "ok", "task": lease.task_id, "n": 3})
    return [await FakeDevice(device_id, **kw).connect(server.engine.devices) for device_id in ids]


class EventWaiter(IEventObserver):
    """Subscribe BEFORE acting, then ``await waiter.wait(EventType.X, task_id=...)``."""

    def __init__(self, server: OrionServer) -> None:
        self.bus = server.engine.bus
        self.events: list[Event] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        self.bus.subscribe(self)

    async def on_event(self, event: Event) -> None:
        self.events.append(event)
        for predicate, fut in list(self._waiters):
            if not fut.done() and predicate(event):
                fut.set_result(event)

    async def wait(self, event_type: EventType, task_id: str | None = None,
                   timeout: float = 5.0) -> Event:
        def predicate(e: Event) -> bool:
            return e.event_type is event_type and (
                task_id is None or getattr(e, "task_id", None) == task_id)

        for event in self.events:
            if predicate(event):
                return event
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, fut))
        return await asyncio.wait_for(fut, timeout)
