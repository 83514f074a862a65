"""What metrics cost the engine: the same orions with metrics off and on.

    python bench/metrics_overhead.py                  # wide and chains, 10k stars, 5 rounds
    python bench/metrics_overhead.py --stars 20000 --rounds 3

The engine is set up as ``orion serve`` sets it up (an OrionEngine whose bus feeds the API's
EventLog, so star events are built either way), with 16 FakeDevices of capacity 64 answering
on the next loop turn. "on" adds what ``--metrics-port`` adds: ``OrionMetrics`` attached
(its event-counting observer and its engine hooks). Also timed: one scrape (``render()``)
after the run, which records the values the hooks queued. Rounds alternate off/on; the table
shows the median. Prints a table and writes bench/results/metrics-<timestamp>.json (and
latest-metrics.json).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_bench import build

from orion_grpc.api.event_log import EventLog
from orion_grpc.core import EngineConfig, FakeDevice, OrionEngine
from orion_grpc.observability import OrionMetrics


async def run_once(shape: str, n: int, metrics_on: bool) -> tuple[float, float]:
    """(seconds for the run, seconds for one scrape afterwards; 0 when off)."""
    gc.collect()
    engine = OrionEngine(EngineConfig())
    engine.bus.subscribe(EventLog(retention=50_000))
    metrics = OrionMetrics() if metrics_on else None
    if metrics is not None:
        engine.orchestrator.set_tracer_hooks(metrics.attach(engine))
    for d in range(16):
        await FakeDevice(f"dev{d}", capacity=64, record=False).connect(engine.devices)
    orion = build(shape, n)
    start = time.perf_counter()
    result = await engine.orchestrator.orchestrate_orion(orion, assignment_strategy="round_robin")
    await engine.bus.flush()  # the observers' work counts too
    run = time.perf_counter() - start
    assert result["status"] == "completed", result["status"]
    scrape = 0.0
    if metrics is not None:
        start = time.perf_counter()
        page = metrics.render()
        scrape = time.perf_counter() - start
        assert f"orion_stars_completed_total {n}" in page, page
        metrics.shutdown()
    await engine.close()
    return run, scrape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stars", type=int, default=10_000)
    ap.add_argument("--shapes", nargs="+", default=["wide", "chains"])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rows = []
    print(f"{'shape':>8} {'stars':>7} | {'off us/star':>11} {'on us/star':>10} "
          f"{'overhead':>8} | {'scrape ms':>9}")
    for shape in args.shapes:
        off: list[float] = []
        on: list[float] = []
        scrapes: list[float] = []
        asyncio.run(run_once(shape, min(args.stars, 1000), True))  # warm up imports
        for _ in range(args.rounds):
            off.append(asyncio.run(run_once(shape, args.stars, False))[0])
            run, scrape = asyncio.run(run_once(shape, args.stars, True))
            on.append(run)
            scrapes.append(scrape)
        off_us = statistics.median(off) / args.stars * 1e6
        on_us = statistics.median(on) / args.stars * 1e6
        row = {"shape": shape, "stars": args.stars, "off_us_per_star": round(off_us, 1),
               "on_us_per_star": round(on_us, 1),
               "overhead_pct": round((on_us / off_us - 1) * 100, 1),
               "scrape_ms": round(statistics.median(scrapes) * 1000, 2)}
        rows.append(row)
        print(f"{shape:>8} {args.stars:>7} | {row['off_us_per_star']:>11} "
              f"{row['on_us_per_star']:>10} {row['overhead_pct']:>7}% | {row['scrape_ms']:>9}",
              flush=True)
    out = {"benchmark": "metrics_overhead", "date": datetime.now(UTC).isoformat(),
           "machine": {"python": platform.python_version(), "platform": platform.platform(),
                       "cpus": __import__("os").cpu_count()},
           "rounds": args.rounds, "rows": rows}
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (results / f"metrics-{stamp}.json").write_text(json.dumps(out, indent=2))
    (results / "latest-metrics.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
