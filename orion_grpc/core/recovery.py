"""Bring a restarted engine back from its store.

``restore(engine, stored, hold=…)`` rebuilds every stored orion with its stars' states,
re-creates the leases that were running, keeps them leased to their devices — offline until
they reconnect, for at most ``hold`` seconds — and returns the runs to resume. The caller
resumes them (``TaskOrionOrchestrator.run_prepared(..., resume_grace=hold)``) after wiring
the rest of the server, so the first events they publish are journaled like any other.

What a device finds when it reconnects is decided by the device link as usual: leases it
still runs continue, results it kept while the server was down are accepted once (fencing by
lease id), leases it no longer knows fail with device_disconnection and are retried by the
normal rules — as are those of devices that do not come back within ``hold``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .device_manager import Lease, LeaseOutcome
from .enums import TERMINAL_STATUSES, TaskStatus
from .store import JsonDict, StoredState
from .task_orion import TaskOrion

if TYPE_CHECKING:
    from .engine import OrionEngine

logger = logging.getLogger(__name__)

EXTRA_FIELDS = ("run", "registry_metadata", "version")


@dataclass
class RecoveredRun:
    """An orion whose run had not ended when the server stopped."""

    orion: TaskOrion
    strategy: str | None
    metadata: dict[str, Any]
    synchronize: bool


def orion_from_records(record: JsonDict, stars: dict[str, JsonDict]) -> TaskOrion:
    """A stored orion (its record and its stars' records) as a live ``TaskOrion``."""
    data = {k: v for k, v in record.items() if k not in EXTRA_FIELDS}
    data["tasks"] = sorted(stars.values(), key=lambda s: s.get("position", 0))
    if record.get("cancelled"):
        data["state"] = "cancelled"
    return TaskOrion.from_dict(data)


def _orphan(lease: Lease, outcome: LeaseOutcome) -> None:
    """``on_done`` of a restored lease until its run adopts it (never runs in practice)."""
    logger.warning("lease %s of star %s ended before its run resumed: %s", lease.lease_id,
                   lease.task_id, outcome.error)


def restore(engine: OrionEngine, stored: StoredState, *, hold: float) -> list[RecoveredRun]:
    """Load ``stored`` into ``engine`` (fresh, with a journal); returns the runs to resume.

    Also counts the boot and gives a new store its event epoch (``stored.meta["epoch"]``).
    """
    journal = engine.journal
    if journal is None:
        raise ValueError("restore needs an engine with a store")
    dm = engine.devices
    # Each start is a new "boot" of the store, with lease ids of its own: a device may still
    # hold a lease of an earlier run (even one never committed), and fencing relies on no id
    # ever being issued twice. The caller commits this (barrier) before serving.
    boot = int(stored.meta.get("boot", "0")) + 1
    journal.set_meta("boot", str(boot))
    if boot > 1:
        dm.lease_prefix = f"r{boot}."
    if "epoch" not in stored.meta:  # names this store's event history in resume tokens
        stored.meta["epoch"] = uuid.uuid4().hex[:12]
        journal.set_meta("epoch", stored.meta["epoch"])
    runs: list[RecoveredRun] = []
    orions: dict[str, TaskOrion] = {}
    for orion_id, record in stored.orions.items():
        try:
            orion = orion_from_records(record, stored.stars.get(orion_id, {}))
        except Exception:
            logger.exception("orion %s could not be restored from the store; skipped", orion_id)
            continue
        journal.adopt(orion, {k: record[k] for k in EXTRA_FIELDS if k in record})
        engine.manager.register_orion(orion, record.get("registry_metadata") or {})
        orions[orion_id] = orion
        run = record.get("run")
        if run is not None and orion.execution_end_time is None and not orion._cancel_requested:
            runs.append(RecoveredRun(orion, run.get("strategy"), dict(run.get("metadata") or {}),
                                     bool(run.get("synchronize", True))))
    holders: dict[str, int] = {}
    for lease_id, record in stored.leases.items():
        owner = orions.get(record.get("orion_id") or "")
        task = owner.get_task(record["task_id"]) if owner is not None else None
        if task is None or task.status is not TaskStatus.RUNNING:
            journal.lease_ended(lease_id)  # stale: its star moved on in the same commit
            continue
        dm.restore_lease(record, task.to_request_string(), task._task_data, _orphan)
        holders[record["device_id"]] = holders.get(record["device_id"], 0) + 1
    # Stars waiting for a device keep waiting for it (rather than failing at once because no
    # device is connected yet): register the devices they name, offline, until they return.
    for run in runs:
        for task in run.orion._tasks.values():
            device_id = task._target_device_id
            if device_id and task._status not in TERMINAL_STATUSES \
                    and dm.get_device_info(device_id) is None:
                dm.register(device_id)
    for device_id in holders:
        dm.hold_leases(device_id, hold, "the server restarted")
    logger.info("restored %d orions (%d to resume, %d leases on %d devices) from %s",
                len(orions), len(runs), sum(holders.values()), len(holders),
                journal.store.describe())
    return runs
