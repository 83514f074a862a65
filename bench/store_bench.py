"""Store benchmark: what persisting costs the engine, and how the journal group-commits.

    python bench/store_bench.py                      # 5,000-star orions, every store
    python bench/store_bench.py --stars 20000 --orions 1 --quick

The in-process engine (fake devices that answer at once, capacity 8 each) runs a wide orion
with no store, the SQLite store in memory, and a SQLite file with synchronous=NORMAL and
FULL; then many one-star orions (the per-orion cost: registration, start, end). Every star
change, lease and event goes through the journal exactly as under ``orion serve`` (the
server's event log is attached, so events are encoded and journaled too). Prints stars/s,
the process CPU per star (loop and writer thread together: steadier than wall time on a
shared machine) and, per store, the commits: loop steps and records per commit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import save, table

from orion_grpc.api.event_log import EventLog
from orion_grpc.core import EngineConfig, FakeDevice, OrionEngine, TaskOrion, TaskStar
from orion_grpc.core.recovery import restore
from orion_grpc.store import open_store

DEVICES = 4
CAPACITY = 8


def wide(orion_id: str, n: int) -> TaskOrion:
    orion = TaskOrion(orion_id)
    for i in range(n):
        orion.add_task(TaskStar(f"s{i}", description="noop", target_device_id=f"d{i % DEVICES}"))
    return orion


async def run(store_kind: str, stars: int, orions: int, workdir: Path) -> dict[str, Any]:
    store = None
    if store_kind != "none":
        path = ":memory:" if store_kind == "memory" else str(workdir / f"{store_kind}.db")
        store = open_store(path, sync="full" if store_kind == "file-full" else "normal")
    engine = OrionEngine(EngineConfig(retry_backoff_base=0.0, device_grace_period=0.0),
                         store=store)
    journal = engine.journal
    stored = journal.store.load(1000) if journal is not None else None
    if stored is not None:
        restore(engine, stored, hold=1.0)
        await journal.barrier()  # type: ignore[union-attr]
    EventLog(50_000, journal=journal,
             epoch=stored.meta.get("epoch") if stored else None).attach(engine.bus)
    for i in range(DEVICES):
        await FakeDevice(f"d{i}", capacity=CAPACITY, record=False).connect(engine.devices)
    gc.collect()
    rows = {}
    for label, count, size in (("wide orion", 1, stars), ("1-star orions", orions, 1)):
        if count == 0:
            continue
        before = (journal.stats.commits, journal.stats.batches, journal.stats.records) \
            if journal is not None else (0, 0, 0)
        started, cpu = time.perf_counter(), time.process_time()
        for k in range(count):
            orion = wide(f"{label[:4]}-{k}", size)
            engine.manager.register_orion(orion, {})
            if journal is not None:
                journal.run_started(orion, None, {}, True)
            result = await engine.orchestrator.run_prepared(orion, synchronize=False)
            assert result["status"] == "completed", result["status"]
        if journal is not None:
            await journal.barrier()  # everything durable: the fair end of the clock
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        commits, batches, records = (
            journal.stats.commits - before[0], journal.stats.batches - before[1],
            journal.stats.records - before[2]) if journal is not None else (0, 0, 0)
        rows[label] = {"store": store_kind, "workload": f"{label} ({count * size:,} stars)",
                       "stars_per_s": count * size / elapsed, "seconds": elapsed,
                       # CPU of both threads (loop + writer): steadier than wall time on a
                       # busy machine
                       "cpu_us_per_star": 1e6 * cpu / (count * size),
                       "commits": commits,
                       "batches_per_commit": batches / commits if commits else None,
                       "records_per_commit": records / commits if commits else None}
    if journal is not None:
        rows["stats"] = {"commit_ms_mean": 1000 * journal.stats.commit_seconds
                         / max(1, journal.stats.commits),
                         "max_batches_per_commit": journal.stats.max_batches_per_commit,
                         "max_records_per_commit": journal.stats.max_records_per_commit}
    await engine.close()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stars", type=int, default=5000, help="stars of the wide orion")
    parser.add_argument("--orions", type=int, default=1000, help="one-star orions to run")
    parser.add_argument("--stores", nargs="+",
                        default=["none", "memory", "file-normal", "file-full"])
    parser.add_argument("--quick", action="store_true", help="write quick-store.json only")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores:
            rows = await run(kind, args.stars, args.orions, Path(tmp))
            stats = rows.pop("stats", {})
            for row in rows.values():
                results.append({**row, **stats})
    print(table(results, [("store", "store"), ("workload", "workload"),
                          ("stars_per_s", "stars/s"), ("cpu_us_per_star", "CPU µs/star"),
                          ("commits", "commits"),
                          ("batches_per_commit", "steps/commit"),
                          ("records_per_commit", "records/commit"),
                          ("commit_ms_mean", "commit ms (mean)")]))
    print(f"\nwrote {save('store', {'args': vars(args), 'results': results}, quick=args.quick)}")


if __name__ == "__main__":
    asyncio.run(main())
