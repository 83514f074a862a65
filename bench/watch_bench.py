"""Event fan-out: many WatchEvents streams following one orion.

    python bench/watch_bench.py                     # 1, 100, 1000 watchers of a 10k-star orion
    python bench/watch_bench.py --watchers 100 --stars 20000 --no-batches
    python bench/watch_bench.py --quick             # tiny, for the smoke test

The server runs with in-process simulated devices that answer at once (``--fake-devices``, so
events are produced as fast as the engine runs); the watchers are ``bench/sim_watchers.py``
processes (raw-stub streams that decode every event and check for gaps and duplicates). All
watchers subscribe before the orion is submitted; each reads until the orion's terminal event.

Measured per watcher count: events per watcher, total events delivered per second (from the
submit to the last watcher's last event), the responses they came in, and that no watcher
missed or repeated an event (every watcher saw the same gapless run of sequence numbers).

Prints a table and writes bench/results/latest-watch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Proc, cpu_seconds, start_server

from orion_grpc.client import OrionClient

SIM = str(Path(__file__).resolve().parent / "sim_watchers.py")
COLUMNS = [("watchers", "watchers"), ("stars", "stars"), ("events_per_watcher", "events/watcher"),
           ("seconds", "s"), ("events_per_s", "events/s delivered"),
           ("events_per_response", "events/response"),
           ("server_cpu_us_per_event", "server CPU µs/delivered event"),
           ("missed", "missed"), ("duplicated", "duplicated")]


async def one_run(watchers: int, stars: int, batches: bool, hosts: int) -> dict[str, Any]:
    orion_id = f"watched-{watchers}"
    server, target = await start_server(
        "--store", "none", "--fake-devices", "8", "--fake-latency", "0",
        "--event-retention", str(max(50_000, 4 * stars)))
    procs: list[Proc] = []
    try:
        async with OrionClient(target, timeout=600) as client:
            await client.wait_ready()
            per = -(-watchers // hosts)
            for h in range(hosts):
                count = min(per, watchers - h * per)
                if count <= 0:
                    break
                argv = [sys.executable, SIM, "--target", target, "--count", str(count),
                        "--until", orion_id, "--channels", str(max(1, count // 100))]
                if not batches:
                    argv.append("--no-batches")
                procs.append(await Proc.start(f"watchers{h}", argv))
            for p in procs:
                await p.expect("ready", timeout=300)
            orion = benchlib.orion_pb("wide", stars, orion_id)
            cpu0 = cpu_seconds(server.pid)
            t0 = time.time_ns()
            await client.submit_orion(orion, assignment_strategy="round_robin")
            results: list[dict[str, Any]] = []
            for p in procs:
                results += json.loads(await p.line(timeout=3600))
            cpu = cpu_seconds(server.pid) - cpu0
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
        await server.stop()
    counts = {r["events"] for r in results}
    runs = {(r["first"], r["last"]) for r in results}
    delivered = sum(r["events"] for r in results)
    seconds = (max(r["done_ns"] for r in results) - t0) / 1e9
    missed = sum(r["gaps"] for r in results) + (0 if len(counts) == 1 and len(runs) == 1 else
                                                max(counts) * len(results) - delivered)
    return {"watchers": watchers, "stars": stars, "batches": batches,
            "events_per_watcher": max(counts), "seconds": round(seconds, 2),
            "events_per_s": round(delivered / seconds),
            "events_per_response": round(delivered / sum(r["responses"] for r in results), 1),
            "server_cpu_us_per_event": round(cpu / delivered * 1e6, 2),
            "missed": missed, "duplicated": sum(r["duplicates"] for r in results),
            "same_events_everywhere": len(counts) == 1 and len(runs) == 1}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for n in args.watchers:
        row = await one_run(n, args.stars, args.batches, args.hosts or max(1, min(4, n // 100)))
        rows.append(row)
        print(benchlib.table([row], COLUMNS).splitlines()[-1], flush=True)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--watchers", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--stars", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=0,
                    help="watcher processes (default: one per 100 watchers, at most 4)")
    ap.add_argument("--batches", action=argparse.BooleanOptionalAction, default=True,
                    help="watchers allow several events per response (default: yes)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.watchers, args.stars = [3], 100
    print(benchlib.table([], COLUMNS), flush=True)
    out = asyncio.run(amain(args))
    print(f"\nwrote {benchlib.save('watch', out, quick=args.quick)}")


if __name__ == "__main__":
    main()
