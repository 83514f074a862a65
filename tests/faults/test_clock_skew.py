"""Devices whose wall clocks are hours off (skewed_device.py): nothing breaks, because the
server measures leases, deadlines and liveness with its own monotonic clock and converts
nothing the device's clock says into a decision. The device, for its part, sees each
assignment's deadline in its own clock."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from e2e_support import PLUGINS, EventFeed
from fault_support import running_fleet

from orion_grpc.api.convert import result_from_pb
from orion_grpc.core import TaskOrion, TaskStar

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

SIX_HOURS = 6 * 3600.0
HEARTBEAT, LEASE_TTL = 0.2, 1.5
FLAGS = ("--heartbeat-interval", str(HEARTBEAT), "--lease-ttl", str(LEASE_TTL),
         "--retry-backoff-base", "0", "--device-grace-period", "0", "--grace", "2")
EXECUTORS = ("--plugin", "clock=fault_executors:clock", "--plugin", "work=fault_executors:work",
             "--plugin", "hold=e2e_executors:hold")


def stars_for(device: str) -> list[TaskStar]:
    return [
        # What the device's clock says, and how far the deadline is by it.
        TaskStar(f"clock-{device}", description="read the clock", timeout=30,
                 target_device_id=device, task_data={"executor": "clock"}),
        # Longer than the lease TTL: only heartbeats keep the device (and the star) alive.
        TaskStar(f"long-{device}", description="work past the lease TTL", timeout=60,
                 target_device_id=device,
                 task_data={"executor": "work", "seconds": 2 * LEASE_TTL}),
        # Never answers: the server must expire it one second after sending it, not hours.
        TaskStar(f"late-{device}", description="hold on", timeout=1,
                 target_device_id=device, task_data={"executor": "hold"}),
    ]


async def test_devices_with_clocks_hours_off_run_orions_like_any_other():
    async with running_fleet(*FLAGS) as fleet:
        await asyncio.gather(*(
            fleet.daemon(name, *EXECUTORS, "--capacity", "3", module="skewed_device",
                         env={**PLUGINS, "FAULT_CLOCK_OFFSET": str(offset)})
            for name, offset in (("ahead", SIX_HOURS), ("behind", -SIX_HOURS))))
        orion = TaskOrion(orion_id="skewed")
        for device in ("ahead", "behind"):
            for star in stars_for(device):
                orion.add_task(star)
        async with fleet.client() as client:
            feed = EventFeed(client)
            await client.submit_orion(orion)
            done = await feed.wait_for("ORION_FAILED", orion_id="skewed", timeout=30)
            devices = {d["device_id"]: d for d in await client.get_available_devices()}
            await feed.close()
        server_log = fleet.server.stderr()
    now = time.time()

    result = result_from_pb(done.orion.result)
    assert result["status"] == "partially_failed"  # the two "late" stars, as designed
    for device, offset in (("ahead", SIX_HOURS), ("behind", -SIX_HOURS)):
        clock = result["results"][f"clock-{device}"]
        # The device's clock really is off ...
        assert abs(clock["device_time"] - (now + offset)) < 300, clock
        # ... yet the deadline it was given is 30 s away by that clock, not 6 h. The device
        # converts it with its skew estimate, which is good to a round trip, not to the
        # millisecond: allow a little either side.
        assert 0 < clock["seconds_to_deadline"] <= 31, clock
        assert result["results"][f"long-{device}"]["device_id"] == device
        # The server expired the held star after about a second of ITS clock.
        started = feed.of("TASK_STARTED", task_id=f"late-{device}")[0]
        failed = feed.of("TASK_FAILED", task_id=f"late-{device}")[0]
        waited = failed.timestamp.ToNanoseconds() / 1e9 - started.timestamp.ToNanoseconds() / 1e9
        assert 1.0 <= waited < 15, waited
        assert "timed out" in failed.task.error
        # The server noticed the skew and reports it, and did nothing with it.
        skew = devices[device]["metadata"]["clock_skew_seconds"]
        assert abs(skew - offset) < 300, skew
        assert f"device {device}: its clock is" in server_log
    assert not feed.of("DEVICE_DISCONNECTED") and not feed.of("TASK_RETRYING")
