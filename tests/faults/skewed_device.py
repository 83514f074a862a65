"""``python -m skewed_device ARGS``: ``orion device ARGS`` with its wall clock off by
``$FAULT_CLOCK_OFFSET`` seconds (e.g. 21600: six hours ahead), as on a machine whose clock was
never set. Only the wall clock moves — ``time.time``, ``time.time_ns`` and the protobuf
timestamps the daemon sends (``Timestamp.GetCurrentTime``); monotonic clocks are untouched,
as they are by a wrong wall clock."""

from __future__ import annotations

import os
import sys
import time

from google.protobuf.internal import well_known_types

OFFSET = float(os.environ.get("FAULT_CLOCK_OFFSET", "0"))
_time, _time_ns = time.time, time.time_ns


def skewed_time() -> float:
    return _time() + OFFSET


def skewed_time_ns() -> int:
    return _time_ns() + int(OFFSET * 1e9)


def skewed_get_current_time(self: well_known_types.Timestamp) -> None:
    self.FromNanoseconds(skewed_time_ns())


time.time = skewed_time
time.time_ns = skewed_time_ns
well_known_types.Timestamp.GetCurrentTime = skewed_get_current_time  # type: ignore[method-assign]

if __name__ == "__main__":
    from orion_grpc.device.cli import main

    sys.exit(main(sys.argv[1:]))
