"""Executors the fault tests plug into device daemons (``--plugin work=fault_executors:work``).

They say on stderr when an attempt starts and ends, so a test can wait for "the device has
finished the work" even while the device is cut off from the server."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from typing import Any

from orion_grpc.device import Assignment


def _say(assignment: Assignment, what: str) -> None:
    print(f"work: {assignment.task_id} attempt {assignment.attempt} {what} "
          f"(lease {assignment.lease_id})", file=sys.stderr, flush=True)


async def work(assignment: Assignment) -> Any:
    """Sleep ``task_data.seconds`` (reporting progress first), then return who did it."""
    _say(assignment, "started")
    assignment.report_progress(0.0, "working")
    try:
        await asyncio.sleep(float(assignment.task_data.get("seconds", 0.1)))
    except asyncio.CancelledError:
        _say(assignment, "cancelled")
        raise
    _say(assignment, "finished")
    return {"status": "ok", "star": assignment.task_id, "attempt": assignment.attempt,
            "device_id": assignment.device_id}


async def clock(assignment: Assignment) -> Any:
    """What the device's clock says: its wall time, and how far away the assignment's
    deadline is by that clock (a device whose clock is off must still see its real budget)."""
    now = time.time()
    return {"status": "ok", "device_time": now,
            "seconds_to_deadline": assignment.deadline.timestamp() - now
            if assignment.deadline is not None else None}


async def freeze(assignment: Assignment) -> Any:
    """The first attempt freezes the whole daemon — a blocking read stops its event loop: no
    heartbeats, no messages — until the test writes a byte to ``task_data.release``
    (host:port), then returns a result, late. Later attempts answer at once."""
    if assignment.attempt == 1:
        host, port = str(assignment.task_data["release"]).rsplit(":", 1)
        with socket.create_connection((host, int(port))) as sock:
            sock.recv(1)  # blocking on purpose
    return {"status": "ok", "attempt": assignment.attempt, "device_id": assignment.device_id}
