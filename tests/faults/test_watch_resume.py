"""A watcher loses its event stream mid-orion — its process killed, or its connection reset
by the network (net_proxy.py) — and resumes with the last resume token it saw: it gets every
event exactly once, no gap and no duplicate, compared with a watcher that was never cut.

The test is the orion's planner (a synchronized run waits for an edit acknowledging each
finished star), so it decides exactly when the orion moves on: the streams break while the
orion is known to be half done, and events happen while the watchers are away."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import grpc
import pytest
from e2e_support import PLUGINS, SERVER_FLAGS, WAIT, EventFeed
from fault_support import WORK, chain, running_fleet

from orion_grpc.core import UnavailableError
from orion_grpc.gen.orion.v1 import event_pb2

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

STARS = [f"s{i}" for i in range(8)]
BREAK_AT = 4  # the streams break once s4 has started (the planner holds it there)


class ResumingWatcher:
    """Watches every event until orion ``steady`` ends; after a broken stream it resumes with
    the last token it saw (``OrionClient.last_resume_token``)."""

    def __init__(self, client: Any) -> None:
        self.events: list[Any] = []
        self.resumed = 0
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(client))

    async def _run(self, client: Any) -> None:
        token = ""
        while True:
            try:
                async for event in client.watch_events(resume_token=token,
                                                       include_history=not token):
                    self.events.append(event)
                    self._changed.set()
                    if event.orion_id == "steady" and \
                            event.type == event_pb2.EVENT_TYPE_ORION_COMPLETED:
                        return
            except UnavailableError as exc:  # the connection was reset under the stream
                assert getattr(exc, "code", None) is grpc.StatusCode.UNAVAILABLE
                token, self.resumed = client.last_resume_token, self.resumed + 1

    async def wait_for_star(self, task_id: str) -> None:
        async def seen() -> None:
            while not any(e.task_id == task_id for e in self.events):
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(seen(), WAIT)


def sequences_of_cli(lines: list[str]) -> list[int]:
    return [int(json.loads(line)["sequence"]) for line in lines if line.startswith("{")]


async def test_cut_off_watchers_resume_with_their_token_without_gap_or_duplicate():
    async with running_fleet(*SERVER_FLAGS) as fleet:
        await fleet.daemon("worker", *WORK, env=PLUGINS)
        link = await fleet.proxy()
        async with fleet.client() as direct, fleet.client(link.target) as proxied:
            reference = EventFeed(direct)  # never cut
            watcher = ResumingWatcher(proxied)  # through the proxy
            await direct.submit_orion(chain("steady", *STARS, seconds=0.01),
                                      device_assignments=dict.fromkeys(STARS, "worker"),
                                      enable_synchronization=True)
            cli = await fleet.cli("watch", "steady", "--json")  # a watcher process

            async def acknowledge(star: str) -> None:  # the planner lets the orion go on
                await reference.wait_for("TASK_COMPLETED", task_id=star)
                await direct.edit_orion("steady", [], on_task_ids=[star])

            for star in STARS[:BREAK_AT]:
                await acknowledge(star)
            await cli.wait_for_line(f'"task_id": "{STARS[BREAK_AT]}"', "stdout")
            await watcher.wait_for_star(STARS[BREAK_AT])

            cli.kill()  # the watcher process dies ...
            assert await cli.exit_code() == -signal.SIGKILL
            await link.command("reset")  # ... and the other one's connection is reset
            await acknowledge(STARS[BREAK_AT])  # the orion goes on while they are away
            await reference.wait_for("TASK_STARTED", task_id=STARS[BREAK_AT + 1])

            first_run = sequences_of_cli(cli.lines["stdout"])
            token = json.loads(cli.lines["stdout"][-1])["resume_token"]
            resumed_cli = await fleet.cli("watch", "steady", "--json", "--resume-token", token)
            for star in STARS[BREAK_AT + 1:]:
                await acknowledge(star)
            await reference.wait_for("ORION_COMPLETED", orion_id="steady")
            assert await resumed_cli.exit_code() == 0, resumed_cli.stderr()
            await asyncio.wait_for(watcher.task, WAIT)
            await reference.close()

    completed = reference.of("ORION_COMPLETED", orion_id="steady")[0].sequence
    everything = [e.sequence for e in reference.events if e.sequence <= completed]
    of_steady = [e.sequence for e in reference.events
                 if e.sequence <= completed and e.orion_id == "steady"]
    assert everything == sorted(set(everything))  # the reference itself: increasing, unique

    # The proxied watcher: cut once, resumed once, saw exactly what the reference saw.
    assert watcher.resumed == 1
    assert [e.sequence for e in watcher.events] == everything
    # The killed process stopped half way; the resumed one picked up right after it.
    second_run = sequences_of_cli(resumed_cli.lines["stdout"])
    assert first_run and second_run and first_run[-1] < of_steady[-1]
    assert first_run + second_run == of_steady
