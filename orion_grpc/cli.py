"""The ``orion`` command line.

    orion demo                     run the example orion on a simulated fleet, in process
    orion run FILE.json            run an orion described in JSON on a simulated fleet
    orion validate FILE.json       check an orion file and list every problem
    orion serve                    run the gRPC server (flags or ORION_* environment)
    orion submit FILE [--wait]     submit an orion to a server (and follow it)
    orion status ORION_ID          an orion's status
    orion devices                  the connected devices
    orion watch [ORION_ID]         stream events
    orion cancel ORION_ID          cancel a running orion
    orion device --id ID ...       run a device daemon that executes stars for a server

Client commands take --server H:P (default $ORION_SERVER, else 127.0.0.1:50051) and --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from .client.commands import add_commands
from .core import (
    EventBus,
    EventType,
    FakeDevice,
    IEventObserver,
    OrionDeviceManager,
    OrionError,
    TaskEvent,
    TaskOrion,
    TaskOrionOrchestrator,
)
from .core.events import Event
from .core.spec import orion_from_spec
from .device.cli import add_device_command

EXAMPLE = "release_pipeline.json"

# The simulated fleet of the demo: (device id, type, capabilities, capacity).
DEMO_FLEET = [
    ("linux-build-01", "linux", ["python", "docker"], 2),
    ("win-desktop-07", "windows", ["msbuild", "office"], 1),
    ("pixel-8", "android", ["adb", "camera"], 1),
]


def _load_spec(path: str | None) -> dict[str, Any]:
    if path is None:
        return json.loads(resources.files("orion_grpc.examples").joinpath(EXAMPLE).read_text())
    return json.loads(Path(path).read_text(encoding="utf-8"))


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


async def _run_simulated(spec: dict[str, Any], latency: float, flaky: bool) -> int:
    bus = EventBus()
    dm = OrionDeviceManager(event_bus=bus)
    for device_id, kind, caps, capacity in DEMO_FLEET:
        fails = {"build_win": 1} if flaky and kind == "windows" else {}
        await FakeDevice(device_id, kind, caps, capacity, latency=latency,
                         fail_attempts=fails,
                         handler=lambda lease: {"status": "ok", "device": lease.device_id,
                                                "task": lease.task_id}).connect(dm)
    orion = orion_from_spec(spec)
    print(f"orion {orion.orion_id}: {orion.task_count} stars, {orion.dependency_count} lines, "
          f"{len(DEMO_FLEET)} simulated devices: "
          + ", ".join(f"{d} ({k})" for d, k, _, _ in DEMO_FLEET))
    bus.subscribe(_Printer(orion))
    orch = TaskOrionOrchestrator(dm, enable_logging=False, event_bus=bus, retry_backoff_base=0.05)
    result = await orch.orchestrate_orion(orion, assignment_strategy="capability_match")
    await bus.flush(timeout=5)
    print(_summary(orion, result))
    return 0 if result["status"] == "completed" else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        orion = orion_from_spec(_load_spec(args.file))
    except OrionError as exc:
        print(f"invalid: {exc.message}", file=sys.stderr)
        for v in exc.violations:
            print(f"  - {v.field}: {v.description}", file=sys.stderr)
        return 2
    print(f"ok: {orion.orion_id} has {orion.task_count} stars and {orion.dependency_count} lines")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the example orion on a simulated fleet")
    demo.add_argument("--latency", type=float, default=0.2,
                      help="simulated seconds per star (default 0.2)")
    demo.add_argument("--no-flaky", action="store_true",
                      help="do not make the Windows build fail once (shows a retry)")
    run = sub.add_parser("run", help="run an orion JSON file on a simulated fleet")
    run.add_argument("file")
    run.add_argument("--latency", type=float, default=0.05)
    validate = sub.add_parser("validate", help="validate an orion JSON file")
    validate.add_argument("file")
    parser.set_defaults(handlers={**add_commands(sub),  # serve, submit, status, devices, watch, cancel
                                  **add_device_command(sub)})  # device (orion_grpc/device/cli.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handlers.get(args.command)
    if handler is not None:
        return handler(args)
    try:
        if args.command == "demo":
            return asyncio.run(_run_simulated(_load_spec(None), args.latency, not args.no_flaky))
        if args.command == "run":
            return asyncio.run(_run_simulated(_load_spec(args.file), args.latency, False))
        return _cmd_validate(args)
    except OrionError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
