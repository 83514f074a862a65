"""Built-in executors and the daemon's command-line plumbing, in process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from orion_grpc.device import Assignment, ExecutorError, ShellExecutor, default_executors, echo, sleep
from orion_grpc.device.cli import agent_from_args, build_parser, load_plugin


def assignment(task_data: dict[str, Any] | None = None, **kw: Any) -> Assignment:
    return Assignment(lease_id="d:1", task_id="t", attempt=1, task_text="Task Description: x",
                      task_data=task_data or {}, device_id="d", **kw)


async def test_echo_returns_what_it_was_sent():
    assert await echo(assignment({"k": [1, 2]})) == {
        "status": "ok", "device_id": "d", "task_id": "t", "text": "Task Description: x",
        "task_data": {"k": [1, 2]}}


async def test_sleep_reports_progress_and_honours_fail_and_result():
    reports: list[tuple[float, str]] = []
    a = assignment({"seconds": 0.02}, _progress=lambda p, m, d: reports.append((p, m)))
    assert await sleep(a) == {"status": "ok", "slept": 0.02, "device_id": "d", "task_id": "t"}
    assert reports and reports[-1][0] == 1.0
    assert await sleep(assignment({"seconds": 0, "result": [1]})) == [1]
    with pytest.raises(ExecutorError, match="nope"):
        await sleep(assignment({"seconds": 0, "fail": "nope"}))
    with pytest.raises(ExecutorError, match="seconds"):
        await sleep(assignment({"seconds": "soon"}))
    with pytest.raises(ExecutorError, match=">= 0"):
        await sleep(assignment({"seconds": -1}))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")
async def test_shell_runs_strings_and_argv_with_cwd_and_env(tmp_path: Path):
    shell = ShellExecutor()
    out = await shell(assignment({"command": "pwd; echo $ORION_X", "cwd": str(tmp_path),
                                  "env": {"ORION_X": 7}}))
    assert out == {"exit_code": 0, "stdout": f"{tmp_path}\n7\n", "stderr": ""}
    out = await shell(assignment({"command": [sys.executable, "-c", "print('argv ok')"]}))
    assert out["stdout"] == "argv ok\n"
    with pytest.raises(ExecutorError) as err:
        await shell(assignment({"command": "echo partial; echo bad news >&2; exit 5"}))
    assert "code 5: bad news" in str(err.value)
    assert err.value.result == {"exit_code": 5, "stdout": "partial\n", "stderr": "bad news\n"}
    with pytest.raises(ExecutorError, match="command"):
        await shell(assignment({}))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")
async def test_shell_output_is_capped():
    out = await ShellExecutor(max_output=10)(assignment({"command": "printf 'x%.0s' $(seq 25)"}))
    assert out["stdout"] == "x" * 10 and out["truncated_bytes"] == {"stdout": 15, "stderr": 0}


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux)")
async def test_cancelling_a_shell_star_kills_its_whole_process_group(tmp_path: Path):
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    # A grandchild in the background: killing only the shell would orphan it.
    task = asyncio.create_task(ShellExecutor()(assignment(
        {"command": f"sleep 30 & echo $! > {fifo}; wait"})))
    # The pid arrives as soon as the grandchild runs, possibly before the executor has even
    # finished starting the shell: cancelling then must not orphan it either.
    pid = int(await asyncio.wait_for(asyncio.to_thread(fifo.read_text), 10))
    pidfd = os.pidfd_open(pid)
    exited = asyncio.Event()
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, exited.set)  # readable once the process has exited
        try:
            await asyncio.wait_for(exited.wait(), 10)
        finally:
            loop.remove_reader(pidfd)
    finally:
        if not exited.is_set():  # the test failed: do not leave the grandchild behind
            os.kill(pid, signal.SIGKILL)
        os.close(pidfd)


def test_shell_is_enabled_only_on_request():
    assert set(default_executors()) == {"echo", "sleep"}
    assert set(default_executors(allow_shell=True)) == {"echo", "sleep", "shell"}
    args = build_parser().parse_args(["--id", "x", "--capabilities", "a, b,,c", "--capacity", "3"])
    agent = agent_from_args(args)
    assert "shell" not in agent.executors and agent.default_executor == "echo"
    assert (agent.device_id, agent.capabilities, agent.capacity) == ("x", ["a", "b", "c"], 3)
    agent = agent_from_args(build_parser().parse_args(
        ["--id", "x", "--allow-shell", "--executor", "sleep"]))
    assert "shell" in agent.executors and agent.default_executor == "sleep"


def test_plugins_load_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "orion_plugin_probe.py").write_text(
        "async def probe(assignment):\n    return 'probed'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    name, executor = load_plugin("p=orion_plugin_probe:probe")
    assert name == "p" and executor.__name__ == "probe"
    sys.modules.pop("orion_plugin_probe", None)


def test_plugins_load_functions_and_classes():
    name, executor = load_plugin("e=orion_grpc.device.executors:echo")
    assert (name, executor) == ("e", echo)
    name, executor = load_plugin("sh=orion_grpc.device.executors:ShellExecutor")
    assert name == "sh" and isinstance(executor, ShellExecutor)
    with pytest.raises(ValueError, match="NAME=MODULE:ATTR"):
        load_plugin("just-a-name")
    agent = agent_from_args(build_parser().parse_args(
        ["--id", "x", "--plugin", "mine=orion_grpc.device.executors:sleep", "--executor", "mine"]))
    assert agent.executors["mine"] is sleep and agent.default_executor == "mine"
