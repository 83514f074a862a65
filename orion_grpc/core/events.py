"""Event types, event payloads and the in-process event bus.

The bus isolates observers from the scheduler: ``publish`` only appends to each matching
observer's queue and returns; every observer has its own worker task that delivers events in
order. A slow observer delays only itself; one that raises is logged and keeps receiving.
Different observers are served concurrently. (The reference awaited every observer inline.)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

logger = logging.getLogger(__name__)


class EventType(Enum):
    __hash__ = object.__hash__  # members are singletons; identity hashing is C-fast

    TASK_STARTED = "task_started"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    TASK_CANCELLED = "task_cancelled"  # Orion addition
    TASK_RETRYING = "task_retrying"  # Orion addition: an attempt failed, another will follow
    TASK_PROGRESS = "task_progress"  # Orion addition: a device reported progress of an attempt
    ORION_STARTED = "orion_started"
    ORION_COMPLETED = "orion_completed"
    ORION_FAILED = "orion_failed"
    ORION_MODIFIED = "orion_modified"
    ORION_CANCELLED = "orion_cancelled"  # Orion addition
    AGENT_RESPONSE = "agent_response"
    AGENT_ACTION = "agent_action"
    DEVICE_CONNECTED = "device_connected"
    DEVICE_DISCONNECTED = "device_disconnected"
    DEVICE_STATUS_CHANGED = "device_status_changed"


@dataclass
class Event:
    event_type: EventType
    source_id: str
    timestamp: float
    data: dict[str, Any]


@dataclass
class TaskEvent(Event):
    task_id: str
    status: str = ""
    result: Any = None
    error: Any = None


@dataclass
class OrionEvent(Event):
    orion_id: str
    orion_state: str
    new_ready_tasks: list[str] | None = None


@dataclass
class AgentEvent(Event):
    agent_name: str
    agent_type: str
    output_type: str
    output_data: dict[str, Any]


@dataclass
class DeviceEvent(Event):
    """A device transition. ``all_devices`` (every device's ``to_dict``, reference API) is
    built when first read, from ``all_devices_source``: building it on every transition
    cost O(devices) per star on a busy fleet, and hardly anyone reads it."""

    device_id: str
    device_status: str
    device_info: dict[str, Any]
    all_devices_source: Callable[[], dict[str, dict[str, Any]]] | None = field(
        default=None, repr=False, compare=False)
    _all_devices: dict[str, dict[str, Any]] | None = field(default=None, init=False,
                                                             repr=False, compare=False)

    @property
    def all_devices(self) -> dict[str, dict[str, Any]]:
        if self._all_devices is None:
            source = self.all_devices_source
            self._all_devices = source() if source is not None else {}
        return self._all_devices


class IEventObserver(ABC):
    """Receives events from an EventBus it subscribed to."""

    @abstractmethod
    async def on_event(self, event: Event) -> None: ...


# The running loop or None, without raising (asyncio's own C helper: offer() asks on every
# event).
_running_loop = asyncio._get_running_loop


class EventRecorder(IEventObserver):
    """Keeps every event it receives (in delivery order) and lets callers await one.

    Handy for tests, scripts and tools that must wait for "the star finished" without polling.
    """

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

    async def wait_for(self, predicate: Callable[[Event], bool] | EventType,
                       timeout: float = 5.0) -> Event:
        """The first event (already seen or still to come) matching ``predicate``."""
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


class _Subscription:
    __slots__ = ("observer", "types", "queue", "wake", "worker", "published", "processed",
                 "waiters", "dropped", "max_queue")

    def __init__(self, observer: IEventObserver, types: frozenset[EventType] | None,
                 max_queue: int) -> None:
        self.observer = observer
        self.types = types
        self.queue: deque[Event] = deque()
        self.wake: asyncio.Event | None = None
        self.worker: asyncio.Task[None] | None = None
        self.published = 0
        self.processed = 0
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.dropped = 0
        self.max_queue = max_queue

    def offer(self, event: Event) -> None:
        if len(self.queue) >= self.max_queue:
            # Bounded memory: drop the oldest undelivered event and say so.
            self.queue.popleft()
            self.processed += 1
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                logger.warning("observer %r is too slow: %d events dropped",
                               self.observer, self.dropped)
        self.queue.append(event)
        self.published += 1
        worker = self.worker
        if worker is None or worker.done() or worker.get_loop() is not _running_loop():
            if not self._start():
                return  # no loop yet: the first publish from inside a loop starts the worker
        assert self.wake is not None
        self.wake.set()

    def _start(self) -> bool:
        """(Re)start the delivery worker on the running loop (tests run one loop each)."""
        loop = _running_loop()
        if loop is None:
            return False
        self.wake = asyncio.Event()
        self.worker = loop.create_task(self._run(), name=f"event-observer-{self.observer!r}")
        return True

    async def _run(self) -> None:
        assert self.wake is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                event = self.queue.popleft()
                try:
                    outcome = self.observer.on_event(event)
                    if inspect.isawaitable(outcome):
                        await outcome
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("observer %r failed on %s", self.observer, event.event_type)
                self.processed += 1
                self._release_waiters()

    def _release_waiters(self) -> None:
        if not self.waiters:
            return
        keep = []
        for target, fut in self.waiters:
            if self.processed >= target:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self.waiters = keep

    async def flush(self) -> None:
        if self.processed >= self.published:
            return
        worker = self.worker
        if worker is None or worker.done() or worker.get_loop() is not _running_loop():
            self._start()  # events queued before any loop ran: start delivery now
            assert self.wake is not None
            self.wake.set()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append((self.published, fut))
        await fut


class EventBus:
    """Publish/subscribe hub. ``subscribe(observer, event_types=None)`` = all events."""

    def __init__(self, max_queue_per_observer: int = 100_000) -> None:
        self._subs: dict[int, _Subscription] = {}
        self._by_type: dict[EventType, tuple[_Subscription, ...]] = {t: () for t in EventType}
        self._wanted: dict[EventType, bool] = dict.fromkeys(EventType, False)
        self._taps: tuple[Callable[[Event], object], ...] = ()
        self._max_queue = max_queue_per_observer

    def subscribe(self, observer: IEventObserver,
                  event_types: set[EventType] | frozenset[EventType] | None = None) -> None:
        key = id(observer)
        old = self._subs.get(key)
        types = frozenset(event_types) if event_types is not None else None
        if old is not None:
            # Re-subscribing widens the filter, as the reference's set union did.
            types = None if old.types is None or types is None else old.types | types
            old.types = types
        else:
            self._subs[key] = _Subscription(observer, types, self._max_queue)
        self._reindex()

    def unsubscribe(self, observer: IEventObserver) -> None:
        sub = self._subs.pop(id(observer), None)
        if sub is not None:
            if sub.worker is not None:
                sub.worker.cancel()
            for _, fut in sub.waiters:
                if not fut.done():
                    fut.set_result(None)
        self._reindex()

    def add_tap(self, tap: Callable[[Event], object]) -> None:
        """Call ``tap(event)`` synchronously inside every ``publish``, before any observer.

        For the one consumer that must see an event in the same loop step as the change it
        describes: the server's event log, which journals both together (core/journal.py).
        A tap must be fast and must not call back into the engine; if it raises, the error is
        logged and publishing goes on.
        """
        self._taps = (*self._taps, tap)
        self._reindex()

    def remove_tap(self, tap: Callable[[Event], object]) -> None:
        self._taps = tuple(t for t in self._taps if t is not tap)
        self._reindex()

    def _reindex(self) -> None:
        self._by_type = {
            t: tuple(s for s in self._subs.values() if s.types is None or t in s.types)
            for t in EventType
        }
        self._wanted = {t: bool(self._taps or self._by_type[t]) for t in EventType}

    def has_subscribers(self, event_type: EventType) -> bool:
        """Cheap check so hot paths can skip building events nobody will read."""
        return self._wanted[event_type]

    def is_subscribed(self, observer: IEventObserver) -> bool:
        return id(observer) in self._subs

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every interested observer; never blocks, never raises."""
        for tap in self._taps:
            try:
                tap(event)
            except Exception:
                logger.exception("event tap %r failed on %s", tap, event.event_type)
        for sub in self._by_type[event.event_type]:
            sub.offer(event)

    async def publish_event(self, event: Event) -> None:
        """Reference API (async); delivery is still asynchronous per observer."""
        self.publish(event)

    async def flush(self, observer: IEventObserver | None = None,
                    timeout: float | None = None) -> bool:
        """Wait until ``observer`` (or every observer) has handled all events published so far.

        Returns False on timeout. The orchestrator uses this so the synchronizer has seen a
        star's completion before the scheduler asks whether edits are pending.
        """
        subs = [self._subs[id(observer)]] if observer is not None and id(observer) in self._subs \
            else ([] if observer is not None else list(self._subs.values()))
        if not subs:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*(s.flush() for s in subs)), timeout)
            return True
        except TimeoutError:
            return False

    def dropped_events(self, observer: IEventObserver) -> int:
        sub = self._subs.get(id(observer))
        return sub.dropped if sub else 0

    async def close(self) -> None:
        """Stop every worker (pending events are discarded)."""
        workers = [s.worker for s in self._subs.values() if s.worker is not None]
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for s in self._subs.values():
            s.worker = None


_default_bus: EventBus | None = None


def get_event_bus() -> EventBus:
    """The process-wide default bus (reference API)."""
    global _default_bus
    if _default_bus is None:
        _default_bus = EventBus()
    return _default_bus


def now() -> float:
    return time.time()
