"""End-to-end latency of a one-star orion, across three processes on loopback.

    python bench/one_star_latency.py                 # 200 runs after 20 warm-up runs
    python bench/one_star_latency.py --runs 1000 --executor sleep --seconds 0

This process is the client. It starts ``orion serve --port 0`` and one ``orion device``
daemon as subprocesses (``orion_grpc.demo.LocalFleet``), then, one after the other, sends a
one-star orion with ``OrchestrateOrion`` (submit and wait for the result in one call) and
times it: client -> server -> device process (the ``echo`` executor, which answers at once)
-> server -> client. For comparison it also times ``ExecuteSingleTask`` (one star outside
any orion) and the in-process engine with a simulated device (no gRPC, no processes).

Prints p50 / p90 / p99 / max and writes bench/results/one-star-<timestamp>.json (and
latest-one-star.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orion_grpc import (
    EventBus,
    FakeDevice,
    OrionDeviceManager,
    TaskOrion,
    TaskOrionOrchestrator,
    TaskStar,
)
from orion_grpc.client import OrionClient
from orion_grpc.demo import DeviceSpec, LocalFleet
from orion_grpc.gen.orion.v1 import orion_pb2, task_star_pb2

DEVICE = "bench-01"


def summarize(name: str, samples: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, round(p / 100 * (len(ms) - 1)))], 3)

    row = {"path": name, "runs": len(ms), "p50_ms": pct(50), "p90_ms": pct(90),
           "p99_ms": pct(99), "max_ms": round(ms[-1], 3),
           "mean_ms": round(statistics.fmean(ms), 3), "min_ms": round(ms[0], 3)}
    print(f"{name:<44} p50 {row['p50_ms']:>7.2f} ms  p90 {row['p90_ms']:>7.2f}  "
          f"p99 {row['p99_ms']:>7.2f}  max {row['max_ms']:>7.2f}  (n={len(ms)})", flush=True)
    return row


def one_star(i: int, task_data: dict[str, Any]) -> orion_pb2.TaskOrion:
    orion = orion_pb2.TaskOrion(orion_id=f"bench-{i}")
    star = orion.tasks.add(task_id="one", description="answer at once",
                           target_device_id=DEVICE)
    star.task_data.update(task_data)
    return orion


async def over_grpc(runs: int, warmup: int, task_data: dict[str, Any]) -> list[dict[str, Any]]:
    spec = DeviceSpec(DEVICE, "linux", ("bench",), 1)
    async with LocalFleet([spec], server_args=["--event-retention", "100000"]) as fleet:
        async with OrionClient(fleet.target, timeout=30) as client:
            await client.wait_ready()
            orchestrate: list[float] = []
            for i in range(warmup + runs):
                orion = one_star(i, task_data)
                start = time.perf_counter()
                result = await client.orchestrate_orion(orion)
                elapsed = time.perf_counter() - start
                if result["status"] != "completed":
                    raise SystemExit(f"run {i}: {result['status']}: {result['errors']}")
                if i >= warmup:
                    orchestrate.append(elapsed)
            single: list[float] = []
            for i in range(warmup + runs):
                star = task_star_pb2.TaskStar(task_id=f"single-{i}", description="answer",
                                              target_device_id=DEVICE)
                star.task_data.update(task_data)
                start = time.perf_counter()
                await client.execute_single_task(star)
                if i >= warmup:
                    single.append(time.perf_counter() - start)
    return [summarize("OrchestrateOrion, 1 star (3 processes)", orchestrate),
            summarize("ExecuteSingleTask (3 processes)", single)]


async def in_process(runs: int, warmup: int) -> dict[str, Any]:
    bus = EventBus()
    devices = OrionDeviceManager(event_bus=bus)
    await FakeDevice(DEVICE, "linux", capacity=1).connect(devices)
    orchestrator = TaskOrionOrchestrator(devices, enable_logging=False, event_bus=bus)
    samples = []
    for i in range(warmup + runs):
        orion = TaskOrion(orion_id=f"inproc-{i}")
        orion.add_task(TaskStar("one", description="answer at once", target_device_id=DEVICE))
        start = time.perf_counter()
        await orchestrator.orchestrate_orion(orion)
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    return summarize("in-process engine, simulated device", samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--executor", default="echo", help="device executor (default echo)")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="with --executor sleep: seconds each star sleeps")
    args = ap.parse_args()
    task_data: dict[str, Any] = {"executor": args.executor}
    if args.executor == "sleep":
        task_data["seconds"] = args.seconds
    rows = asyncio.run(over_grpc(args.runs, args.warmup, task_data))
    rows.append(asyncio.run(in_process(args.runs, args.warmup)))
    out = {"benchmark": "one-star-latency", "date": datetime.now(UTC).isoformat(),
           "machine": {"python": platform.python_version(), "platform": platform.platform(),
                       "cpus": os.cpu_count()},
           "executor": task_data, "runs": args.runs, "warmup": args.warmup, "rows": rows}
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for name in (f"one-star-{stamp}.json", "latest-one-star.json"):
        (results / name).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
