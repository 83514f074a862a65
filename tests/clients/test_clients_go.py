"""The Go client (clients/go, example ``orion-submit``) against a real Python server process:
it submits an orion — run by a TypeScript and a Python device daemon — and follows the event
stream until the orion ends; bad input and failed orions give the documented exit codes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from clients_support import Fleet

pytestmark = [pytest.mark.timeout(300),  # includes the session's first go build
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


def orion_file(tmp_path: Path, orion: dict[str, Any]) -> str:
    path = tmp_path / f"{orion.get('orionId', 'orion')}.json"
    path.write_text(json.dumps(orion))
    return str(path)


async def test_go_client_submits_an_orion_and_sees_it_complete_in_the_event_stream(
        fleet: Fleet, go_submit: Path, tmp_path: Path):
    await fleet.ts_device("ts-1", "--type", "linux")
    await fleet.py_device("py-1", "--type", "linux")
    # A bare TaskOrion (the Go example also takes a whole SubmitOrionRequest).
    path = orion_file(tmp_path, {
        "orionId": "from_go", "name": "submitted from Go",
        "tasks": [
            {"taskId": "prepare", "description": "on the Python device",
             "targetDeviceId": "py-1", "taskData": {"executor": "sleep", "seconds": 0.3}},
            {"taskId": "work", "description": "on the TypeScript device", "targetDeviceId": "ts-1",
             "timeout": "30s", "taskData": {"executor": "echo", "size": 3}},
        ],
        "dependencies": [{"fromTaskId": "prepare", "toTaskId": "work",
                          "dependencyType": "DEPENDENCY_TYPE_SUCCESS_ONLY"}]})
    go = await fleet.run(str(go_submit), "-server", fleet.target, path)
    assert await go.exit_code(30) == 0, go.stdout() + go.stderr()
    lines = go.stdout().splitlines()
    assert lines[0] == "submitted from_go: 2 stars"
    events = [line.split() for line in lines if line.startswith("event ")]
    sequences = [int(e[1]) for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    kinds = [(e[2], e[3] if len(e) > 3 else "") for e in events]
    assert kinds[0] == ("ORION_STARTED", "state=EXECUTING")
    assert ("TASK_STARTED", "task=prepare") in kinds
    assert kinds.index(("TASK_COMPLETED", "task=prepare")) < kinds.index(("TASK_STARTED", "task=work"))
    assert "event" in lines[-4] and "ORION_COMPLETED state=COMPLETED" in lines[-4]
    assert lines[-3] == "orion from_go COMPLETED: 2 stars"
    results = {line.split(" ", 2)[1]: json.loads(line.split(" ", 2)[2])
               for line in lines if line.startswith("result ")}
    assert results["prepare"]["device_id"] == "py-1"
    assert results["work"] == {"status": "ok", "device_id": "ts-1", "task_id": "work",
                               "text": "Task Description: on the TypeScript device\n"
                                       "Tips for Completion:\nNo tips available.",
                               "task_data": {"executor": "echo", "size": 3}}
    async with fleet.client() as client:
        status = await client.get_orion_status("from_go")
    assert status is not None and status["state"] == "completed"


async def test_go_client_exit_codes_for_a_failed_orion_and_a_rejected_one(
        fleet: Fleet, go_submit: Path, tmp_path: Path):
    await fleet.ts_device("ts-1", "--type", "linux")
    failing = orion_file(tmp_path, {
        "orion": {"orionId": "fails", "tasks": [
            {"taskId": "boom", "description": "fails", "targetDeviceId": "ts-1",
             "taskData": {"executor": "sleep", "seconds": 0, "fail": "disk full"}}]}})
    go = await fleet.run(str(go_submit), "-server", fleet.target, failing)
    assert await go.exit_code(30) == 1, go.stdout() + go.stderr()
    assert "ORION_FAILED state=FAILED" in go.stdout()
    assert "error boom disk full" in go.stdout()

    cycle = orion_file(tmp_path, {"orion": {"orionId": "cycle", "tasks": [
        {"taskId": "a", "description": "a"}, {"taskId": "b", "description": "b"}],
        "dependencies": [{"fromTaskId": "a", "toTaskId": "b"}, {"fromTaskId": "b", "toTaskId": "a"}]},
        "assignmentStrategy": "ASSIGNMENT_STRATEGY_ROUND_ROBIN"})
    go = await fleet.run(str(go_submit), "-server", fleet.target, cycle)
    assert await go.exit_code(30) == 2
    assert "SubmitOrion: rpc error: code = InvalidArgument" in go.stderr()
    assert "cycle" in go.stderr().lower()

    go = await fleet.run(str(go_submit), "-server", fleet.target, "-strategy", "fastest", cycle)
    assert await go.exit_code(30) == 2
    assert 'unknown strategy "fastest"' in go.stderr()
