"""TracerHooks: how a tracer watches orions run, without the engine knowing any tracer.

The engine imports neither gRPC nor OpenTelemetry. A tracer (``orion_grpc.observability``
has the OpenTelemetry one) implements this small protocol and is installed with
``TaskOrionOrchestrator.set_tracer_hooks(hooks)``. Without hooks (the default) the scheduler
skips every call with one ``is None`` test: no allocation per star.

Every method is called synchronously on the event loop, from the orion's run:

- ``on_orion_start`` once, as the run starts (in the context of whoever started it, so a
  tracer can parent the orion's span on the current span, e.g. the RPC that submitted it);
- ``on_dispatch`` per attempt of a star, just before the lease goes to the device; the dict it
  returns travels with the lease to the device (``Lease.trace_context``; W3C ``traceparent``);
- ``on_attempt_end`` when that attempt ends: success, failure, timeout, device lost, or
  ``reason="cancelled"`` when the orion is cancelled while it runs;
- ``on_orion_end`` once, as the run ends (also when it ends by an internal error), after
  every ``on_attempt_end``; a tracer should end whatever it still holds for the orion.

Hooks must be cheap and should not raise; the engine logs and ignores what they raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .device_manager import Lease, LeaseOutcome
    from .enums import OrionState
    from .task_orion import TaskOrion
    from .task_star import TaskStar


class TracerHooks(Protocol):
    """Callbacks of an orion's run (see the module docstring for when each is called)."""

    def on_orion_start(self, orion: TaskOrion) -> None: ...

    def on_dispatch(self, orion: TaskOrion, task: TaskStar, attempt: int) -> dict[str, str]:
        """``attempt`` is 0-based (``task.current_retry``); returns the lease's trace context."""
        ...

    def on_attempt_end(self, orion: TaskOrion, task: TaskStar, lease: Lease,
                       outcome: LeaseOutcome) -> None: ...

    def on_orion_end(self, orion: TaskOrion, state: OrionState) -> None: ...
