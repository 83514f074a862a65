"""Executors the e2e tests plug into device daemons (``--plugin hold=e2e_executors:hold``)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from orion_grpc.device import Assignment, ExecutorError


async def hold(assignment: Assignment) -> Any:
    """Run until cancelled, saying so on stderr: the test reads the daemon's stderr to see
    the cancellation arrive in the executor itself."""
    print(f"hold: {assignment.task_id} started", file=sys.stderr, flush=True)
    assignment.report_progress(0.0, "holding")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        print(f"hold: {assignment.task_id} cancelled", file=sys.stderr, flush=True)
        raise


async def flaky(assignment: Assignment) -> Any:
    """Fails a star's first attempt when its ``task_data.flaky`` is set; answers otherwise."""
    if assignment.task_data.get("flaky") and assignment.attempt == 1:
        raise ExecutorError("first attempt fails")
    return {"status": "ok", "star": assignment.task_id}


async def chatty(assignment: Assignment) -> Any:
    """``flaky``, logging a line while it works (the log line must name the star)."""
    logging.getLogger("e2e.chatty").info("working on %s", assignment.task_id)
    return await flaky(assignment)
