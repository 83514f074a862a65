"""The TypeScript client (clients/typescript) against a real Python server process: the example
device daemon runs stars over DeviceService.Connect, alone and next to a Python daemon, and
the OrionClient wrapper (bin/submit.js) submits an orion and follows it to its end.

Waits are on event streams and process output, with timeouts — never sleeps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from clients_support import Fleet
from e2e_support import EventFeed

from orion_grpc.api.convert import result_from_pb
from orion_grpc.core import TaskOrion, TaskStar, TaskStarLine

pytestmark = [pytest.mark.timeout(300),  # includes the session's first npm ci + tsc build
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


def star(task_id: str, device_id: str, executor: str, **data: Any) -> TaskStar:
    return TaskStar(task_id, description=f"{executor} on {device_id}", target_device_id=device_id,
                    task_data={"executor": executor, **data})


async def test_ts_device_runs_the_stars_of_an_orion_submitted_from_python(fleet: Fleet):
    ts = await fleet.ts_device("ts-1", "--type", "linux", "--capabilities", "node,echo",
                               "--capacity", "2")
    orion = TaskOrion(orion_id="from_python")
    orion.add_task(TaskStar("hello", description="Say hello", tips=["Be brief"],
                            target_device_id="ts-1", task_data={"executor": "echo", "n": 7}))
    orion.add_task(star("left", "ts-1", "sleep", seconds=0.5))
    orion.add_task(star("right", "ts-1", "sleep", seconds=0.5, result={"status": "ok", "k": 1}))
    orion.add_task(star("join", "ts-1", "echo"))
    for to in ("left", "right"):
        orion.add_dependency(TaskStarLine("hello", to, "success_only"))
    orion.add_dependency(TaskStarLine("left", "join", "conditional",
                                      condition='result.device_id == "ts-1" && result.slept == 0.5'))
    orion.add_dependency(TaskStarLine("right", "join", "success_only"))

    async with fleet.client() as client:
        feed = EventFeed(client, orion_id="from_python")
        await client.submit_orion(orion)
        end = await feed.wait_for("ORION_COMPLETED", timeout=20)
        devices = {d["device_id"]: d for d in await client.get_available_devices()}
        await feed.close()

    results = result_from_pb(end.orion.result)["results"]
    assert results["hello"] == {
        "status": "ok", "device_id": "ts-1", "task_id": "hello",
        "text": "Task Description: Say hello\nTips for Completion:\n - Be brief",
        "task_data": {"executor": "echo", "n": 7}}
    assert results["left"] == {"status": "ok", "slept": 0.5, "device_id": "ts-1",
                               "task_id": "left"}
    assert results["right"] == {"status": "ok", "k": 1}  # task_data.result, as in Python
    assert results["join"]["device_id"] == "ts-1"  # the condition on a TS result held
    # Every star ran on the TS device; left and right at once (capacity 2).
    assert {e.device_id for e in feed.of("TASK_STARTED")} == {"ts-1"}
    starts = [feed.of("TASK_STARTED", task_id=t)[0].sequence for t in ("left", "right")]
    ends = [feed.of("TASK_COMPLETED", task_id=t)[0].sequence for t in ("left", "right")]
    assert max(starts) < min(ends)
    assert feed.of("TASK_PROGRESS", task_id="left")  # progress travelled on the stream
    # What the hello registered.
    device = devices["ts-1"]
    assert (device["device_type"], device["capabilities"], device["capacity"]) == \
        ("linux", ["node", "echo"], 2)
    assert device["metadata"]["daemon_version"].endswith("-ts")
    assert device["metadata"]["system_info"]["node_version"].startswith("v")

    # SIGTERM: drain, close the stream, exit 0.
    assert await ts.terminate() == 0, ts.stderr()
    assert "stopping (draining" in ts.stderr()


async def test_ts_device_rejects_an_unknown_executor_and_obeys_cancel(fleet: Fleet):
    ts = await fleet.ts_device("ts-1")
    async with fleet.client() as client:
        feed = EventFeed(client)
        rejected = TaskOrion(orion_id="rejected")
        rejected.add_task(star("shell", "ts-1", "shell", command="true"))
        await client.submit_orion(rejected)
        failed = await feed.wait_for("TASK_FAILED", task_id="shell")
        assert failed.task.error_reason == "rejected"
        assert 'unsupported: executor "shell" is not enabled on device ts-1' in failed.task.error

        long = TaskOrion(orion_id="long")
        long.add_task(star("nap", "ts-1", "sleep", seconds=10))  # progress every 1 s
        await client.submit_orion(long)
        await feed.wait_for("TASK_PROGRESS", task_id="nap", device_id="ts-1")
        assert await client.cancel_orion("long", "enough")
        await feed.wait_for("ORION_CANCELLED", orion_id="long")
        await ts.wait_for_line("cancelled by the server")

        # The device is free again: the next star runs at once.
        again = TaskOrion(orion_id="again")
        again.add_task(star("echo", "ts-1", "echo"))
        await client.submit_orion(again)
        await feed.wait_for("ORION_COMPLETED", orion_id="again")
        await feed.close()
    assert not feed.of("TASK_COMPLETED", task_id="nap")


async def test_mixed_fleet_python_and_ts_devices_in_one_orion_via_the_ts_wrapper(
        fleet: Fleet, tmp_path: Path):
    await fleet.py_device("py-1", "--type", "linux", "--capabilities", "python")
    await fleet.ts_device("ts-1", "--type", "windows", "--capabilities", "node")
    orion_file = tmp_path / "mixed.json"
    orion_file.write_text(json.dumps({
        "orion": {
            "orionId": "mixed", "name": "Python and TypeScript devices",
            "tasks": [
                {"taskId": "fetch", "description": "fetch", "deviceType": "DEVICE_TYPE_LINUX",
                 "requiredCapabilities": ["python"],
                 "taskData": {"executor": "sleep", "seconds": 0.2,
                              "result": {"status": "ok", "commit": "abc"}}},
                {"taskId": "build", "description": "build", "deviceType": "DEVICE_TYPE_WINDOWS",
                 "requiredCapabilities": ["node"], "taskData": {"executor": "echo"}},
                {"taskId": "ship", "description": "ship", "deviceType": "DEVICE_TYPE_LINUX",
                 "requiredCapabilities": ["python"], "taskData": {"executor": "echo"}},
            ],
            "dependencies": [
                {"fromTaskId": "fetch", "toTaskId": "build",
                 "dependencyType": "DEPENDENCY_TYPE_SUCCESS_ONLY"},
                {"fromTaskId": "build", "toTaskId": "ship",
                 "dependencyType": "DEPENDENCY_TYPE_CONDITIONAL",
                 "condition": {"expression": 'result.device_id == "ts-1"'}},
            ]},
        "assignmentStrategy": "ASSIGNMENT_STRATEGY_CAPABILITY_MATCH"}))
    assert fleet.dist is not None
    submit = await fleet.run("node", str(fleet.dist / "bin" / "submit.js"), "--server",
                             fleet.target, str(orion_file))
    assert await submit.exit_code(30) == 0, submit.stdout() + submit.stderr()
    out = submit.stdout()
    assert out.startswith("submitted mixed: 3 stars")
    for task_id, device in (("fetch", "py-1"), ("build", "ts-1"), ("ship", "py-1")):
        assert f"TASK_COMPLETED task={task_id} device={device}" in out
    assert "ORION_COMPLETED state=COMPLETED" in out
    results = {line.split(" ", 2)[1]: json.loads(line.split(" ", 2)[2])
               for line in out.splitlines() if line.startswith("result ")}
    assert results["fetch"] == {"status": "ok", "commit": "abc"}
    assert results["build"]["device_id"] == "ts-1"
    assert results["ship"]["device_id"] == "py-1"
    async with fleet.client() as client:
        status = await client.get_orion_status("mixed")
    assert status is not None and status["state"] == "completed"


async def test_ts_wrapper_says_what_is_wrong_with_a_bad_orion_file(fleet: Fleet, tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"orion": {"tasks": [{"taskId": "a", "colour": "red"}]}}))
    assert fleet.dist is not None
    submit = await fleet.run("node", str(fleet.dist / "bin" / "submit.js"), "--server",
                             fleet.target, str(bad))
    assert await submit.exit_code(30) == 2
    assert "is neither a SubmitOrionRequest nor a TaskOrion" in submit.stderr()
    assert "colour" in submit.stderr()
