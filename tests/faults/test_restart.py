"""``orion serve --store DB`` SIGKILLed mid-run and started again on the same database, with
real device daemons around it:

- every orion is back with its stars' states, and a request id used before the crash still
  gets the first answer (nothing is submitted twice);
- a daemon that kept running reconnects and reports the lease it still runs: the star keeps
  running there (no retry) and finishes once;
- a result the daemon finished while the server was down is replayed and accepted exactly
  once (the event history has one TASK_COMPLETED per star), and its dependents then run;
- a star whose device never comes back is retried on another device after the reconnect
  grace, by the normal retry rules;
- a watcher resuming with its last token across the restart gets the next event — no gap, no
  duplicate — and the history it saw before the crash is the history the new server has.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PLUGINS, SERVER_FLAGS, WAIT, Fleet, ServerChild
from fault_support import WORK

from orion_grpc.api.convert import result_from_pb
from orion_grpc.core import OrionError, TaskOrion, TaskStar, TaskStarLine
from orion_grpc.gen.orion.v1 import event_pb2

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

RECONNECT_GRACE = 2.0  # seconds a missing device's leases are kept after the restart


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def star(task_id: str, device: str, seconds: float, **kw: Any) -> TaskStar:
    return TaskStar(task_id, description=f"work {seconds}s", target_device_id=device,
                    task_data={"seconds": seconds}, **kw)


def long_orion() -> TaskOrion:
    orion = TaskOrion("long")
    orion.add_task(star("finishes_offline", "keeper", 1.0))  # done while the server is down
    orion.add_task(star("still_running", "keeper", 12.0))  # still running at the restart
    orion.add_task(star("after", "keeper", 0.1))  # needs finishes_offline: runs after restart
    orion.add_dependency(TaskStarLine("finishes_offline", "after", "success_only"))
    return orion


def orphan_orion() -> TaskOrion:
    orion = TaskOrion("orphan")
    # Its device dies while the server is down (long before these 5 s are up) and never
    # comes back; the retry on another device takes 5 s too.
    orion.add_task(star("stranded", "gone", 5.0, retry_count=1, required_capabilities=["x"]))
    return orion


class Watch:
    """A WatchEvents stream read in the background; keeps events and the last token."""

    def __init__(self, client: Any, **request: Any) -> None:
        self.client = client
        self.events: list[event_pb2.Event] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(request))

    async def _run(self, request: dict[str, Any]) -> None:
        try:
            async for event in self.client.watch_events(**request):
                self.events.append(event)
                self._changed.set()
        except OrionError as exc:  # the server died under it
            self.error = exc
            self._changed.set()

    async def until(self, kind: str, timeout: float = WAIT, **fields: str) -> event_pb2.Event:
        wanted = event_pb2.EventType.Value(f"EVENT_TYPE_{kind}")

        async def find() -> event_pb2.Event:
            while True:
                for event in self.events:
                    if event.type == wanted and all(getattr(event, k) == v
                                                    for k, v in fields.items()):
                        return event
                if self.error is not None:
                    raise AssertionError(f"the watch ended before {kind} {fields}: "
                                         f"{self.error}")
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(find(), timeout)

    async def ended(self) -> BaseException | None:
        await asyncio.wait_for(asyncio.shield(self._task), WAIT)
        return self.error

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def completions(events: list[event_pb2.Event]) -> Counter[str]:
    return Counter(f"{e.orion_id}/{e.task_id}" for e in events
                   if e.type == event_pb2.EVENT_TYPE_TASK_COMPLETED)


async def test_a_server_killed_mid_run_resumes_every_orion_on_the_same_store(
        tmp_path: Path) -> None:
    flags = (*SERVER_FLAGS, "--store", str(tmp_path / "orion.db"), "--port", str(free_port()),
             "--reconnect-grace", str(RECONNECT_GRACE))
    server = await ServerChild.start(*flags)
    fleet = Fleet(server)
    long, orphan = long_orion(), orphan_orion()
    try:
        keeper, gone, _spare = await asyncio.gather(
            fleet.daemon("keeper", *WORK, "--capacity", "2", env=PLUGINS),
            fleet.daemon("gone", *WORK, capabilities="x", env=PLUGINS),
            fleet.daemon("spare", *WORK, capabilities="x", env=PLUGINS))
        async with fleet.client() as client:
            before = Watch(client, include_history=True)
            first_answer = await client.submit_orion(long, request_id="submit-long")
            await client.submit_orion(orphan)
            for task_id in ("finishes_offline", "still_running", "stranded"):
                await before.until("TASK_PROGRESS", task_id=task_id)  # running on a device

            # ---- the crash: SIGKILL, mid-run
            server.kill()
            assert await server.exit_code() == -signal.SIGKILL
            assert await before.ended() is not None  # the watch saw the server go
            # While the server is down, keeper finishes a star (it keeps the result) ...
            await keeper.wait_for_line("work: finishes_offline attempt 1 finished")
            gone.kill()  # ... and "gone" dies for good.
            assert await gone.exit_code() == -signal.SIGKILL
            seen = list(before.events)
            last_token = client.last_resume_token

        # ---- the restart, on the same database and port
        since = keeper.mark("stdout")
        server = await ServerChild.start(*flags)
        fleet.server = server
        await keeper.connected(since=since)
        async with fleet.client() as client:
            after = Watch(client, resume_token=last_token)
            # Every orion is back, with its stars' states.
            back = await client.get_orion("long")
            assert back is not None
            # keeper's hello replayed the result it kept (processed before its welcome) ...
            assert back.get_task("finishes_offline").status.value == "completed"
            # ... and reported the lease it still runs: it still holds it, nothing retried.
            assert back.get_task("still_running").status.value == "running"
            devices = {d["device_id"]: d for d in await client.get_available_devices()}
            assert "still_running" in devices["keeper"]["current_tasks"]
            assert "gone" not in devices  # not connected: its lease waits for it (a while)
            # The request id used before the crash gets the first answer, acting once.
            assert await client.submit_orion(long, request_id="submit-long") == first_answer

            done_long = await after.until("ORION_COMPLETED", timeout=30, orion_id="long")
            done_orphan = await after.until("ORION_COMPLETED", timeout=30, orion_id="orphan")
            history = Watch(client, include_history=True)
            await history.until("ORION_COMPLETED", orion_id="orphan")
            orions = await client.list_orions()
            await asyncio.gather(after.close(), history.close())
    finally:
        with contextlib.suppress(Exception):
            await fleet.close()
        await server.close()

    # The watcher's view across the restart: consecutive sequences, no gap, no duplicate.
    resumed = [e.sequence for e in after.events]
    assert resumed[0] == seen[-1].sequence + 1
    assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    # What it saw before the crash is exactly what the restarted server has.
    by_sequence = {e.sequence: e for e in history.events}
    for event in seen:
        assert by_sequence[event.sequence] == event
    # Each star finished exactly once, over the whole history.
    assert completions(history.events) == Counter(
        {"long/finishes_offline": 1, "long/still_running": 1, "long/after": 1,
         "orphan/stranded": 1})
    results = {e.task_id: e for e in history.events
               if e.type == event_pb2.EVENT_TYPE_TASK_COMPLETED}
    # The running lease and the replayed result were kept (attempt 1, on keeper, no retry).
    for task_id in ("finishes_offline", "still_running"):
        assert results[task_id].device_id == "keeper"
        assert not [e for e in history.events if e.task_id == task_id
                    and e.type == event_pb2.EVENT_TYPE_TASK_RETRYING]
    # The device that never came back: its star was retried elsewhere by the normal rules.
    [retry] = [e for e in history.events if e.type == event_pb2.EVENT_TYPE_TASK_RETRYING]
    assert retry.task_id == "stranded"
    assert "device_disconnection" in str(retry.data)
    assert results["stranded"].device_id == "spare"
    assert result_from_pb(done_long.orion.result)["status"] == "completed"
    assert result_from_pb(done_orphan.orion.result)["status"] == "completed"
    assert sorted(o["orion_id"] for o in orions) == ["long", "orphan"]  # nothing submitted twice


async def test_a_gracefully_stopped_server_suspends_and_the_restart_resumes(
        tmp_path: Path) -> None:
    """SIGTERM with a store: nothing is cancelled — the daemon keeps working while the server
    is down and replays its result to the restarted server; the caller waiting for the run
    hears RUN_SUSPENDED and, asking again with its request id, gets the result."""
    flags = (*SERVER_FLAGS, "--store", str(tmp_path / "orion.db"), "--port", str(free_port()))
    server = await ServerChild.start(*flags)
    fleet = Fleet(server)
    orion = TaskOrion("graceful")
    orion.add_task(star("work", "keeper", 2.0))
    orion.add_task(star("next", "keeper", 0.1))
    orion.add_dependency(TaskStarLine("work", "next", "success_only"))
    try:
        keeper = await fleet.daemon("keeper", *WORK, env=PLUGINS)
        async with fleet.client() as client:
            waiting = asyncio.create_task(client.orchestrate_orion(orion, request_id="run-1"))
            await keeper.wait_for_line("work: work attempt 1 started")
            server.signal(signal.SIGTERM)
            assert await server.exit_code() == 0
            with pytest.raises(OrionError) as suspended:
                await waiting
            await keeper.wait_for_line("work: work attempt 1 finished")  # server still down

        since = keeper.mark("stdout")
        server = await ServerChild.start(*flags)
        fleet.server = server
        await keeper.connected(since=since)
        async with fleet.client() as client:
            result = await client.orchestrate_orion(orion, request_id="run-1")
            history = Watch(client, include_history=True)
            await history.until("ORION_COMPLETED", orion_id="graceful")
            await history.close()
    finally:
        with contextlib.suppress(Exception):
            await fleet.close()
        await server.close()

    assert suspended.value.reason == "RUN_SUSPENDED"
    assert "cancelled" not in keeper.stderr()  # the work went on through the shutdown
    assert result["status"] == "completed"
    assert result["results"]["work"]["attempt"] == 1  # the replayed result, not a rerun
    assert completions(history.events) == Counter({"graceful/work": 1, "graceful/next": 1})
    assert len([e for e in history.events
                if e.type == event_pb2.EVENT_TYPE_ORION_STARTED]) == 1
