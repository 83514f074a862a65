"""What the servicers share: the engine, the event log, idempotency, runs and versions."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any

import grpc

from ..core import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    OrionEngine,
    TaskOrion,
    Violation,
    log_context,
)
from ..core.orchestrator import RunSuspendedError
from ..core.recovery import RecoveredRun
from .convert import result_from_orion
from .errors import ApiError
from .event_log import EventLog
from .limits import Limits
from .support import IdempotencyCache

logger = logging.getLogger(__name__)


class RunRegistry:
    """Orions this server runs: one background task each, owned by the server, not by the RPC
    that started it. OrchestrateOrion waits for the task; a client that goes away (deadline,
    Ctrl-C) leaves the orion running — CancelOrion stops it, a retry with the same request_id
    waits for the same run."""

    def __init__(self, engine: OrionEngine, keep_finished: int = 1000) -> None:
        self.engine = engine
        self.keep_finished = keep_finished
        self._tasks: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._finished: deque[str] = deque()
        self._reserved: set[str] = set()

    def exists(self, orion_id: str) -> bool:
        return (orion_id in self._reserved or orion_id in self._tasks
                or self.engine.orchestrator.is_running(orion_id)
                or self.engine.manager.get_orion(orion_id) is not None)

    async def start(self, orion: TaskOrion, assignments: Mapping[str, str], strategy: str | None,
                    metadata: Mapping[str, Any], synchronize: bool) -> None:
        """Assign devices and start running ``orion``; raises (changing nothing) if it cannot."""
        orion_id = orion.orion_id
        log_context.bind(orion_id=orion_id)  # the rest of this RPC's log lines are about it
        if self.exists(orion_id):
            raise AlreadyExistsError(
                f"Orion {orion_id} already exists; choose another orion_id (or leave it empty "
                "and the server assigns one)", "ORION_ALREADY_EXISTS", {"orion_id": orion_id})
        self._reserved.add(orion_id)
        try:
            await self._assign(orion, dict(assignments), strategy)
            engine = self.engine
            engine.manager.register_orion(orion, dict(metadata))  # visible before it starts
            if engine.journal is not None:  # accepted = persisted with how to run it
                engine.journal.run_started(orion, strategy, dict(metadata), synchronize)
            self._launch(orion_id, engine.orchestrator.run_prepared(
                orion, strategy, dict(metadata), synchronize=synchronize))
        finally:
            self._reserved.discard(orion_id)

    def resume(self, run: RecoveredRun, grace: float) -> None:
        """Continue a run restored from the store (``core.recovery``)."""
        self._launch(run.orion.orion_id, self.engine.orchestrator.resume_run(
            run.orion, run.strategy, run.metadata, synchronize=run.synchronize, grace=grace))

    def _launch(self, orion_id: str, body: Coroutine[Any, Any, dict[str, Any]]) -> None:
        task = asyncio.get_running_loop().create_task(body, name=f"orion-run-{orion_id}")
        self._tasks[orion_id] = task
        task.add_done_callback(lambda t, oid=orion_id: self._done(oid, t))  # type: ignore[misc]

    async def _assign(self, orion: TaskOrion, explicit: dict[str, str], strategy: str | None
                      ) -> None:
        """Explicit assignments win; the strategy places the stars that have no device (a
        star's own target_device_id is kept when that device is connected and eligible)."""
        unknown = sorted(t for t in explicit if orion.get_task(t) is None)
        if unknown:
            raise InvalidArgumentError(
                f"device_assignments names stars not in the orion: {unknown}", "UNKNOWN_TASK",
                [Violation(f"device_assignments[{t}]", "no such star in the orion",
                           "UNKNOWN_TASK") for t in unknown])
        if strategy:
            preferences = {t.task_id: t.target_device_id for t in orion.get_all_tasks()
                           if t.target_device_id}
            preferences.update(explicit)
            await self.engine.manager.assign_devices_automatically(orion, strategy, preferences)
        await self.engine.orchestrator.prepare_orion(orion, explicit or None, None)

    def _done(self, orion_id: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if not task.cancelled() and task.exception() is not None \
                and not isinstance(task.exception(), RunSuspendedError):
            logger.error("orion %s ended with an internal error", orion_id,
                         exc_info=task.exception(), extra={"orion_id": orion_id})
        self._finished.append(orion_id)
        while len(self._finished) > self.keep_finished:
            old = self._finished.popleft()
            stale = self._tasks.get(old)
            if stale is not None and stale.done():
                del self._tasks[old]

    async def wait(self, orion_id: str) -> dict[str, Any]:
        """The result of a run (waiting for it to end)."""
        task = self._tasks.get(orion_id)
        if task is None:
            orion = self.engine.manager.get_orion(orion_id)
            if orion is None:
                raise NotFoundError(f"Orion {orion_id} not found", "ORION_NOT_FOUND",
                                    {"orion_id": orion_id})
            return result_from_orion(orion)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                raise ApiError(grpc.StatusCode.ABORTED,
                               f"the run of orion {orion_id} was stopped before it ended "
                               "(server shutting down)", "RUN_ABORTED",
                               metadata={"orion_id": orion_id}) from None
            raise

    def running_ids(self) -> list[str]:
        return [oid for oid, task in self._tasks.items() if not task.done()]

    async def close(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ApiState:
    """Everything the servicers share (one per server)."""

    def __init__(self, engine: OrionEngine, events: EventLog,
                 idempotency: IdempotencyCache | None = None, limits: Limits | None = None
                 ) -> None:
        self.engine = engine
        self.events = events
        # not "or": an empty cache is falsy (it has a __len__)
        self.idempotency = idempotency if idempotency is not None else IdempotencyCache()
        self.limits = limits or Limits()
        self.runs = RunRegistry(engine)
        self._versions: dict[str, int] = {}
        journal = engine.journal
        if journal is not None:  # versions of orions restored from the store
            for orion in engine.manager._orions.values():
                version = journal.extras(orion.orion_id).get("version")
                if version:
                    self._versions[orion.orion_id] = int(version)

    def version(self, orion_id: str) -> int:
        """Structural version of an orion: 1 when first seen, +1 per accepted edit here."""
        return self._versions.setdefault(orion_id, 1)

    def bump_version(self, orion_id: str) -> int:
        self._versions[orion_id] = version = self.version(orion_id) + 1
        journal = self.engine.journal
        orion = self.find_orion(orion_id)
        if journal is not None and orion is not None:
            journal.set_extras(orion, version=version)  # and the orion is written again
            journal.orion_saved(orion)  # assignments changed too (not status changes)
        return version

    def find_orion(self, orion_id: str) -> TaskOrion | None:
        engine = self.engine
        return engine.orchestrator.get_running_orion(orion_id) or \
            engine.manager.get_orion(orion_id)

    def require_orion(self, orion_id: str, field: str = "orion_id") -> TaskOrion:
        if not orion_id:
            raise InvalidArgumentError(f"{field} is required", "MISSING_FIELD",
                                       [Violation(field, "must be a non-empty string",
                                                  "MISSING_FIELD")])
        orion = self.find_orion(orion_id)
        if orion is None:
            raise NotFoundError(f"Orion {orion_id} not found", "ORION_NOT_FOUND",
                                {"orion_id": orion_id})
        return orion


def require(value: str, field: str) -> str:
    if not value:
        raise InvalidArgumentError(f"{field} is required", "MISSING_FIELD",
                                   [Violation(field, "must be a non-empty string",
                                              "MISSING_FIELD")])
    return value
