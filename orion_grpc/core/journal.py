"""Journal: the engine's changes, group-committed to a ``Store`` by a writer thread.

Hooks in the model (a star's status change, an orion's start or end, a lease, an event) only
note WHAT changed — a dict assignment — and return; no I/O on the scheduler's path. Between
two loop steps the notes are turned into records, as one ``Batch``, and handed to the writer
thread: at the end of the current step when someone waits for durability (an RPC answer, a
device's result ack), else after at most ``linger`` seconds — a batch then holds several
steps, which saves commits (and thread wake-ups) when nothing needs to be acknowledged. The
writer commits EVERY batch queued since its last commit in one transaction (group commit: one
fsync for many changes, however fast they come), then tells the loop which batch is durable.

Two guarantees follow:

- **A loop step is atomic on disk.** Everything a step changed — a star's completion, the
  stars it made ready or cancelled, its lease's end and the event that says so — lands in one
  batch, and a batch is committed whole or not at all. A restart never sees half a step.
- **Acknowledge after commit.** ``await journal.barrier()`` returns once everything noted
  so far is durable; RPC answers and device result acks wait for it, so nothing
  acknowledged is ever lost.

If a write fails (disk full, I/O error) the journal is *broken*: barriers raise
``UnavailableError`` (STORE_UNAVAILABLE) from then on, so nothing more is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UnavailableError
from .store import Batch, JsonDict, Store
from .task_star import json_safe

if TYPE_CHECKING:
    from .device_manager import Lease
    from .task_orion import TaskOrion
    from .task_star import TaskStar

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- records
def star_spec(task: TaskStar, position: int = 0) -> JsonDict:
    """A star's definition (what does not change while it runs); ``position`` keeps the
    orion's order of stars."""
    return {
        "task_id": task._task_id, "position": position, "name": task.name, "description": task._description,
        "tips": task._tips, "device_type": task._device_type.value if task._device_type
        else None, "priority": task._priority.value,  # type: ignore[union-attr]
        "timeout": task._timeout, "retry_count": task._retry_count,
        "task_data": json_safe(task._task_data),
        "expected_output_type": task._expected_output_type,
        "required_capabilities": list(task._required_capabilities),
        "created_at": task._created_at,
    }


def star_state(task: TaskStar) -> JsonDict:
    """A star's runtime state (what its transitions change): small and cheap to build."""
    error = task._error
    return {
        "status": task._status.value, "result": task._result,
        "error": str(error) if error is not None else None,
        "error_reason": getattr(error, "reason", None) if error is not None else None,
        "current_retry": task._current_retry, "target_device_id": task._target_device_id,
        "execution_start_time": task._execution_start_time,
        "execution_end_time": task._execution_end_time, "updated_at": task._updated_at,
    }


def orion_record(orion: TaskOrion, extras: JsonDict) -> JsonDict:
    """An orion without its stars: identity, lines, lifecycle, plus the journal's extras (the
    run's parameters, the registry metadata, the API's structural version)."""
    start, end = orion._execution_start_time, orion._execution_end_time
    return {
        "orion_id": orion._orion_id, "name": orion._name,
        "cancelled": orion._cancel_requested,
        "dependencies": {lid: line.to_dict() for lid, line in orion._dependencies.items()},
        "metadata": json_safe(orion._metadata),
        "created_at": orion._created_at.isoformat(), "updated_at": orion.updated_at.isoformat(),
        "execution_start_time": start.isoformat() if start else None,
        "execution_end_time": end.isoformat() if end else None,
        **extras,
    }


def lease_record(lease: Lease) -> JsonDict:
    return {"lease_id": lease.lease_id, "device_id": lease.device_id, "task_id": lease.task_id,
            "orion_id": lease.orion_id, "attempt": lease.attempt, "timeout": lease.timeout,
            "started_at": lease.started_at, "deadline": lease.deadline,
            "trace_context": dict(lease.trace_context)}


@dataclass
class JournalStats:
    """What the writer did (bench and tests read it)."""

    commits: int = 0  # transactions
    batches: int = 0  # loop steps' batches committed
    records: int = 0
    max_batches_per_commit: int = 0
    max_records_per_commit: int = 0
    commit_seconds: float = 0.0  # total time spent in Store.write


# ---------------------------------------------------------------------- the journal
class Journal:
    """Notes changes on the event loop; a writer thread group-commits them to ``store``."""

    def __init__(self, store: Store, *, linger: float = 0.005) -> None:
        """:param linger: the longest a change waits for its hand-off when nobody waits for
        it to be durable (0: a batch per loop step)."""
        self.store = store
        self.linger = linger
        self.stats = JournalStats()
        self.failure: BaseException | None = None
        self.sealed = False  # shutting down: nothing more is noted (see seal)
        self._extras: dict[str, JsonDict] = {}  # orion_id -> extra fields of its record
        self._known: dict[str, TaskOrion] = {}  # orions saved whole (by identity)
        # Notes of the current step.
        self._full: dict[str, TaskOrion] = {}
        self._rows: dict[str, TaskOrion] = {}
        self._stars: dict[TaskStar, TaskOrion] = {}
        self._batch = Batch()
        self._scheduled = False  # a hand-off is due (timer or call_soon)
        self._timer: asyncio.TimerHandle | None = None  # the lingering hand-off, if any
        # Writer hand-off.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cond = threading.Condition()
        self._queue: list[Batch] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._handed = 0  # number of the last batch handed to the writer
        self._durable = 0  # number of the last batch committed
        # (batch number, future to resolve or callback to call once it is committed)
        self._waiters: deque[tuple[int, asyncio.Future[None] | Callable[[], None]]] = deque()
        self._listeners: list[Callable[[int], None]] = []
        # Called on the loop with each commit's duration in seconds (metrics, if any).
        self.commit_timer: Callable[[float], None] | None = None

    # ------------------------------------------------------------------ notes (hot path)
    def star_changed(self, orion: TaskOrion, task: TaskStar) -> None:
        self._stars[task] = orion
        if not self._scheduled:
            self._schedule()

    def orion_changed(self, orion: TaskOrion) -> None:
        """The orion's own fields changed (started, ended, cancelled, metadata)."""
        self._rows[orion._orion_id] = orion
        if not self._scheduled:
            self._schedule()

    def orion_saved(self, orion: TaskOrion) -> None:
        """Write the whole orion (registered, or its structure was edited)."""
        if self.sealed:
            return
        self._known[orion._orion_id] = orion
        orion._journal = self
        self._full[orion._orion_id] = orion
        if not self._scheduled:
            self._schedule()

    def orion_deleted(self, orion_id: str) -> None:
        orion = self._known.pop(orion_id, None)
        if orion is not None and orion._journal is self:
            orion._journal = None
        self._extras.pop(orion_id, None)
        self._full.pop(orion_id, None)
        self._rows.pop(orion_id, None)
        self._batch.deleted_orions.append(orion_id)
        self._schedule()

    def orion_registered(self, orion: TaskOrion, registry_metadata: JsonDict) -> None:
        """The manager registered ``orion``: save it whole unless it is already saved."""
        metadata = json_safe(registry_metadata)
        extras = self._extras.setdefault(orion._orion_id, {})
        if self._known.get(orion._orion_id) is orion:
            if extras.get("registry_metadata") != metadata:
                extras["registry_metadata"] = metadata
                self.orion_changed(orion)
            return
        extras["registry_metadata"] = metadata
        self.orion_saved(orion)

    def set_extras(self, orion: TaskOrion, **values: Any) -> None:
        """Extra fields stored with the orion (``run`` parameters, ``version``)."""
        self._extras.setdefault(orion._orion_id, {}).update(values)
        if orion._journal is self:
            self.orion_changed(orion)

    def extras(self, orion_id: str) -> JsonDict:
        return dict(self._extras.get(orion_id, {}))

    def run_started(self, orion: TaskOrion, strategy: str | None, metadata: JsonDict,
                    synchronize: bool) -> None:
        """Remember how ``orion`` runs, so a restart can resume it (once per run)."""
        if "run" not in self._extras.get(orion._orion_id, {}):
            self.set_extras(orion, run={"strategy": strategy, "metadata": json_safe(metadata),
                                        "synchronize": synchronize})

    def adopt(self, orion: TaskOrion, extras: JsonDict) -> None:
        """Track an orion loaded from the store (already saved: nothing is written)."""
        self._known[orion._orion_id] = orion
        self._extras[orion._orion_id] = dict(extras)
        orion._journal = self

    def lease_started(self, lease: Lease) -> None:
        self._batch.leases[lease.lease_id] = lease_record(lease)
        if not self._scheduled:
            self._schedule()

    def lease_ended(self, lease_id: str) -> None:
        leases = self._batch.leases
        if leases.get(lease_id) is not None:
            del leases[lease_id]  # started in this same batch: the store never sees it
        else:
            leases[lease_id] = None
        if not self._scheduled:
            self._schedule()

    def event(self, sequence: int, data: bytes) -> None:
        if self.sealed:
            return
        self._batch.events.append((sequence, data))
        if not self._scheduled:
            self._schedule()

    def trim_events(self, before: int) -> None:
        self._batch.events_before = max(self._batch.events_before, before)
        self._schedule()

    def request(self, method: str, request_id: str, record: JsonDict) -> None:
        if self.sealed:
            return
        self._batch.requests.append((method, request_id, record))
        self._schedule()

    def trim_requests(self, before: float) -> None:
        self._batch.requests_before = max(self._batch.requests_before, before)
        self._schedule()

    def set_meta(self, key: str, value: str) -> None:
        self._batch.meta[key] = value
        self._schedule()

    # ------------------------------------------------------------------ hand-off
    def _schedule(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        if self.linger > 0:
            self._timer = loop.call_later(self.linger, self._handoff)
        else:  # a batch per loop step
            loop.call_soon(self._handoff)

    def _hurry(self) -> None:
        """Someone waits for durability: hand off at the end of this loop step."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
            assert self._loop is not None
            self._loop.call_soon(self._handoff)

    def _handoff(self) -> None:
        """Between loop steps: turn the notes into one batch and give it to the writer."""
        if not self._scheduled:
            return  # already handed off (seal / close) before this callback ran
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, Batch()
        full, self._full = self._full, {}
        rows, self._rows = self._rows, {}
        stars, self._stars = self._stars, {}
        extras = self._extras
        for orion_id, orion in full.items():
            if orion._journal is not self:
                continue  # deleted in the same step
            batch.orions[orion_id] = orion_record(orion, extras.get(orion_id, {}))
            batch.star_sets[orion_id] = [(t._task_id, star_spec(t, i), star_state(t))
                                         for i, t in enumerate(orion._tasks.values())]
        for orion_id, orion in rows.items():
            if orion_id not in full and orion._journal is self:
                batch.orions[orion_id] = orion_record(orion, extras.get(orion_id, {}))
        append = batch.stars.append
        for task, orion in stars.items():
            if orion._journal is self and orion._orion_id not in full:
                append((orion._orion_id, task._task_id, star_state(task)))
        self._handed += 1
        batch.number = self._handed
        if self._thread is None:
            self._start_writer()
        with self._cond:
            self._queue.append(batch)
            self._cond.notify()

    def _start_writer(self) -> None:
        self._thread = threading.Thread(target=self._write_loop, name="orion-journal",
                                        daemon=True)
        self._thread.start()

    def _write_loop(self) -> None:
        """The writer thread: commit everything queued since the last commit, in one go."""
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                batches, self._queue = self._queue, []
            if not batches:
                return  # closing, and nothing left
            elapsed = 0.0
            if self.failure is not None:
                error: BaseException | None = self.failure
            else:
                started = time.perf_counter()
                try:
                    self.store.write(batches)
                    error = None
                except BaseException as exc:  # reported to the loop (barriers raise)
                    error = exc
                elapsed = time.perf_counter() - started
                if error is None:
                    stats = self.stats
                    stats.commits += 1
                    stats.batches += len(batches)
                    records = sum(b.size() for b in batches)
                    stats.records += records
                    stats.commit_seconds += elapsed
                    stats.max_batches_per_commit = max(stats.max_batches_per_commit,
                                                       len(batches))
                    stats.max_records_per_commit = max(stats.max_records_per_commit, records)
            loop = self._loop
            if loop is None:
                continue
            try:
                loop.call_soon_threadsafe(self._committed, batches[-1].number, error, elapsed)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _committed(self, number: int, error: BaseException | None,
                   elapsed: float = 0.0) -> None:
        if error is not None:
            if self.failure is None:
                self.failure = error
                logger.error("the store failed to write (%s); nothing more will be "
                             "acknowledged", error, exc_info=error)
            while self._waiters:
                waiter = self._waiters.popleft()[1]
                if isinstance(waiter, asyncio.Future) and not waiter.done():
                    waiter.set_exception(self._unavailable())
            return  # callbacks are dropped: what they would acknowledge is not durable
        self._durable = number
        if self.commit_timer is not None:
            self.commit_timer(elapsed)
        waiters = self._waiters
        while waiters and waiters[0][0] <= number:
            waiter = waiters.popleft()[1]
            if not isinstance(waiter, asyncio.Future):
                try:
                    waiter()
                except Exception:
                    logger.exception("journal commit callback %r failed", waiter)
            elif not waiter.done():
                waiter.set_result(None)
        for listener in self._listeners:
            listener(number)

    def _unavailable(self) -> UnavailableError:
        return UnavailableError(f"the store ({self.store.describe()}) failed to write: "
                                f"{self.failure}; changes can no longer be persisted",
                                "STORE_UNAVAILABLE")

    # ------------------------------------------------------------------ durability
    @property
    def durable_batch(self) -> int:
        return self._durable

    def pending_batch(self) -> int:
        """Number of the batch that will hold what is noted now."""
        return self._handed + 1 if self._scheduled else self._handed

    def add_commit_listener(self, listener: Callable[[int], None]) -> None:
        """``listener(batch_number)`` after each commit (on the loop)."""
        self._listeners.append(listener)

    def call_when_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on the loop) once everything noted so far is durable — never,
        if the store fails first. Cheaper than awaiting ``barrier`` from a task of its own."""
        target = self.pending_batch()
        if self._durable >= target and self.failure is None:
            callback()
        elif self.failure is None and not self.sealed:
            self._waiters.append((target, callback))
            self._hurry()

    async def barrier(self) -> None:
        """Return once everything noted so far is durable (raises if the store broke, or
        if the journal was sealed: what happens during a shutdown is not kept)."""
        if self.failure is not None:
            raise self._unavailable()
        if self.sealed:
            raise UnavailableError("the server is shutting down; retry the request when it "
                                   "is back (it resumes where it stopped)", "SERVER_SHUTTING_DOWN")
        target = self.pending_batch()
        if self._durable >= target:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        self._hurry()
        await fut

    def seal(self) -> None:
        """Stop noting changes (a graceful shutdown): what happened so far is committed, what
        the shutdown itself does — cancelling runs, failing the leases of devices told goodbye
        — is not, so a restart resumes the orions as they were."""
        if self.sealed:
            return
        if self._scheduled:
            self._handoff()
        self.sealed = True
        for orion in self._known.values():
            if orion._journal is self:
                orion._journal = None

    async def close(self) -> None:
        """Commit what is noted, stop the writer and close the store."""
        if self._scheduled:
            self._handoff()  # now, rather than in a later loop step
        if self.failure is None and self._thread is not None:
            target = self._handed
            if self._durable < target:
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append((target, fut))
                try:
                    await fut
                except UnavailableError:
                    pass
        with self._cond:
            self._closing = True
            self._cond.notify()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self.store.close()
