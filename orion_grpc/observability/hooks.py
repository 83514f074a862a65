"""One engine, several watchers: the orchestrator takes one ``TracerHooks``; ``chain_hooks``
makes one out of tracing's and metrics' (and returns None when there is none, so the engine
keeps skipping every hook call with one ``is None`` test)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.device_manager import Lease, LeaseOutcome
    from ..core.enums import OrionState
    from ..core.hooks import TracerHooks
    from ..core.task_orion import TaskOrion
    from ..core.task_star import TaskStar


class HookChain:
    """Calls every hook in order; a lease carries the trace context of the first hook that
    returns one (tracing's)."""

    def __init__(self, hooks: list[TracerHooks]) -> None:
        self.hooks = hooks

    def on_orion_start(self, orion: TaskOrion) -> None:
        for hook in self.hooks:
            hook.on_orion_start(orion)

    def on_dispatch(self, orion: TaskOrion, task: TaskStar, attempt: int) -> dict[str, str]:
        carried: dict[str, str] = {}
        for hook in self.hooks:
            context = hook.on_dispatch(orion, task, attempt)
            if context and not carried:
                carried = context
        return carried

    def on_attempt_end(self, orion: TaskOrion, task: TaskStar, lease: Lease,
                       outcome: LeaseOutcome) -> None:
        for hook in self.hooks:
            hook.on_attempt_end(orion, task, lease, outcome)

    def on_orion_end(self, orion: TaskOrion, state: OrionState) -> None:
        for hook in self.hooks:
            hook.on_orion_end(orion, state)


def chain_hooks(*hooks: TracerHooks | None) -> TracerHooks | None:
    present = [hook for hook in hooks if hook is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else HookChain(present)
