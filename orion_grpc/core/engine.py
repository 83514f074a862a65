"""OrionEngine: one object holding a wired-up engine (what a server process hosts)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .device_manager import OrionDeviceManager
from .events import EventBus
from .journal import Journal
from .manager import OrionManager
from .orchestrator import TaskOrionOrchestrator
from .store import Store
from .synchronizer import OrionModificationSynchronizer


@dataclass(frozen=True)
class EngineConfig:
    """Engine tuning; the server builds it from flags / environment."""

    max_concurrent_tasks: int | None = None
    retry_backoff_base: float = 0.5
    retry_backoff_max: float = 30.0
    device_grace_period: float = 10.0
    modification_timeout: float = 600.0
    heartbeat_interval: float = 10.0


class OrionEngine:
    """Event bus + device manager + orion manager + orchestrator + synchronizer, wired.

    With a ``store`` every accepted change is journaled to it (``journal.py``) and
    ``core.recovery.restore`` brings a restarted engine back from it; without one (the
    default) nothing is persisted and nothing costs anything.
    """

    def __init__(self, config: EngineConfig | None = None, *, store: Store | None = None) -> None:
        self.config = config or EngineConfig()
        self.bus = EventBus()
        self.devices = OrionDeviceManager(heartbeat_interval=self.config.heartbeat_interval,
                                          event_bus=self.bus)
        self.manager = OrionManager(self.devices)
        self.journal = Journal(store) if store is not None else None
        self.devices.journal = self.manager.journal = self.journal
        self.orchestrator = TaskOrionOrchestrator(
            self.devices, event_bus=self.bus, orion_manager=self.manager,
            max_concurrent_tasks=self.config.max_concurrent_tasks,
            retry_backoff_base=self.config.retry_backoff_base,
            retry_backoff_max=self.config.retry_backoff_max,
            device_grace_period=self.config.device_grace_period)
        self.synchronizer = OrionModificationSynchronizer(self.orchestrator)
        self.synchronizer.set_modification_timeout(self.config.modification_timeout)

    def suspend(self) -> list[asyncio.Event]:
        """First step of a graceful shutdown with a store: persist nothing from now on
        (``Journal.seal``) and stop every run where it is, cancelling nothing — devices keep
        working, and a restart on the store resumes every orion. Returns the runs' ``finished``
        events. Without a store, or with one that dies with the process (SQLite ``:memory:``),
        nothing: there is no restart to resume from, and ``close`` cancels the runs."""
        if self.journal is None or not self.journal.store.durable:
            return []
        self.journal.seal()
        self.devices.journal = self.manager.journal = None
        return self.orchestrator.suspend_runs()

    async def close(self) -> None:
        if self.journal is not None:
            for finished in self.suspend():
                await finished.wait()
        for orion_id in list(self.orchestrator._runs):
            await self.orchestrator.cancel_orion(orion_id)
        await self.devices.shutdown()
        await self.bus.close()
        if self.journal is not None:
            await self.journal.close()
