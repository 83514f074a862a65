"""Executors: what a device daemon does with an assignment.

An executor is any ``async def executor(assignment: Assignment) -> result`` where the result
is a JSON value (dict, list, str, number, bool or None). Returning completes the star;
raising fails it (``ExecutorError`` for a clean message, optionally with a result payload).
Cancellation (the server cancelled the lease, or the star's timeout passed) arrives as
``asyncio.CancelledError``: clean up and let it propagate. See docs/devices.md.

Built-ins: ``echo``, ``sleep`` and ``shell`` (``ShellExecutor``; a daemon enables it only
when the operator passes ``--allow-shell``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

ProgressCallback = Callable[[float, str, Mapping[str, Any] | None], None]


def _no_progress(progress: float, message: str, data: Mapping[str, Any] | None) -> None:
    return None


@dataclass(frozen=True)
class Assignment:
    """One attempt of one star, as an executor sees it (plain Python, no protobuf)."""

    lease_id: str
    task_id: str
    attempt: int  # 1-based
    task_text: str  # "Task Description: ...\nTips for Completion:\n - ..."
    task_data: dict[str, Any]
    orion_id: str = ""
    timeout: float | None = None  # seconds; the daemon enforces it around the executor
    # When the server expires the lease, in THIS device's clock: the server's deadline shifted
    # by the clock difference measured at welcome, so it compares with time.time() even on a
    # device whose clock is off. Prefer ``timeout`` (a duration) where it will do.
    deadline: datetime | None = None
    trace_context: Mapping[str, str] = field(default_factory=dict)
    device_id: str = ""
    # The full star (orion.v1.TaskStar in its JSON mapping, snake_case field names: name,
    # device_type, priority, required_capabilities, expected_output_type, ...) when the server
    # sends it (stars of an orion); empty otherwise.
    star: Mapping[str, Any] = field(default_factory=dict)
    _progress: ProgressCallback = field(default=_no_progress, repr=False, compare=False)

    def report_progress(self, progress: float = 0.0, message: str = "",
                        data: Mapping[str, Any] | None = None) -> None:
        """Tell the server how far along this attempt is (``progress`` in [0, 1]).

        Never blocks; dropped while disconnected or when the daemon streams no progress.
        """
        self._progress(progress, message, data)


class Executor(Protocol):
    """Runs an assignment; returns its JSON result or raises to fail the star."""

    async def __call__(self, assignment: Assignment) -> Any: ...


class ExecutorError(Exception):
    """Fail the star with ``message``; ``result`` (JSON) travels along for diagnostics."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------- echo
async def echo(assignment: Assignment) -> dict[str, Any]:
    """Return what was sent: the task text and task_data (for demos and tests).

    Like the in-process FakeDevice, results say ``"status": "ok"``, so an orion whose
    conditions test ``result.status`` behaves the same on a simulated and a real fleet.
    """
    return {"status": "ok", "device_id": assignment.device_id, "task_id": assignment.task_id,
            "text": assignment.task_text, "task_data": assignment.task_data}


# ---------------------------------------------------------------------- sleep
async def sleep(assignment: Assignment) -> Any:
    """Sleep ``task_data.seconds`` (default 1), reporting progress along the way.

    ``task_data.fail`` (a message) fails the star afterwards; ``task_data.result`` is returned
    instead of the default ``{"status": "ok", "slept": seconds, ...}``.
    """
    data = assignment.task_data
    try:
        seconds = float(data.get("seconds", 1.0))
    except (TypeError, ValueError):
        raise ExecutorError(f"sleep: task_data.seconds must be a number, got "
                            f"{data.get('seconds')!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ExecutorError(f"sleep: task_data.seconds must be >= 0, got {seconds}")
    steps = max(1, min(10, math.ceil(seconds * 4)))  # a report every >= 0.25 s, at most 10
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        assignment.report_progress(step / steps, f"slept {seconds * step / steps:.2f}s")
    if data.get("fail"):
        raise ExecutorError(str(data["fail"]))
    if "result" in data:
        return data["result"]
    return {"status": "ok", "slept": seconds, "device_id": assignment.device_id,
            "task_id": assignment.task_id}


# ---------------------------------------------------------------------- shell
class ShellExecutor:
    """Run ``task_data.command`` and return ``{exit_code, stdout, stderr}``.

    ``command`` is a string (run by the system shell) or a list of strings (run directly);
    optional ``cwd`` and ``env`` (merged into the daemon's environment). A non-zero exit code
    fails the star. The star's timeout is enforced by the daemon, which cancels this
    executor: the whole process group is then killed. Output is captured up to
    ``max_output`` bytes per stream (the rest is drained and counted, not kept).
    """

    def __init__(self, max_output: int = 64 * 1024) -> None:
        self.max_output = max_output

    async def __call__(self, assignment: Assignment) -> dict[str, Any]:
        data = assignment.task_data
        command = data.get("command")
        cwd = data.get("cwd")
        env = None
        if isinstance(data.get("env"), dict):
            env = {**os.environ, **{str(k): str(v) for k, v in data["env"].items()}}
        kwargs: dict[str, Any] = {
            "stdin": asyncio.subprocess.DEVNULL, "stdout": asyncio.subprocess.PIPE,
            "stderr": asyncio.subprocess.PIPE, "cwd": cwd, "env": env,
        }
        if sys.platform != "win32":
            kwargs["start_new_session"] = True  # own process group: a kill reaches children
        if isinstance(command, str) and command.strip():
            spawn = asyncio.ensure_future(asyncio.create_subprocess_shell(command, **kwargs))
        elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
            spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(*command, **kwargs))
        else:
            raise ExecutorError("shell: task_data.command must be a non-empty string or a list "
                                f"of strings, got {command!r}")
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # Cancelled while the process was starting (it may already run): asyncio's own
            # cleanup would kill only the shell, so finish starting, then kill the group.
            with contextlib.suppress(Exception):
                started = await spawn
                _kill(started)
                await asyncio.wait_for(started.wait(), 5)
            raise
        try:
            assert proc.stdout is not None and proc.stderr is not None
            (stdout, out_dropped), (stderr, err_dropped) = await asyncio.gather(
                _read_capped(proc.stdout, self.max_output),
                _read_capped(proc.stderr, self.max_output))
            code = await proc.wait()
        except BaseException:  # cancelled (timeout / lease cancel) or failed: no orphans
            _kill(proc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 5)
            raise
        result: dict[str, Any] = {"exit_code": code, "stdout": stdout, "stderr": stderr}
        if out_dropped or err_dropped:
            result["truncated_bytes"] = {"stdout": out_dropped, "stderr": err_dropped}
        if code != 0:
            tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
            raise ExecutorError(f"command exited with code {code}"
                                + (f": {tail[0][:500]}" if tail else ""), result)
        return result


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> tuple[str, int]:
    kept = bytearray()
    dropped = 0
    while chunk := await stream.read(65536):
        room = cap - len(kept)
        kept += chunk[:room] if room > 0 else b""
        dropped += max(0, len(chunk) - max(room, 0))
    return kept.decode("utf-8", errors="replace"), dropped


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    try:
        if sys.platform != "win32":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
    except ProcessLookupError:
        pass


def default_executors(*, allow_shell: bool = False) -> dict[str, Executor]:
    """The built-in executors by name; ``shell`` only when explicitly allowed."""
    executors: dict[str, Executor] = {"echo": echo, "sleep": sleep}
    if allow_shell:
        executors["shell"] = ShellExecutor()
    return executors
