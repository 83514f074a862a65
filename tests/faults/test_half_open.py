"""Half-open faults: a device that stops talking without closing its stream — its process
stopped (SIGSTOP), or the network silently dropping everything (net_proxy.py blackhole). The
server's watchdog declares it lost after the lease TTL (not before), the star is retried on
another device, and when the device comes back its late result is fenced off. The same when
an executor blocks the daemon's event loop. A silence shorter than the lease TTL costs
nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import pytest
from e2e_support import PLUGINS, EventFeed
from fault_support import WORK, assert_each_star_completed_once, chain, running_fleet

from orion_grpc.api.convert import result_from_pb
from orion_grpc.core import TaskOrion, TaskStar

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

HEARTBEAT, LEASE_TTL = 0.2, 1.5
FLAGS = ("--heartbeat-interval", str(HEARTBEAT), "--lease-ttl", str(LEASE_TTL),
         "--retry-backoff-base", "0", "--device-grace-period", "0", "--grace", "2")


async def test_a_stopped_daemon_is_lost_after_the_lease_ttl_and_its_late_result_is_fenced():
    async with running_fleet(*FLAGS) as fleet:
        sleepy, _ = await asyncio.gather(*(
            fleet.daemon(name, *WORK, capabilities="half", env=PLUGINS)
            for name in ("sleepy", "awake")))
        async with fleet.client() as client:
            feed = EventFeed(client)
            await client.submit_orion(chain("stopped", "job", seconds=1.0, retry_count=2,
                                            required_capabilities=["half"]),
                                      device_assignments={"job": "sleepy"})
            first = await feed.wait_for("TASK_PROGRESS", task_id="job", device_id="sleepy")
            sleepy.signal(signal.SIGSTOP)  # its TCP connection stays up: the kernel still ACKs
            stopped_at = time.monotonic()

            lost = await feed.wait_for("DEVICE_DISCONNECTED", device_id="sleepy")
            silent_for = time.monotonic() - stopped_at
            retry = await feed.wait_for("TASK_RETRYING", task_id="job")
            completed = await feed.wait_for("TASK_COMPLETED", task_id="job")

            reconnects = sleepy.mark("stdout")
            sleepy.signal(signal.SIGCONT)
            goodbye = await sleepy.wait_for_line("server said goodbye")
            fenced = await sleepy.wait_for_line("not accepted (unknown_or_stale_lease)")
            await sleepy.connected(since=reconnects)  # back in the fleet
            done = await feed.wait_for("ORION_COMPLETED", orion_id="stopped")
            await feed.close()

    # The watchdog waited for the lease TTL (less the last heartbeat's head start).
    assert silent_for >= LEASE_TTL - HEARTBEAT, silent_for
    assert lost.device_id == "sleepy"
    assert retry.data["reason"] == "device_disconnection"
    assert retry.data["failed_device_id"] == "sleepy"
    assert completed.data["device_id"] == "awake"
    assert "(heartbeat_timeout)" in goodbye
    assert f"result for lease {first.data['lease_id']} not accepted" in fenced
    assert_each_star_completed_once(feed, "stopped", ["job"])
    assert result_from_pb(done.orion.result)["results"]["job"] == {
        "status": "ok", "star": "job", "attempt": 2, "device_id": "awake"}


async def test_a_blackholed_network_loses_the_device_after_the_lease_ttl_and_heals():
    async with running_fleet(*FLAGS) as fleet:
        link = await fleet.proxy()
        remote, _ = await asyncio.gather(
            fleet.daemon("remote", *WORK, capabilities="half", env=PLUGINS, target=link.target),
            fleet.daemon("local", *WORK, capabilities="half", env=PLUGINS))
        async with fleet.client() as client:
            feed = EventFeed(client)
            await client.submit_orion(chain("partition", "job", seconds=0.5, retry_count=2,
                                            required_capabilities=["half"]),
                                      device_assignments={"job": "remote"})
            first = await feed.wait_for("TASK_PROGRESS", task_id="job", device_id="remote")
            await link.command("blackhole")  # no FIN, no RST: both ends just hear nothing

            await feed.wait_for("DEVICE_DISCONNECTED", device_id="remote")
            retry = await feed.wait_for("TASK_RETRYING", task_id="job")
            completed = await feed.wait_for("TASK_COMPLETED", task_id="job")
            # Cut off, the device finished anyway and holds its result.
            await remote.wait_for_line("work: job attempt 1 finished")

            reconnects = remote.mark("stdout")
            await link.command("restore")  # what the server said meanwhile arrives now
            goodbye = await remote.wait_for_line("server said goodbye")
            fenced = await remote.wait_for_line("not accepted (unknown_or_stale_lease)")
            await remote.connected(since=reconnects)
            done = await feed.wait_for("ORION_COMPLETED", orion_id="partition")
            await feed.close()

    assert retry.data["reason"] == "device_disconnection"
    assert completed.data["device_id"] == "local"
    assert "(heartbeat_timeout)" in goodbye
    assert f"result for lease {first.data['lease_id']} not accepted" in fenced
    assert_each_star_completed_once(feed, "partition", ["job"])
    assert result_from_pb(done.orion.result)["results"]["job"]["device_id"] == "local"


async def test_a_silence_shorter_than_the_lease_ttl_costs_nothing():
    # A generous TTL (15 heartbeats) so a loaded machine cannot turn the blip into a loss.
    async with running_fleet("--heartbeat-interval", "0.2", "--lease-ttl", "3",
                             "--retry-backoff-base", "0", "--grace", "2") as fleet:
        link = await fleet.proxy()
        remote = await fleet.daemon("remote", *WORK, env=PLUGINS, target=link.target)
        async with fleet.client() as client:
            feed = EventFeed(client)
            await client.submit_orion(chain("blip", "job", seconds=0.8, retry_count=2),
                                      device_assignments={"job": "remote"})
            await feed.wait_for("TASK_PROGRESS", task_id="job", device_id="remote")
            await link.command("blackhole")
            # The partition lasts as long as the star's remaining work (under a second).
            await remote.wait_for_line("work: job attempt 1 finished")
            await link.command("restore")
            done = await feed.wait_for("ORION_COMPLETED", orion_id="blip")
            devices = await client.get_available_devices()
            await feed.close()

    # Same attempt, same session: the held-back heartbeats and result simply arrived late.
    assert result_from_pb(done.orion.result)["results"]["job"]["attempt"] == 1
    assert len(feed.of("TASK_STARTED", task_id="job")) == 1
    assert not feed.of("TASK_RETRYING") and not feed.of("DEVICE_DISCONNECTED")
    assert len(feed.of("DEVICE_CONNECTED", device_id="remote")) == 1
    assert [d["device_id"] for d in devices] == ["remote"]
    assert "reconnecting" not in remote.stderr()


async def test_a_daemon_whose_event_loop_is_blocked_is_lost_and_its_late_result_fenced():
    # The freeze executor blocks the daemon's event loop (a synchronous read, as a badly
    # written executor would): the process runs, its connection is up, yet it says nothing.
    frozen_flags = ("--plugin", "freeze=fault_executors:freeze")
    async with running_fleet(*FLAGS) as fleet:
        frozen, _ = await asyncio.gather(*(
            fleet.daemon(name, *frozen_flags, capabilities="fence", env=PLUGINS)
            for name in ("frozen", "other")))
        arrived: asyncio.Future[asyncio.StreamWriter] = \
            asyncio.get_running_loop().create_future()
        release = await asyncio.start_server(lambda _, writer: arrived.set_result(writer),
                                             "127.0.0.1", 0)
        port = release.sockets[0].getsockname()[1]
        orion = TaskOrion(orion_id="fence")
        orion.add_task(TaskStar("job", description="freeze", retry_count=2,
                                required_capabilities=["fence"],
                                task_data={"executor": "freeze",
                                           "release": f"127.0.0.1:{port}"}))
        async with fleet.client() as client, release:
            feed = EventFeed(client)
            await client.submit_orion(orion, device_assignments={"job": "frozen"})
            writer = await asyncio.wait_for(arrived, 15)  # mid-star, silent
            retry = await feed.wait_for("TASK_RETRYING", task_id="job")  # the server gives up
            completed = await feed.wait_for("TASK_COMPLETED", task_id="job")  # retried
            reconnects = frozen.mark("stdout")
            writer.write(b"x")  # the daemon wakes up and delivers its (stale) result
            await writer.drain()
            fenced = await frozen.wait_for_line("not accepted (unknown_or_stale_lease)")
            done = await feed.wait_for("ORION_COMPLETED", orion_id="fence")
            await frozen.connected(since=reconnects)  # and it is back in the fleet
            writer.close()
            await feed.close()
    assert retry.data["reason"] == "device_disconnection"
    assert completed.device_id == "other"
    assert fenced.split("result for lease ")[1].split()[0] == "frozen:1"
    assert_each_star_completed_once(feed, "fence", ["job"])
    assert result_from_pb(done.orion.result)["results"]["job"] == {
        "status": "ok", "attempt": 2, "device_id": "other"}
