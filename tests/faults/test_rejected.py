"""A device refuses an assignment (here: a shell star on a daemon started without
--allow-shell): the attempt fails with reason ``rejected`` and the retry goes to another
eligible device, not back to the one that refused it."""

from __future__ import annotations

import asyncio
import sys

import pytest
from e2e_support import SERVER_FLAGS, EventFeed
from fault_support import assert_each_star_completed_once, running_fleet

from orion_grpc.api.convert import result_from_pb
from orion_grpc.core import TaskOrion, TaskStar

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


async def test_a_rejected_star_moves_to_a_device_that_can_run_it():
    async with running_fleet(*SERVER_FLAGS) as fleet:
        plain, _ = await asyncio.gather(fleet.daemon("plain"),
                                        fleet.daemon("shelly", "--allow-shell"))
        orion = TaskOrion(orion_id="refused")
        orion.add_task(TaskStar("hello", description="say hello", retry_count=1,
                                task_data={"executor": "shell", "command": "echo hello"}))
        async with fleet.client() as client:
            feed = EventFeed(client)
            await client.submit_orion(orion, device_assignments={"hello": "plain"})
            retry = await feed.wait_for("TASK_RETRYING", task_id="hello")
            done = await feed.wait_for("ORION_COMPLETED", orion_id="refused")
            await feed.close()

    assert retry.data["reason"] == "rejected" and retry.data["failed_device_id"] == "plain"
    assert "--allow-shell" in retry.data["error"]
    assert [e.data["device_id"] for e in feed.of("TASK_STARTED", task_id="hello")] == \
        ["plain", "shelly"]
    assert_each_star_completed_once(feed, "refused", ["hello"])
    assert result_from_pb(done.orion.result)["results"]["hello"]["stdout"] == "hello\n"
    assert "rejecting lease" in plain.stderr()
