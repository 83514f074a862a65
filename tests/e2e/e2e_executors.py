"""Executors the e2e tests plug into device daemons (``--plugin hold=e2e_executors:hold``)."""

from __future__ import annotations

import asyncio
import socket
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


async def freeze(assignment: Assignment) -> Any:
    """The first attempt freezes the whole daemon — a blocking read stops its event loop: no
    heartbeats, no messages — until the test writes a byte to ``task_data.release``
    (host:port), then returns a result, late. Later attempts answer at once."""
    if assignment.attempt == 1:
        host, port = str(assignment.task_data["release"]).rsplit(":", 1)
        with socket.create_connection((host, int(port))) as sock:
            sock.recv(1)  # blocking on purpose
    return {"status": "ok", "attempt": assignment.attempt, "device_id": assignment.device_id}


async def flaky(assignment: Assignment) -> Any:
    """Fails a star's first attempt when its ``task_data.flaky`` is set; answers otherwise."""
    if assignment.task_data.get("flaky") and assignment.attempt == 1:
        raise ExecutorError("first attempt fails")
    return {"status": "ok", "star": assignment.task_id}
