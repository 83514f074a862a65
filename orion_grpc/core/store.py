"""The persistence boundary: what the engine hands to a store and reads back after a restart.

A store engine implements ``Store``: ``write`` applies a list of ``Batch``es in ONE atomic
transaction (the journal's group commit, see ``journal.py``) and ``load`` returns everything
a restarted server needs. Records are plain JSON-able dicts (the model's own JSON forms);
events and request answers are opaque bytes the API layer encodes. ``MemoryStore`` keeps
them in dicts (tests, and a model for other engines); ``orion_grpc.store.sqlite`` is the
default engine. Stores never see domain objects, so they need no knowledge of the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Protocol

JsonDict = dict[str, Any]


@dataclass
class Batch:
    """Changes of one loop step (or a few), applied atomically and in this order."""

    number: int = 0  # set by the journal: batches are numbered 1, 2, … in commit order
    deleted_orions: list[str] = field(default_factory=list)
    orions: dict[str, JsonDict] = field(default_factory=dict)  # orion_id -> orion record
    # orion_id -> every star of it, (task_id, spec, state): replaces the orion's stars
    star_sets: dict[str, list[tuple[str, JsonDict, JsonDict]]] = field(default_factory=dict)
    stars: list[tuple[str, str, JsonDict]] = field(default_factory=list)  # (orion, task, state)
    leases: dict[str, JsonDict | None] = field(default_factory=dict)  # None: the lease ended
    events: list[tuple[int, bytes]] = field(default_factory=list)  # (sequence, encoded event)
    events_before: int = 0  # drop events with a smaller sequence (retention)
    requests: list[tuple[str, str, JsonDict]] = field(default_factory=list)  # method, id, rec
    requests_before: float = 0.0  # drop request records created before this (epoch seconds)
    meta: dict[str, str] = field(default_factory=dict)

    def size(self) -> int:
        """Records in the batch (for statistics)."""
        return (len(self.deleted_orions) + len(self.orions) + len(self.stars) + len(self.leases)
                + sum(len(s) for s in self.star_sets.values()) + len(self.events)
                + len(self.requests) + len(self.meta))


@dataclass
class StoredState:
    """What a store holds, as ``load`` returns it."""

    orions: dict[str, JsonDict] = field(default_factory=dict)
    stars: dict[str, dict[str, JsonDict]] = field(default_factory=dict)  # orion -> task -> rec
    leases: dict[str, JsonDict] = field(default_factory=dict)
    events: list[tuple[int, bytes]] = field(default_factory=list)  # the newest, oldest first
    requests: list[tuple[str, str, JsonDict]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)


class Store(Protocol):
    """A storage engine. ``write`` is called from the journal's writer thread only.

    ``durable``: what it holds outlives the process (a file), so a graceful shutdown leaves
    runs to be resumed rather than cancelling them (``OrionEngine.suspend``).
    """

    durable: bool

    def load(self, event_limit: int) -> StoredState:
        """Everything stored (only the newest ``event_limit`` events)."""
        ...

    def write(self, batches: Sequence[Batch]) -> None:
        """Apply ``batches`` in order, in one transaction, durably; raise if it failed (then
        nothing of them is applied)."""
        ...

    def close(self) -> None: ...

    def describe(self) -> str:
        """Where the data lives, for logs (a path, ``:memory:``)."""
        ...


def merge_star(spec: JsonDict, state: JsonDict) -> JsonDict:
    """A star's full record: its definition with its runtime state on top."""
    return {**spec, **state}


class MemoryStore:
    """A ``Store`` in dicts: survives a restart of the engine in the same process only.

    Behaves like a real engine (atomic multi-batch writes, ordering), so recovery can be
    tested without files; ``fail_writes`` makes the next writes raise (a broken disk).
    """

    durable = True  # outlives the engine (not the process): tests restart engines on it

    def __init__(self) -> None:
        self.state = StoredState()
        self.writes = 0  # transactions
        self.fail_writes = False
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "memory"

    def crash_copy(self) -> MemoryStore:
        """A new store holding exactly what is committed now: what a crash would leave."""
        with self._lock:
            copy = MemoryStore()
            copy.state = deepcopy(self.state)
            return copy

    def load(self, event_limit: int) -> StoredState:
        with self._lock:
            s = self.state
            return StoredState(
                {k: dict(v) for k, v in s.orions.items()},
                {k: dict(v) for k, v in s.stars.items()}, dict(s.leases),
                s.events[-event_limit:] if event_limit > 0 else [], list(s.requests),
                dict(s.meta))

    def write(self, batches: Sequence[Batch]) -> None:
        if self.fail_writes:
            raise OSError("MemoryStore: writes are failing (fail_writes)")
        with self._lock:
            s = self.state
            for b in batches:
                for orion_id in b.deleted_orions:
                    s.orions.pop(orion_id, None)
                    s.stars.pop(orion_id, None)
                s.orions.update(b.orions)
                for orion_id, stars in b.star_sets.items():
                    s.stars[orion_id] = {tid: merge_star(spec, st) for tid, spec, st in stars}
                for orion_id, task_id, st in b.stars:
                    record = s.stars.get(orion_id, {}).get(task_id)
                    if record is not None:
                        record.update(st)
                for lease_id, lease in b.leases.items():
                    if lease is None:
                        s.leases.pop(lease_id, None)
                    else:
                        s.leases[lease_id] = lease
                s.events.extend(b.events)
                if b.events_before:
                    s.events = [e for e in s.events if e[0] >= b.events_before]
                known = {(m, r): i for i, (m, r, _) in enumerate(s.requests)}
                for method, request_id, record in b.requests:
                    if (method, request_id) in known:
                        s.requests[known[(method, request_id)]] = (method, request_id, record)
                    else:
                        s.requests.append((method, request_id, record))
                if b.requests_before:
                    s.requests = [r for r in s.requests
                                  if r[2].get("created", 0.0) >= b.requests_before]
                s.meta.update(b.meta)
            self.writes += 1

    def close(self) -> None:
        pass
