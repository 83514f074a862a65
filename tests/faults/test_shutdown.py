"""The server stops (SIGTERM) for good — no store that a restart would resume from — while
its devices run stars: each device is told to cancel the work before the goodbye, so no
executor keeps running for a server that will never take its result. The daemons stay up,
waiting to reconnect. (A server with a store keeps them working instead, so the results can
be replayed after the restart: tests/faults/test_restart*.py.)"""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from e2e_support import PLUGINS, SERVER_FLAGS
from fault_support import running_fleet

from orion_grpc.core import TaskOrion, TaskStar

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

HOLD = ("--plugin", "hold=e2e_executors:hold")


def held(task_id: str, device: str) -> TaskStar:
    return TaskStar(task_id, description="hold on", target_device_id=device,
                    task_data={"executor": "hold"})


async def test_a_server_stopping_for_good_cancels_the_stars_running_on_its_devices():
    async with running_fleet(*SERVER_FLAGS) as fleet:  # the store is :memory:
        holder = await fleet.daemon("holder", "--capacity", "2", *HOLD, env=PLUGINS)
        orion = TaskOrion(orion_id="long")
        orion.add_task(held("job", "holder"))
        async with fleet.client() as client:
            await client.submit_orion(orion)
            single = asyncio.create_task(client.execute_single_task(held("solo", "holder")))
            await holder.wait_for_line("hold: job started")
            await holder.wait_for_line("hold: solo started")

            fleet.server.signal(signal.SIGTERM)
            await holder.wait_for_line("hold: job cancelled")  # in the executor itself
            await holder.wait_for_line("hold: solo cancelled")
            await holder.wait_for_line("server said goodbye (server_shutdown)")
            assert await fleet.server.exit_code() == 0
            await asyncio.gather(single, return_exceptions=True)  # the RPC ended with it

        log = holder.stderr()
        assert log.count("cancelled by the server (server_shutdown)") == 2
        # The cancels came before the goodbye, on the same stream.
        assert log.rindex("cancelled by the server") < log.index("server said goodbye")
        assert holder.proc.returncode is None  # the daemon lives on, reconnecting
