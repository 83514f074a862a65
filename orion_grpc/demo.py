"""``orion demo``: an orion on a real fleet — a server and three device daemons, each its own
process, on loopback.

    orion demo [FILE] [--latency S] [--no-flaky] [--keep]
    orion demo --in-process [FILE]       the same orion on in-process simulated devices

The real demo starts ``orion serve --port 0`` (reading its ``listening on H:P`` line) and three
``orion device`` daemons (linux / windows / android, the capabilities the example asks for),
submits the orion, shows its live progress, prints the results and exits 0 only if the orion
COMPLETED. The processes are always stopped, on Ctrl-C and SIGTERM too.

Stars do simulated work with the daemons' ``sleep`` executor (``task_data.seconds``,
``task_data.result``). The demo daemons add one thing to it: ``task_data.fail_attempts = n``
fails the star's first n attempts, so the demo shows a real retry.

``LocalFleet`` (server + daemons as subprocesses) is reusable: ``bench/one_star_latency.py``
runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from .core import (
    EventBus,
    EventType,
    FakeDevice,
    IEventObserver,
    OrionDeviceManager,
    TaskEvent,
    TaskOrion,
    TaskOrionOrchestrator,
)
from .core.events import Event
from .device.executors import Assignment
from .device.executors import sleep as builtin_sleep
from .gen.orion.v1 import orion_pb2
from .transport import SECURITY_ENV

EXAMPLE = "release_pipeline.json"  # packaged copy of examples/release_pipeline.json


@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    device_type: str
    capabilities: tuple[str, ...]
    capacity: int = 1


# The demo fleet: what examples/release_pipeline.json asks for.
DEMO_FLEET = (
    DeviceSpec("linux-build-01", "linux", ("python", "docker"), 2),
    DeviceSpec("win-desktop-07", "windows", ("msbuild", "office"), 1),
    DeviceSpec("pixel-8", "android", ("adb", "camera"), 1),
)

# The demo daemons' executor override (see the module docstring).
DEMO_PLUGIN = "sleep=orion_grpc.demo:sleep"


def example_path() -> str:
    return str(resources.files("orion_grpc.examples").joinpath(EXAMPLE))


# ---------------------------------------------------------------------- simulated work
def fail_attempts(task_data: dict[str, Any]) -> int:
    try:
        return max(0, int(task_data.get("fail_attempts") or 0))
    except (TypeError, ValueError):
        return 0


async def sleep(assignment: Assignment) -> Any:
    """The built-in ``sleep`` executor, plus ``task_data.fail_attempts``: the first n attempts
    fail after their sleep (loaded by the demo daemons with ``--plugin``)."""
    failures = fail_attempts(assignment.task_data)
    if assignment.attempt <= failures:
        data = {**assignment.task_data,
                "fail": f"simulated failure of attempt {assignment.attempt} "
                        f"(task_data.fail_attempts = {failures})"}
        assignment = dataclasses.replace(assignment, task_data=data)
    return await builtin_sleep(assignment)


def with_latency(document: dict[str, Any], latency: float | None, flaky: bool) -> dict[str, Any]:
    """The orion file with every star's simulated work set to ``latency`` seconds, and
    (``flaky=False``) without the simulated failures. Works on the proto JSON mapping."""
    orion = document.get("orion", document)
    for task in orion.get("tasks") or []:
        key = "taskData" if "taskData" in task else "task_data"
        data = dict(task.get(key) or {})
        if latency is not None:
            data.setdefault("executor", "sleep")
            data["seconds"] = latency
        if not flaky:
            data.pop("fail_attempts", None)
        task[key] = data
    return document


# ---------------------------------------------------------------------- processes
def orion_command(*args: str) -> list[str]:
    """``orion ARGS`` run by this interpreter (works from a checkout and when installed)."""
    return [sys.executable, "-m", "orion_grpc.cli", *args]


def log_tail(log: Any, lines: int = 15) -> str:
    """The last ``lines`` of a child's log file, indented for an error message ("" if none)."""
    try:
        log.seek(0)
        text = log.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""
    return ("\n  " + "\n  ".join(text.splitlines()[-lines:])) if text else ""


class ChildProcess:
    """A subprocess whose stdout is read line by line and whose stderr goes to a log file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Any) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.first_line = ""
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, name: str, argv: Sequence[str], env: dict[str, str] | None = None
                    ) -> ChildProcess:
        log = tempfile.TemporaryFile(mode="w+b")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=log, env={**_plain_env(), "PYTHONUNBUFFERED": "1", **(env or {})})
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line, which must start with ``prefix``; then stdout is drained
        in the background (so the child never blocks on a full pipe)."""
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name} did not start within {timeout:g}s"
                               f"{self.stderr_tail()}") from None
        line = raw.decode(errors="replace").strip()
        if not line.startswith(prefix):
            raise RuntimeError(f"{self.name} did not start: "
                               f"{line or f'exit status {await self.proc.wait()}'}"
                               f"{self.stderr_tail()}")
        self.first_line = line
        self._drain = asyncio.create_task(self._drain_stdout())
        return line

    async def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    def stderr_tail(self, lines: int = 15) -> str:
        return log_tail(self.log, lines)

    async def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """``sig`` (graceful), then SIGKILL if it has not exited after ``timeout``."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        self.log.close()
        return self.proc.returncode  # type: ignore[return-value]


def _plain_env() -> dict[str, str]:
    """This environment without TLS and credential settings: the fleet is a plaintext
    loopback one, whatever the caller has configured for a real server."""
    return {k: v for k, v in os.environ.items() if k not in SECURITY_ENV}


class LocalFleet:
    """``orion serve --port 0`` and ``orion device`` daemons as subprocesses on loopback.

    ``async with LocalFleet(devices) as fleet:`` starts them (ready = the server printed
    ``listening on H:P`` and every daemon ``device ID connected``); leaving stops them
    (SIGTERM, then SIGKILL after a timeout), whatever happened.
    """

    def __init__(self, devices: Sequence[DeviceSpec] = DEMO_FLEET, *,
                 server_args: Sequence[str] = (), device_args: Sequence[str] = (),
                 start_timeout: float = 30.0) -> None:
        self.devices = list(devices)
        self.server_args = list(server_args)
        self.device_args = list(device_args)
        self.start_timeout = start_timeout
        self.server: ChildProcess | None = None
        self.daemons: dict[str, ChildProcess] = {}
        self.target = ""

    async def __aenter__(self) -> LocalFleet:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        # A fleet is a throwaway: its server keeps nothing across runs (:memory:) unless the
        # caller passes --store (orion serve would otherwise use ./orion-data).
        store = () if any(a.startswith("--store") for a in self.server_args) \
            else ("--store", ":memory:")
        self.server = await ChildProcess.start("server", orion_command(
            "serve", "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING", *store,
            *self.server_args))
        line = await self.server.wait_line("listening on ", self.start_timeout)
        port = line.removeprefix("listening on ").rsplit(":", 1)[1]
        self.target = f"127.0.0.1:{port}"
        await asyncio.gather(*(self.start_device(spec) for spec in self.devices))

    async def start_device(self, spec: DeviceSpec, *extra: str) -> ChildProcess:
        argv = orion_command("device", "--server", self.target, "--id", spec.device_id,
                             "--type", spec.device_type, "--capabilities",
                             ",".join(spec.capabilities), "--capacity", str(spec.capacity),
                             "--log-level", "WARNING", *self.device_args, *extra)
        daemon = await ChildProcess.start(f"device {spec.device_id}", argv)
        self.daemons[spec.device_id] = daemon
        await daemon.wait_line(f"device {spec.device_id} connected", self.start_timeout)
        return daemon

    async def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """Daemons first (they drain), then the server; returns every exit status."""
        codes: dict[str, int] = {}
        daemons, self.daemons = self.daemons, {}
        results = await asyncio.gather(*(d.stop(timeout) for d in daemons.values()))
        codes.update(zip(daemons, results, strict=True))
        if self.server is not None:
            server, self.server = self.server, None
            codes["server"] = await server.stop(timeout)
        return codes


# ---------------------------------------------------------------------- the real demo
def _line_counts(orion: TaskOrion) -> str:
    counts: dict[str, int] = {}
    for line in orion.get_all_dependencies():
        counts[line.dependency_type.value] = counts.get(line.dependency_type.value, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in counts.items())


async def run_demo(path: str | None, *, latency: float | None = None, flaky: bool = True,
                   keep: bool = False, strategy: str | None = None,
                   out: TextIO | None = None, live: bool | None = None) -> int:
    """The real demo; returns the exit status (0 only if the orion COMPLETED)."""
    from .client import OrionClient
    from .client.client import strategy_pb
    from .client.commands import follow_orion
    from .client.files import orion_from_document, read_document, strategy_name
    from .transport import ChannelSecurity

    out = out or sys.stdout
    document = with_latency(read_document(path or example_path()), latency, flaky)
    orion, request = orion_from_document(document)  # check it before starting anything
    if strategy:
        request.assignment_strategy = strategy_pb(strategy)  # type: ignore[assignment]
    elif not request.assignment_strategy:  # the fleet is heterogeneous: match capabilities
        request.assignment_strategy = orion_pb2.ASSIGNMENT_STRATEGY_CAPABILITY_MATCH

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    terminated: list[bool] = []

    def on_sigterm() -> None:
        terminated.append(True)
        if main is not None:
            main.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows; not main thread
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    say(f"orion demo: a server and {len(DEMO_FLEET)} device daemons, each its own process, "
        "on loopback (Ctrl-C stops them all)")
    outcome: int | None = None
    fleet = LocalFleet(DEMO_FLEET, server_args=["--retry-backoff-base", "0.2", "--grace", "1"],
                       device_args=["--plugin", DEMO_PLUGIN, "--drain-timeout", "2",
                                    "--backoff-max", "1"])
    try:
        await fleet.start()
        assert fleet.server is not None
        say(f"  server          {fleet.server.first_line} (pid {fleet.server.pid})")
        for spec in DEMO_FLEET:
            say(f"  {spec.device_id:<15} {spec.device_type:<8} "
                f"{', '.join(spec.capabilities):<16} capacity {spec.capacity}  "
                f"connected (pid {fleet.daemons[spec.device_id].pid})")
        async with OrionClient(fleet.target, timeout=10, security=ChannelSecurity()) as client:
            response = await client._call(client.orchestrator.SubmitOrion, request)
            say(f"submitted {response.orion_id} ({orion.name}): {orion.task_count} stars, "
                f"{orion.dependency_count} lines ({_line_counts(orion)}), strategy "
                f"{strategy_name(request)}")
            progress = await follow_orion(client, response.orion_id, out=out, live=live,
                                          results=True)
        result = progress.result()
        outcome = 0 if result is not None and result["status"] == "completed" else 1
        if keep:
            say(f"\nthe fleet keeps running: export ORION_SERVER={fleet.target}, then try "
                "'orion devices', 'orion submit examples/expense_report.yaml --wait', "
                "'orion watch --history'. Ctrl-C stops it.")
            await asyncio.Event().wait()
        return outcome
    except asyncio.CancelledError:
        if keep and outcome is not None:  # the orion ran; stopping the fleet was the plan
            say("\nstopping the fleet")
            return outcome
        say("\ninterrupted: stopping the fleet")
        if terminated:
            return 143
        raise
    except RuntimeError as exc:  # a process did not start
        say(f"error: {exc}")
        return 2
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        codes = await fleet.stop()
        if codes:
            say("stopped " + ", ".join(f"{name} (exit {code})" for name, code in codes.items()))


# ---------------------------------------------------------------------- in process
class _Printer(IEventObserver):
    """Prints one line per star transition."""

    def __init__(self, orion: TaskOrion) -> None:
        self.orion = orion

    async def on_event(self, event: Event) -> None:
        if not isinstance(event, TaskEvent):
            return
        task = self.orion.get_task(event.task_id)
        name = task.name if task else event.task_id
        device = event.data.get("device_id") or "-"
        mark = {EventType.TASK_STARTED: "->", EventType.TASK_COMPLETED: "ok",
                EventType.TASK_FAILED: "!!", EventType.TASK_RETRYING: "~~",
                EventType.TASK_CANCELLED: "xx"}.get(event.event_type, "  ")
        line = f"  [{mark}] {name:<26} {event.event_type.value:<15} on {device}"
        if event.event_type is EventType.TASK_RETRYING:
            line += f" (attempt failed: {event.data.get('error')})"
        elif event.error and event.event_type is not EventType.TASK_STARTED:
            line += f" ({event.error})"
        print(line, flush=True)


def _summary(orion: TaskOrion, result: dict[str, Any]) -> str:
    rows = [f"\n{'star':<26} {'device':<16} {'status':<10} {'tries':>5} {'seconds':>8}"]
    for task in orion.get_all_tasks():
        dur = task.execution_duration
        rows.append(f"{task.name:<26} {task.target_device_id or '-':<16} "
                    f"{task.status.value:<10} {task.current_retry + 1:>5} "
                    f"{(f'{dur:.2f}' if dur is not None else '-'):>8}")
    stats = result["statistics"]
    names = [orion.get_task(t).name for t in stats["critical_path_tasks"]]  # type: ignore[union-attr]
    rows.append(f"\norion {orion.orion_id}: {result['status'].upper()} — "
                f"{stats['task_status_counts']}")
    rows.append(f"critical path ({stats['critical_path_length']:.2f}s): {' -> '.join(names)}")
    rows.append(f"parallelism: {stats['parallelism_ratio']:.2f}x "
                f"({stats['total_work']:.2f}s of work)")
    return "\n".join(rows)


async def run_in_process(orion: TaskOrion, latency: float | None, flaky: bool,
                         strategy: str = "capability_match") -> int:
    """The orion on in-process simulated devices (no gRPC, no processes): each star takes
    ``latency`` seconds (default: its ``task_data.seconds``) and returns its
    ``task_data.result``; ``task_data.fail_attempts`` fails the first attempts if ``flaky``."""
    bus = EventBus()
    dm = OrionDeviceManager(event_bus=bus)

    def seconds(lease: Any) -> float:
        if latency is not None:
            return latency
        try:
            return float(lease.task_data.get("seconds", 0.2))
        except (TypeError, ValueError):
            return 0.2

    def handler(lease: Any) -> Any:
        failures = fail_attempts(lease.task_data) if flaky else 0
        if lease.attempt + 1 <= failures:
            raise RuntimeError(f"simulated failure of attempt {lease.attempt + 1} "
                               f"(task_data.fail_attempts = {failures})")
        if "result" in lease.task_data:
            return lease.task_data["result"]
        return {"status": "ok", "device": lease.device_id, "task": lease.task_id}

    for spec in DEMO_FLEET:
        await FakeDevice(spec.device_id, spec.device_type, list(spec.capabilities),
                         spec.capacity, latency=seconds, handler=handler).connect(dm)
    print(f"orion {orion.orion_id}: {orion.task_count} stars, {orion.dependency_count} lines, "
          f"{len(DEMO_FLEET)} simulated devices: "
          + ", ".join(f"{s.device_id} ({s.device_type})" for s in DEMO_FLEET))
    bus.subscribe(_Printer(orion))
    orch = TaskOrionOrchestrator(dm, enable_logging=False, event_bus=bus, retry_backoff_base=0.05)
    result = await orch.orchestrate_orion(orion, assignment_strategy=strategy)
    await bus.flush(timeout=5)
    print(_summary(orion, result))
    return 0 if result["status"] == "completed" else 1


def load_for_in_process(path: str | None) -> tuple[TaskOrion, str]:
    """The orion of ``path`` (default: the example) and the strategy it asks for."""
    from .client.files import load_orion, strategy_name

    orion, request = load_orion(path or str(Path(example_path())))
    return orion, strategy_name(request) or "capability_match"
