"""A device daemon killed (SIGKILL) mid-star: the server sees its connection die and loses it
at once, the star is retried on another device, and the daemon, restarted under the same id,
rejoins the fleet and gets work again."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from e2e_support import PLUGINS, SERVER_FLAGS, EventFeed
from fault_support import WORK, assert_each_star_completed_once, chain, running_fleet

from orion_grpc.api.convert import result_from_pb

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


async def test_a_daemon_killed_mid_star_the_star_moves_and_the_restarted_daemon_rejoins():
    async with running_fleet(*SERVER_FLAGS) as fleet:
        victim, _ = await asyncio.gather(*(
            fleet.daemon(name, *WORK, capabilities="kill", env=PLUGINS)
            for name in ("victim", "survivor")))
        async with fleet.client() as client:
            feed = EventFeed(client)
            await client.submit_orion(chain("kill", "job", seconds=1.0, retry_count=2,
                                            required_capabilities=["kill"]),
                                      device_assignments={"job": "victim"})
            # Progress from the victim proves the star is executing there; pull the plug.
            await feed.wait_for("TASK_PROGRESS", task_id="job", device_id="victim")
            victim.kill()
            lost = await feed.wait_for("DEVICE_DISCONNECTED", device_id="victim")
            retry = await feed.wait_for("TASK_RETRYING", task_id="job")
            done = await feed.wait_for("ORION_COMPLETED", orion_id="kill")
            assert await victim.exit_code() == -signal.SIGKILL

            # The same device id, a new process: a new session, and work again.
            await fleet.daemon("victim", *WORK, capabilities="kill", env=PLUGINS)
            again = await client.orchestrate_orion(
                chain("after", "job", seconds=0.05, required_capabilities=["kill"]),
                device_assignments={"job": "victim"})
            await feed.close()

    assert lost.device_id == "victim"
    assert retry.data["reason"] == "device_disconnection"
    assert retry.data["failed_device_id"] == "victim"
    assert [e.data["device_id"] for e in feed.of("TASK_STARTED", task_id="job",
                                                  orion_id="kill")] == ["victim", "survivor"]
    assert_each_star_completed_once(feed, "kill", ["job"])
    assert result_from_pb(done.orion.result)["results"]["job"]["device_id"] == "survivor"
    assert again["status"] == "completed"
    assert again["results"]["job"]["device_id"] == "victim"
    assert len(feed.of("DEVICE_CONNECTED", device_id="victim")) == 2
