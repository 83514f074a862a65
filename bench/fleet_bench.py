"""Scale of the fleet: many connected, idle devices on one server process.

    python bench/fleet_bench.py                 # 1,000 and 10,000 devices
    python bench/fleet_bench.py --devices 2000
    python bench/fleet_bench.py --quick         # tiny, for the smoke test

The devices are ``bench/sim_devices.py`` processes (a few processes, each holding thousands of
Connect streams with a minimal raw-stub loop). Measured per fleet size:

- server RSS per device: (server RSS with the fleet connected - RSS before) / devices;
- time to connect them all (every device welcomed);
- time to dispatch one star to each: a wide orion with one star per device (explicit
  ``device_assignments``), from the submit until the last device received its star, and
  until the orion's result is back.

Prints a table and writes bench/results/latest-fleet.json.
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
from benchlib import Proc, rss_kb, start_server

from orion_grpc.client import OrionClient
from orion_grpc.gen.orion.v1 import orion_pb2

SIM = str(Path(__file__).resolve().parent / "sim_devices.py")
COLUMNS = [("devices", "devices"), ("hosts", "device processes"),
           ("connect_s", "connect all s"), ("connect_retries", "retried openings"),
           ("server_rss_mb", "server RSS MB"),
           ("rss_per_device_kb", "RSS/device KB"), ("dispatch_all_s", "one star each: all received s"),
           ("complete_s", "orion done s")]


async def one_fleet(n: int, hosts: int, per_channel: int) -> dict[str, Any]:
    server, target = await start_server("--store", "none", "--event-retention", str(4 * n + 1000))
    procs: list[Proc] = []
    try:
        async with OrionClient(target, timeout=120) as client:
            await client.wait_ready()
            base_kb = rss_kb(server.pid)
            per = -(-n // hosts)
            start = time.perf_counter()
            for h in range(hosts):
                count = min(per, n - h * per)
                if count <= 0:
                    break
                procs.append(await Proc.start(f"devices{h}", [
                    sys.executable, SIM, "--target", target, "--prefix", f"d{h}", "--count",
                    str(count), "--capacity", "1", "--channels",
                    str(max(1, -(-count // per_channel))), "--batch"]))
            retries = 0
            try:
                for p in procs:
                    retries += int((await p.expect("ready ", timeout=600)).split()[3])
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\nserver log:{server.tail()}") from None
            connect_s = time.perf_counter() - start
            fleet_kb = rss_kb(server.pid)

            ids = [f"d{h}-{i}" for h, p in enumerate(procs) for i in range(min(per, n - h * per))]
            orion = orion_pb2.TaskOrion(orion_id=f"fleet-{n}")
            for i in range(len(ids)):
                orion.tasks.add(task_id=f"s{i}", description="one star per device")
            for p in procs:
                p.send("stats")  # reset the counters
            for p in procs:
                await p.line()
            t0 = time.time_ns()
            result = await client.orchestrate_orion(
                orion, device_assignments={f"s{i}": d for i, d in enumerate(ids)}, timeout=600)
            complete_s = (time.time_ns() - t0) / 1e9
            if result["status"] != "completed":
                raise RuntimeError(f"fleet orion ended {result['status']}")
            for p in procs:
                p.send("stats")
            stats = [json.loads(await p.line()) for p in procs]
            with_work = sum(s["devices_with_work"] for s in stats)
            if with_work != len(ids):
                raise RuntimeError(f"{with_work} of {len(ids)} devices received their star")
            last = max(s["last_first_ns"] for s in stats)
            return {"devices": n, "hosts": len(procs), "connect_s": round(connect_s, 2),
                    "connect_retries": retries,
                    "server_rss_mb": round(fleet_kb / 1024, 1),
                    "rss_per_device_kb": round((fleet_kb - base_kb) / n, 1),
                    "dispatch_all_s": round((last - t0) / 1e9, 3),
                    "complete_s": round(complete_s, 3)}
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
        await server.stop()


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for n in args.devices:
        hosts = args.hosts or max(1, min(4, n // 1000))
        row = await one_fleet(n, hosts, args.per_channel)
        rows.append(row)
        print(benchlib.table([row], COLUMNS).splitlines()[-1], flush=True)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--hosts", type=int, default=0,
                    help="device processes (default: one per 1,000 devices, at most 4)")
    ap.add_argument("--per-channel", type=int, default=500,
                    help="device streams per HTTP/2 connection")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.devices = [20]
    print(benchlib.table([], COLUMNS), flush=True)
    out = asyncio.run(amain(args))
    print(f"\nwrote {benchlib.save('fleet', out, quick=args.quick)}")


if __name__ == "__main__":
    main()
