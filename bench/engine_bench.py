"""Engine benchmark: in-process scheduler with fake devices that answer at once.

    python bench/engine_bench.py                 # all shapes at 1k, 10k, 100k
    python bench/engine_bench.py --sizes 1000 10000 --shapes wide chains

Prints a table and writes bench/results/engine-<timestamp>.json (and latest-engine.json).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import random
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orion_grpc import (
    EventBus,
    FakeDevice,
    OrionDeviceManager,
    TaskOrion,
    TaskOrionOrchestrator,
    TaskStar,
    TaskStarLine,
)

SHAPES = ("wide", "chains", "fan", "layered")


def build(shape: str, n: int, seed: int = 7) -> TaskOrion:
    orion = TaskOrion(orion_id=f"bench-{shape}-{n}")
    ids = [f"s{i}" for i in range(n)]
    for tid in ids:
        orion.add_task(TaskStar(task_id=tid, description="noop"))
    add = orion.add_dependency
    if shape == "chains":
        per = max(1, n // 100)
        for i in range(n):
            if i % per:
                add(TaskStarLine(ids[i - 1], ids[i], line_id=f"l{i}"))
    elif shape == "fan":
        for i in range(1, n - 1):
            add(TaskStarLine(ids[0], ids[i], line_id=f"a{i}"))
            add(TaskStarLine(ids[i], ids[n - 1], line_id=f"b{i}"))
    elif shape == "layered":
        rng = random.Random(seed)
        width = max(1, int(n ** 0.5))
        edges: set[tuple[int, int]] = set()
        while len(edges) < 3 * n and n > width:
            dst = rng.randrange(width, n)
            layer_start = (dst // width) * width
            src = rng.randrange(max(0, layer_start - width), layer_start)
            edges.add((src, dst))
        for k, (s, d) in enumerate(sorted(edges)):
            add(TaskStarLine(ids[s], ids[d], line_id=f"e{k}"))
    return orion


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run_one(shape: str, n: int, devices: int, capacity: int) -> dict[str, float | int | str]:
    gc.collect()
    bus = EventBus()
    dm = OrionDeviceManager(event_bus=bus)
    for d in range(devices):
        await FakeDevice(f"dev{d}", capacity=capacity, record=False).connect(dm)
    t0 = time.perf_counter()
    orion = build(shape, n)
    t1 = time.perf_counter()
    ok, errors = orion.validate_dag()
    assert ok, errors
    t2 = time.perf_counter()
    orch = TaskOrionOrchestrator(dm, enable_logging=False, event_bus=bus)
    result = await orch.orchestrate_orion(orion, assignment_strategy="round_robin")
    t3 = time.perf_counter()
    assert result["status"] == "completed", result["status"]
    run = t3 - t2
    return {"shape": shape, "stars": n, "edges": orion.dependency_count,
            "build_s": round(t1 - t0, 3), "validate_s": round(t2 - t1, 3),
            "run_s": round(run, 3), "stars_per_s": round(n / run),
            "us_per_star": round(run / n * 1e6, 1), "rss_mb": round(rss_mb(), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--capacity", type=int, default=64)
    args = ap.parse_args()
    rows = []
    for shape in args.shapes:
        for n in args.sizes:
            rows.append(asyncio.run(run_one(shape, n, args.devices, args.capacity)))
            r = rows[-1]
            print(f"{r['shape']:>8} {r['stars']:>7} stars {r['edges']:>7} edges | build "
                  f"{r['build_s']:>6.3f}s validate {r['validate_s']:>6.3f}s run {r['run_s']:>7.3f}s"
                  f" | {r['stars_per_s']:>7} stars/s {r['us_per_star']:>6} us/star | "
                  f"peak RSS {r['rss_mb']} MB", flush=True)
    growth = {}
    for shape in args.shapes:
        by_n = {r["stars"]: r["us_per_star"] for r in rows if r["shape"] == shape}
        lo, hi = min(by_n), max(by_n)
        if lo != hi:
            growth[shape] = round(by_n[hi] / by_n[lo], 2)
    print("\nper-star cost growth (largest N / smallest N):", growth)
    out = {"benchmark": "engine", "date": datetime.now(UTC).isoformat(),
           "machine": {"python": platform.python_version(), "platform": platform.platform(),
                       "cpus": __import__("os").cpu_count()},
           "devices": args.devices, "capacity": args.capacity, "rows": rows,
           "per_star_growth": growth}
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (results / f"engine-{stamp}.json").write_text(json.dumps(out, indent=2))
    (results / "latest-engine.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
