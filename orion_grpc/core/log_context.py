"""Which orion, star and device the code running now works for, for its log lines.

Context variables, so asyncio tasks inherit them from the task that created them: the
orchestrator binds the orion for an orion's run, the DeviceService the device for a device's
session, the device daemon all three while it executes an assignment.
``orion_grpc.observability.logs`` writes them on every log line (with the trace id). The
engine only sets them (a few times per run, never per event); a log call can also pass them
explicitly: ``logger.info(..., extra={"star_id": ...})``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token

ORION_ID: ContextVar[str | None] = ContextVar("orion_id", default=None)
STAR_ID: ContextVar[str | None] = ContextVar("star_id", default=None)
DEVICE_ID: ContextVar[str | None] = ContextVar("device_id", default=None)
VARIABLES = {"orion_id": ORION_ID, "star_id": STAR_ID, "device_id": DEVICE_ID}


def bind(**ids: str | None) -> list[tuple[ContextVar[str | None], Token[str | None]]]:
    """Set ``orion_id`` / ``star_id`` / ``device_id`` (those given and not None) for the
    current context; returns the tokens ``unbind`` takes. In a task of its own there is no
    need to unbind: the task's context goes with it."""
    tokens = []
    for name, value in ids.items():
        if value is not None:
            var = VARIABLES[name]
            tokens.append((var, var.set(value)))
    return tokens


def unbind(tokens: list[tuple[ContextVar[str | None], Token[str | None]]]) -> None:
    for var, token in reversed(tokens):
        var.reset(token)


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """``with log_context(orion_id=..., star_id=...):`` — bound inside, restored after."""
    tokens = bind(**ids)
    try:
        yield
    finally:
        unbind(tokens)


def current() -> dict[str, str]:
    """The ids bound now (only those that are set)."""
    return {name: value for name, var in VARIABLES.items() if (value := var.get()) is not None}
