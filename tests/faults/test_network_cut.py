"""The network between a device daemon and the server breaks mid-star (net_proxy.py sits
between them) and comes back: the device reconnects with backoff, its stale result is fenced,
and every star of the orion completes exactly once, as the event stream shows."""

from __future__ import annotations

import sys

import pytest
from e2e_support import PLUGINS, EventFeed
from fault_support import WORK, assert_each_star_completed_once, chain, running_fleet

from orion_grpc.api.convert import result_from_pb

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

# Lost after 1.5 s of silence; a star whose device is offline waits up to 20 s for it.
FLAGS = ("--heartbeat-interval", "0.2", "--lease-ttl", "1.5", "--retry-backoff-base", "0",
         "--device-grace-period", "20", "--grace", "2")


async def test_a_cut_mid_star_loses_the_device_it_reconnects_and_every_star_completes_once():
    async with running_fleet(*FLAGS) as fleet:
        link = await fleet.proxy()
        edge = await fleet.daemon("edge", *WORK, capabilities="edge", env=PLUGINS,
                                  target=link.target)
        async with fleet.client() as client:
            feed = EventFeed(client)
            await client.submit_orion(chain("cut", "a", "b", "c", seconds=0.5, retry_count=2,
                                            required_capabilities=["edge"]),
                                      assignment_strategy="capability_match")
            first = await feed.wait_for("TASK_PROGRESS", task_id="b", device_id="edge")
            reconnects = edge.mark("stdout")
            await link.command("cut")  # mid-star: both ends see the connection reset

            # The server loses the device at once (a closed stream is not silence) and the
            # star waits for it; the device, cut off, finishes the work and keeps the result.
            lost = await feed.wait_for("DEVICE_DISCONNECTED", device_id="edge")
            retry = await feed.wait_for("TASK_RETRYING", task_id="b")
            await edge.wait_for_line("work: b attempt 1 finished")
            await edge.wait_for_line("(attempt 2)")  # its reconnects fail, with backoff
            await link.command("restore")

            await edge.connected(since=reconnects)
            fenced = await edge.wait_for_line("not accepted (unknown_or_stale_lease)")
            done = await feed.wait_for("ORION_COMPLETED", orion_id="cut")
            await feed.close()

    assert lost.device_id == "edge"
    assert retry.data["reason"] == "device_disconnection"
    first_lease = first.data["lease_id"]
    assert f"result for lease {first_lease} not accepted" in fenced
    assert_each_star_completed_once(feed, "cut", "abc")
    starts = [(e.task_id, e.data["lease_id"]) for e in feed.of("TASK_STARTED", orion_id="cut")]
    assert [t for t, _ in starts] == ["a", "b", "b", "c"]
    assert starts[1][1] == first_lease != starts[2][1]
    result = result_from_pb(done.orion.result)
    assert result["results"]["b"] == {"status": "ok", "star": "b", "attempt": 2,
                                      "device_id": "edge"}
    assert len(feed.of("DEVICE_CONNECTED", device_id="edge")) == 1 + 1  # first + reconnect
