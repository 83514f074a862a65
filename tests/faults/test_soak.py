"""Soak: 30 devices — 4 ``orion device`` processes and 26 in-process ``DeviceAgent``s — come
and go at random while 6 orions run on one ``orion serve`` process (with its SQLite store).

Devices leave in every way the fault tests cover one at a time: an agent stops gracefully,
drops its stream, or abandons it half-open and reconnects; a daemon is killed (SIGKILL),
terminated (SIGTERM, draining) or stopped (SIGSTOP, then SIGCONT). The chaos is paced by the
work, not by a clock: one action per few completed stars, with a seeded random choice. At the
end every orion must be COMPLETED with every star completed exactly once, and once all
devices are gone the server must be back to the device streams and asyncio tasks it had
before (from its /metrics), with bounded memory growth. The figures are printed.

Bounded for CI: about half a minute on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Daemon, EventFeed
from fault_support import FaultFleet, ServerChild
from prometheus_client.parser import text_string_to_metric_families

from orion_grpc.api.convert import result_from_pb
from orion_grpc.core import TaskOrion, TaskStar, TaskStarLine
from orion_grpc.device import DeviceAgent

pytestmark = [pytest.mark.soak, pytest.mark.timeout(300),
              pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, /proc RSS")]

SEED = 20261121
DAEMONS, AGENTS = 4, 26
ORIONS, LAYERS, WIDTH = 6, 10, 5  # 50 stars per orion, each needing 2 of the layer before
STAGGER = 30  # a new orion every this many completed stars (several run at once)
CHAOS_EVERY = 2  # one chaos step per this many completed stars
MIN_ONLINE = 12  # the chaos never takes the fleet below this many devices
RETRIES = 30  # no star may run out of retries because of the chaos alone
RUN_TIMEOUT = 180.0

# Memory the server may keep after the soak, above what it used before: the state it retains
# on purpose (6 finished orions of 50 stars, ~3k events in the event log, the caches of the
# store and gRPC) is a few MiB; the rest is allocator slack. A per-session or per-attempt leak
# over hundreds of sessions and ~200 attempts would show in the task count long before.
RSS_GROWTH_LIMIT = 48 * 1024 * 1024
TASK_SLACK = 2  # gRPC may still be tearing down the last stream's call


class Scraper:
    def __init__(self, url: str) -> None:
        self.url = url

    def _fetch(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        return {s.name: s.value for family in text_string_to_metric_families(text)
                for s in family.samples if not s.labels}

    async def __call__(self) -> dict[str, float]:
        return await asyncio.to_thread(self._fetch)


class Device:
    """One device of the soak: an in-process agent or a daemon process, up or down."""

    def __init__(self, fleet: FaultFleet, device_id: str, process: bool,
                 rng: random.Random) -> None:
        self.fleet, self.device_id, self.process, self.rng = fleet, device_id, process, rng
        self.agent: DeviceAgent | None = None
        self.daemon: Daemon | None = None
        self.stopped = False  # SIGSTOPped daemon
        self.up = False
        self.leaving: asyncio.Task[Any] | None = None  # a graceful stop still draining

    async def start(self) -> None:
        if self.leaving is not None:
            await self.leaving  # a device id is one process at a time (else: superseded)
            self.leaving = None
        if self.stopped:
            assert self.daemon is not None
            self.daemon.signal(signal.SIGCONT)
            self.stopped = False
        elif self.process:
            self.daemon = await Daemon.start(self.fleet.target, self.device_id, "--capacity",
                                             "2", "--backoff-max", "0.2", "--drain-timeout",
                                             "1", "--log-level", "WARNING")
        else:
            self.agent = DeviceAgent(self.fleet.target, self.device_id, "linux",
                                     capacity=self.rng.choice((1, 2)), backoff_initial=0.05,
                                     backoff_max=0.2)
            self.agent.start()
        self.up = True

    async def leave(self) -> str:
        """Go away in a random way; returns how."""
        self.up = False
        if self.daemon is not None:
            how = self.rng.choice(("kill", "term", "sigstop"))
            daemon = self.daemon
            if how == "sigstop":
                daemon.signal(signal.SIGSTOP)
                self.stopped = True
                return how
            daemon.signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
            self.leaving = asyncio.create_task(daemon.exit_code(30))
            return how
        assert self.agent is not None
        agent = self.agent
        how = self.rng.choice(("stop", "drop"))
        if how == "stop":  # drain, finish the running stars (up to 1 s), half-close
            self.leaving = asyncio.create_task(agent.stop(timeout=1.0))
        else:  # the stream is cancelled under the running stars
            assert agent.task is not None
            agent.task.cancel()
            self.leaving = asyncio.create_task(asyncio.wait([agent.task]))
        return how

    async def half_open(self) -> None:
        """The agent abandons its stream unread and opens a new one (the server supersedes)."""
        assert self.agent is not None
        await self.agent.reconnect(abandon=True)

    async def shut(self) -> None:
        """At the end: gone for good, gracefully where possible."""
        if self.leaving is not None:
            await self.leaving
        if self.daemon is not None:
            if self.stopped:
                self.daemon.signal(signal.SIGCONT)
            if self.daemon.proc.returncode is None:
                self.daemon.signal(signal.SIGTERM)
            await self.daemon.exit_code(30)
            await self.daemon.close()
        elif self.agent is not None and self.agent.task is not None \
                and not self.agent.task.done():
            await self.agent.stop(timeout=2.0)


def layered_orion(index: int, rng: random.Random) -> TaskOrion:
    orion = TaskOrion(orion_id=f"soak-{index}")
    for layer in range(LAYERS):
        for i in range(WIDTH):
            orion.add_task(TaskStar(
                f"L{layer}-{i}", description="sleep a little", retry_count=RETRIES,
                task_data={"executor": "sleep", "seconds": round(rng.uniform(0.05, 0.3), 3)}))
            if layer:
                for before in rng.sample(range(WIDTH), 2):
                    orion.add_dependency(TaskStarLine(f"L{layer - 1}-{before}", f"L{layer}-{i}"))
    return orion


async def test_soak_devices_come_and_go_while_orions_run(tmp_path: Path, capsys: Any) -> None:
    rng = random.Random(SEED)
    server = await ServerChild.start(
        "--heartbeat-interval", "0.2", "--lease-ttl", "1.5", "--retry-backoff-base", "0",
        "--device-grace-period", "1", "--grace", "2", "--metrics-port", "0",
        "--store", str(tmp_path / "soak.db"))
    fleet = FaultFleet(server)
    devices: list[Device] = []
    try:
        scrape = Scraper((await server.wait_for_line("metrics on ", "stdout")).split()[-1])
        async with fleet.client() as client:
            feed = EventFeed(client)
            # Warm up (first orion, first session: imports, caches), then the baseline.
            warm = Device(fleet, "warm-up", False, rng)
            await warm.start()
            await feed.wait_for("DEVICE_CONNECTED", device_id="warm-up")
            await client.orchestrate_orion(layered_orion(-1, random.Random(0)),
                                           assignment_strategy="load_balance")
            await warm.shut()
            await feed.wait_for("DEVICE_DISCONNECTED", device_id="warm-up")
            before = await scrape()

            started = time.monotonic()
            devices = [Device(fleet, f"proc-{i}", True, rng) for i in range(DAEMONS)] + \
                      [Device(fleet, f"agent-{i:02}", False, rng) for i in range(AGENTS)]
            await asyncio.gather(*(d.start() for d in devices))
            for d in devices:
                await feed.wait_for("DEVICE_CONNECTED", device_id=d.device_id, timeout=30)
            peak = await scrape()

            async def submit_orions() -> None:
                for k in range(ORIONS):
                    await feed.wait_for_count("TASK_COMPLETED", WIDTH * LAYERS + k * STAGGER,
                                              timeout=RUN_TIMEOUT)
                    await client.submit_orion(layered_orion(k, rng),
                                              assignment_strategy="load_balance")

            actions: Counter[str] = Counter()

            async def chaos() -> None:
                back_at: dict[Device, int] = {}
                step = 0
                while True:
                    step += 1
                    await feed.wait_for_count("TASK_COMPLETED",
                                              WIDTH * LAYERS + step * CHAOS_EVERY,
                                              timeout=RUN_TIMEOUT)
                    for device in [d for d, at in back_at.items() if at <= step]:
                        del back_at[device]
                        await device.start()
                        actions["come back"] += 1
                    online = [d for d in devices if d.up]
                    roll = rng.random()
                    if roll < 0.7 and len(online) > MIN_ONLINE:
                        processes = [d for d in online if d.process]
                        # Daemons are few: pick them more often than their share.
                        device = rng.choice(processes if processes and rng.random() < 0.3
                                            else online)
                        actions[await device.leave()] += 1
                        back_at[device] = step + rng.randint(1, 5)
                    elif roll < 0.85:
                        agents = [d for d in online if d.agent is not None]
                        if agents:
                            await rng.choice(agents).half_open()
                            actions["half-open, reconnect"] += 1

            submitter = asyncio.create_task(submit_orions())
            chaos_task = asyncio.create_task(chaos())
            try:
                done = [await feed.wait_for("ORION_COMPLETED", orion_id=f"soak-{k}",
                                            timeout=RUN_TIMEOUT) for k in range(ORIONS)]
            finally:
                for task in (submitter, chaos_task):
                    task.cancel()
                await asyncio.gather(submitter, chaos_task, return_exceptions=True)
            duration = time.monotonic() - started

            # Everyone leaves for good; then the server must be back where it started.
            await asyncio.gather(*(d.shut() for d in devices))
            for d in devices:
                connects = len(feed.of("DEVICE_CONNECTED", device_id=d.device_id))
                await feed.wait_for_count("DEVICE_DISCONNECTED", connects,
                                          device_id=d.device_id, timeout=30)
            after = await scrape()
            await feed.close()
    finally:
        await asyncio.gather(*(d.shut() for d in devices), return_exceptions=True)
        await fleet.close()

    # Every orion completed; every star of each completed exactly once.
    for k, event in enumerate(done):
        result = result_from_pb(event.orion.result)
        assert result["status"] == "completed", result["errors"]
        counts = Counter(e.task_id for e in feed.of("TASK_COMPLETED", orion_id=f"soak-{k}"))
        assert counts == Counter({t: 1 for t in result["results"]}), counts
        assert len(counts) == LAYERS * WIDTH
        assert all(r["status"] == "ok" for r in result["results"].values())
    assert not feed.of("TASK_FAILED")

    connects = len(feed.of("DEVICE_CONNECTED")) - 1  # minus the warm-up's
    disconnects = len(feed.of("DEVICE_DISCONNECTED")) - 1
    retries = Counter(e.data["reason"] for e in feed.of("TASK_RETRYING"))
    figures = {
        "devices": f"{DAEMONS + AGENTS} ({DAEMONS} daemon processes, {AGENTS} in-process agents)",
        "connects / disconnects": f"{connects} / {disconnects}",
        "chaos actions": dict(actions),
        "orions / stars": f"{ORIONS} / {ORIONS * LAYERS * WIDTH}",
        "attempts retried": dict(retries),
        "duration": f"{duration:.1f} s",
        "RSS before / after": f"{before['process_resident_memory_bytes'] / 2**20:.1f} MiB / "
                              f"{after['process_resident_memory_bytes'] / 2**20:.1f} MiB",
        "asyncio tasks before / peak / after": f"{before['orion_asyncio_tasks']:.0f} / "
                                               f"{peak['orion_asyncio_tasks']:.0f} / "
                                               f"{after['orion_asyncio_tasks']:.0f}",
        "device streams before / peak / after": f"{before['orion_device_streams']:.0f} / "
                                                f"{peak['orion_device_streams']:.0f} / "
                                                f"{after['orion_device_streams']:.0f}",
    }
    with capsys.disabled():
        print("\nsoak:", *(f"  {k}: {v}" for k, v in figures.items()), sep="\n")

    assert sum(actions.values()) >= 20 and connects > DAEMONS + AGENTS  # it did churn
    assert peak["orion_device_streams"] == DAEMONS + AGENTS
    assert after["orion_device_streams"] == before["orion_device_streams"] == 0
    assert after["orion_asyncio_tasks"] <= before["orion_asyncio_tasks"] + TASK_SLACK
    assert after["orion_event_subscribers"] == before["orion_event_subscribers"] == 1
    growth = after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"
