"""End to end with everything a separate process: ``orion serve``, ``orion device`` daemons
(``python -m orion_grpc.device``) and the ``orion`` CLI, on loopback; the test drives them
with the Python client and signals, and waits on event streams and process output (with
timeouts), never by sleeping.

Simulated work is the daemons' ``sleep`` executor (or ``hold`` from e2e_executors.py).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import PLUGINS, SERVER_FLAGS, EventFeed, Fleet, ServerProcess

from orion_grpc.api.convert import result_from_pb
from orion_grpc.core import AddDependency, AddTask, TaskOrion, TaskStar, TaskStarLine, UpdateTask
from orion_grpc.demo import DEMO_FLEET, DEMO_PLUGIN

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet(ServerProcess(*SERVER_FLAGS))
    try:
        yield f
    finally:
        await f.close()
        f.server.kill()


def sleeper(orion_id: str, seconds: float, **kw: Any) -> TaskOrion:
    orion = TaskOrion(orion_id=orion_id)
    orion.add_task(TaskStar("job", description=f"sleep {seconds}s",
                            task_data={"executor": "sleep", "seconds": seconds}, **kw))
    return orion


def result_of(event: Any) -> dict[str, Any]:
    return result_from_pb(event.orion.result)


async def test_submit_watch_and_complete_on_three_daemons(fleet):
    await asyncio.gather(*(fleet.daemon(d.device_id, "--capacity", str(d.capacity),
                                        "--plugin", DEMO_PLUGIN, device_type=d.device_type,
                                        capabilities=",".join(d.capabilities))
                           for d in DEMO_FLEET))
    async with fleet.client() as client:
        feed = EventFeed(client, orion_id="expense_report")
        submit = await fleet.cli("submit", "examples/expense_report.yaml", "--wait")
        await feed.wait_for("ORION_STARTED")
        watch = await fleet.cli("watch", "expense_report")  # joins late: replays, then follows
        assert await submit.exit_code(30) == 0, submit.stderr()
        assert await watch.exit_code(30) == 0, watch.stderr()
        devices = {d["device_id"]: d for d in await client.get_available_devices()}
        await feed.close()
    for out in (submit.stdout(), watch.stdout()):
        assert "task_started    scan_receipts (Scan receipts) on pixel-8" in out
        assert "task_completed  fill_report (Fill in the report) on win-desktop-07" in out
        assert "task_cancelled  auto_submit" in out  # the else-branch of an if/else
        assert "expense_report: COMPLETED - 7 completed, 1 cancelled" in out
        assert "critical path (" in out
    # The daemons registered what they were started with.
    assert devices["pixel-8"]["device_type"] == "android"
    assert devices["win-desktop-07"]["capabilities"] == ["msbuild", "office"]
    assert devices["linux-build-01"]["capacity"] == 2


async def test_a_second_daemon_with_the_same_id_supersedes_the_first(fleet):
    first = await fleet.daemon("twin")
    async with fleet.client() as client:
        second = await fleet.daemon("twin")  # its own "connected" line: welcomed
        assert await first.exit_code() == 3
        assert "another session for this device id took over" in first.stderr()
        # The new session is the device now: its work runs in the second process.
        result = await client.orchestrate_orion(sleeper("twin-job", 0.1),
                                                device_assignments={"job": "twin"})
        devices = await client.get_available_devices()
    assert result["status"] == "completed" and result["results"]["job"]["device_id"] == "twin"
    assert [d["device_id"] for d in devices] == ["twin"] and devices[0]["status"] != "offline"
    assert second.proc.returncode is None


async def test_cancelling_an_orion_cancels_the_executor_on_the_device(fleet):
    holder = await fleet.daemon("holder", "--plugin", "hold=e2e_executors:hold", env=PLUGINS)
    async with fleet.client() as client:
        feed = EventFeed(client, orion_id="held")
        orion = TaskOrion(orion_id="held")
        orion.add_task(TaskStar("job", description="hold on", task_data={"executor": "hold"}))
        await client.submit_orion(orion, device_assignments={"job": "holder"})
        await holder.wait_for_line("hold: job started")
        cancel = await fleet.cli("cancel", "held", "--reason", "changed my mind")
        assert await cancel.exit_code() == 0 and "cancelled held" in cancel.stdout()
        await holder.wait_for_line("hold: job cancelled")  # in the executor, on the device
        cancelled = await feed.wait_for("TASK_CANCELLED", task_id="job")
        await feed.wait_for("ORION_CANCELLED")
        # The daemon lives on, and its capacity is free again.
        again = await client.orchestrate_orion(sleeper("after", 0.05),
                                               device_assignments={"job": "holder"})
        await feed.close()
    assert "changed my mind" in cancelled.task.error
    assert again["status"] == "completed" and holder.proc.returncode is None


async def test_a_planner_edits_the_dag_after_each_completion(fleet, tmp_path: Path):
    await fleet.daemon("worker", "--capacity", "2")

    def star(task_id: str) -> TaskStar:
        return TaskStar(task_id, description=f"do {task_id}",
                        task_data={"executor": "sleep", "seconds": 0.05})

    orion = TaskOrion(orion_id="plan")
    orion.add_task(star("a"))
    orion.add_task(star("b"))
    orion.add_dependency(TaskStarLine("a", "b"))
    edit_file = tmp_path / "add_d.yaml"  # what a planner could write for `orion edit`
    edit_file.write_text("operations:\n"
                         "  - addTask: {task: {taskId: d, description: do d,"
                         " taskData: {executor: sleep, seconds: 0.05}}}\n"
                         "  - addDependency: {dependency: {lineId: c-d, fromTaskId: c,"
                         " toTaskId: d}}\n")
    async with fleet.client() as client:
        feed = EventFeed(client, orion_id="plan")
        await client.submit_orion(orion, assignment_strategy="round_robin",
                                  enable_synchronization=True)
        # The scheduler waits for the planner after each finished star: the planner reacts.
        await feed.wait_for("TASK_COMPLETED", task_id="a")
        await client.edit_orion("plan", [AddTask(star("c")), AddDependency(
            TaskStarLine("b", "c", line_id="b-c"))], on_task_ids=["a"])
        await feed.wait_for("TASK_COMPLETED", task_id="b")
        edit = await fleet.cli("edit", "plan", str(edit_file), "--on", "b")
        assert await edit.exit_code() == 0, edit.stderr()
        await feed.wait_for("TASK_COMPLETED", task_id="c")
        await client.edit_orion("plan", [UpdateTask("d", {"description": "do d, now"})],
                                on_task_ids="c")
        await feed.wait_for("TASK_COMPLETED", task_id="d")
        await client.edit_orion("plan", [], on_task_ids="d")
        done = await feed.wait_for("ORION_COMPLETED")
        final = await client.get_orion("plan")
        stats = await client.get_statistics()
        await feed.close()
    assert "applied 2 edit(s) to plan" in edit.stdout() and "added stars: d" in edit.stdout()
    assert [e.task_id for e in feed.of("TASK_COMPLETED")] == ["a", "b", "c", "d"]
    assert [e.orion.on_task_ids[:] for e in feed.of("ORION_MODIFIED")] == [["a"], ["b"], ["c"],
                                                                          ["d"]]
    assert result_of(done)["statistics"]["task_status_counts"] == {"completed": 4}
    assert final is not None and final.get_task("d").description == "do d, now"
    assert stats["timeout_modifications"] == 0


async def test_sigterm_with_watch_and_device_streams_open_ends_cleanly_and_resumably(fleet):
    busy, idle = await asyncio.gather(*(fleet.daemon(name, "--drain-timeout", "0.5")
                                        for name in ("busy", "idle")))
    async with fleet.client() as client:
        feed = EventFeed(client)
        await client.submit_orion(sleeper("long", 30.0), device_assignments={"job": "busy"})
        await feed.wait_for("TASK_PROGRESS", task_id="job", device_id="busy")
        watch = await fleet.cli("watch", "long")
        await watch.wait_for_line("task_started    job", "stdout")  # following it live
        fleet.server.proc.send_signal(signal.SIGTERM)

        error = await feed.ended()
        assert getattr(error, "code", None) is grpc.StatusCode.UNAVAILABLE
        assert f"resume with token {feed.events[-1].resume_token}" in str(error)
        assert await watch.exit_code() == 2
        assert "server shutting down, resume with token" in watch.stderr()
        for daemon in (busy, idle):  # told goodbye; they stay up, waiting to reconnect
            await daemon.wait_for_line("server said goodbye (server_shutdown)")
    out, _ = await asyncio.to_thread(fleet.server.proc.communicate, timeout=20)
    assert fleet.server.proc.returncode == 0 and "server stopped" in out
    # The daemons outlive the server (busy's star was cancelled: no store would resume it),
    # and stop when told to.
    assert busy.proc.returncode is None and idle.proc.returncode is None
    assert await asyncio.gather(busy.terminate(), idle.terminate()) == [0, 0]
