"""Full path over gRPC: an ``orion serve`` process and device processes on loopback.

    python bench/grpc_bench.py                      # 10/100 devices x capacity 1/16, 10k stars
    python bench/grpc_bench.py --stars 20000 --shapes wide chains fan
    python bench/grpc_bench.py --store              # with the durable store (SQLite, group commits)
    python bench/grpc_bench.py --quick              # tiny, for the smoke test

This process is the client: it submits each orion with ``OrchestrateOrion`` (round_robin) and
times it until the result is back. The devices are ``bench/sim_devices.py`` processes (a
minimal raw-stub Connect loop per device, answering every assignment at once with an empty
result), so the figures are the server's. Measured per run:

- stars/s end to end (submit -> result back at the client);
- server CPU µs per star (user + system time of the server process over the run);
- dispatch latency: the star's dispatch stamp on the server (``execution_start_time`` in the
  assignment) -> the device received it, p50 / p99 (same clock: one machine);
- idle: one device of capacity 1 running a single chain, so every star is dispatched the
  moment it becomes ready — "hop" = the device sent star k's result -> received star k+1
  (result over the wire, the server finishing k, readiness, dispatch, assignment over the
  wire), an upper bound for ready -> received.

Prints a table and writes bench/results/latest-grpc.json (latest-grpc-store.json with --store).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Proc, cpu_seconds, percentile, rss_kb, start_server

from orion_grpc.client import OrionClient

SIM = str(Path(__file__).resolve().parent / "sim_devices.py")


class Fleet:
    """A server and device-simulator processes."""

    def __init__(self, devices: int, capacity: int, batch: bool, server_args: list[str],
                 hosts: int | None = None, store: bool = False) -> None:
        self.devices = devices
        self.capacity = capacity
        self.batch = batch
        self.server_args = server_args
        self.hosts_wanted = hosts or (1 if devices <= 20 else 2)
        self.server: Proc | None = None
        self.hosts: list[Proc] = []
        self.target = ""
        self.connect_s = 0.0
        self.store = tempfile.TemporaryDirectory(prefix="orion-bench-") if store else None

    async def __aenter__(self) -> Fleet:
        try:
            store = ["--store", f"{self.store.name}/orion.db"] if self.store else []
            self.server, self.target = await start_server(*self.server_args, *store)
            per = -(-self.devices // self.hosts_wanted)
            start = time.perf_counter()
            for h in range(self.hosts_wanted):
                count = min(per, self.devices - h * per)
                if count <= 0:
                    break
                argv = [sys.executable, SIM, "--target", self.target, "--prefix", f"sim{h}",
                        "--count", str(count), "--capacity", str(self.capacity),
                        "--channels", str(max(1, count // 1000))]
                if self.batch:
                    argv.append("--batch")
                self.hosts.append(await Proc.start(f"devices{h}", argv))
            for host in self.hosts:
                await host.expect("ready ", timeout=300)
            self.connect_s = time.perf_counter() - start
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(h.stop() for h in self.hosts), return_exceptions=True)
        if self.server is not None:
            await self.server.stop()
        if self.store is not None:
            self.store.cleanup()

    async def stats(self) -> dict[str, Any]:
        merged: dict[str, Any] = {"assignments": 0, "messages": 0, "reads": 0, "dispatch_us": [],
                                  "hop_us": [], "devices_with_work": 0, "last_first_ns": 0}
        for host in self.hosts:
            host.send("stats")
        for host in self.hosts:
            s = json.loads(await host.line())
            for key in ("assignments", "messages", "reads", "devices_with_work"):
                merged[key] += s[key]
            merged["dispatch_us"] += s["dispatch_us"]
            merged["hop_us"] += s["hop_us"]
            merged["last_first_ns"] = max(merged["last_first_ns"], s["last_first_ns"])
        return merged


async def run_orion(fleet: Fleet, client: OrionClient, shape: str, n: int, tag: str
                    ) -> dict[str, Any]:
    assert fleet.server is not None
    orion = benchlib.orion_pb(shape, n, f"{tag}-{shape}-{n}")
    await fleet.stats()  # reset the devices' counters
    cpu0, t0 = cpu_seconds(fleet.server.pid), time.perf_counter()
    result = await client.orchestrate_orion(orion, assignment_strategy="round_robin",
                                            timeout=600)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(fleet.server.pid) - cpu0
    if result["status"] != "completed":
        raise RuntimeError(f"{orion.orion_id} ended {result['status']}: "
                           f"{list(result['errors'].items())[:3]}")
    stats = await fleet.stats()
    if stats["assignments"] != n:
        raise RuntimeError(f"{orion.orion_id}: devices received {stats['assignments']} "
                           f"assignments for {n} stars")
    d = stats["dispatch_us"]
    return {"shape": shape, "stars": n, "devices": fleet.devices, "capacity": fleet.capacity,
            "batch": fleet.batch, "seconds": round(elapsed, 3),
            "stars_per_s": round(n / elapsed), "server_cpu_us_per_star": round(cpu / n * 1e6, 1),
            "dispatch_p50_ms": round(percentile(d, 50) / 1000, 3),
            "dispatch_p99_ms": round(percentile(d, 99) / 1000, 3),
            "messages_per_star": round(stats["messages"] / n, 3),
            "server_messages_per_star": round(stats["reads"] / n, 3),
            "server_rss_mb": round(rss_kb(fleet.server.pid) / 1024, 1)}


async def idle_latency(args: argparse.Namespace, server_args: list[str]) -> dict[str, Any]:
    async with Fleet(1, 1, args.batch, server_args, store=args.store) as fleet, \
            OrionClient(fleet.target, timeout=60) as client:
        await client.wait_ready()
        await run_orion(fleet, client, "chain1", 20, "warm")
        n = args.idle_stars
        await fleet.stats()
        t0 = time.perf_counter()
        result = await client.orchestrate_orion(benchlib.orion_pb("chain1", n, "idle-chain"),
                                                assignment_strategy="round_robin", timeout=600)
        elapsed = time.perf_counter() - t0
        assert result["status"] == "completed", result["status"]
        s = await fleet.stats()
        hops, d = s["hop_us"], s["dispatch_us"]
        return {"stars": n, "seconds": round(elapsed, 3),
                "hop_p50_ms": round(percentile(hops, 50) / 1000, 3),
                "hop_p99_ms": round(percentile(hops, 99) / 1000, 3),
                "dispatch_p50_ms": round(percentile(d, 50) / 1000, 3),
                "dispatch_p99_ms": round(percentile(d, 99) / 1000, 3)}


COLUMNS = [("devices", "devices"), ("capacity", "capacity"), ("shape", "shape"),
           ("stars", "stars"), ("seconds", "s"), ("stars_per_s", "stars/s"),
           ("server_cpu_us_per_star", "server CPU µs/star"),
           ("dispatch_p50_ms", "dispatch p50 ms"), ("dispatch_p99_ms", "dispatch p99 ms"),
           ("messages_per_star", "assignment msgs/star"),
           ("server_messages_per_star", "server msgs/star")]


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    server_args = ["--event-retention", str(max(50_000, 3 * args.stars))]
    if not args.store:
        server_args += ["--store", "none"]  # (with --store, each Fleet gets a fresh one)
    rows = []
    for devices in args.devices:
        for capacity in args.capacities:
            async with Fleet(devices, capacity, args.batch, server_args,
                             store=args.store) as fleet, \
                    OrionClient(fleet.target, timeout=60) as client:
                await client.wait_ready()
                await run_orion(fleet, client, "wide", min(1000, args.stars), "warm")
                assert fleet.server is not None
                profiler = benchlib.Profiler(fleet.server.pid, args.profile) if args.profile \
                    else contextlib.nullcontext()
                async with profiler:
                    for shape in args.shapes:
                        row = await run_orion(fleet, client, shape, args.stars, "bench")
                        rows.append(row)
                        print(benchlib.table([row], COLUMNS).splitlines()[-1], flush=True)
    idle = await idle_latency(args, server_args) if args.idle_stars > 0 else None
    if idle is not None:
        print(f"idle (1 device, capacity 1, one chain of {idle['stars']}): hop p50 "
              f"{idle['hop_p50_ms']} ms p99 {idle['hop_p99_ms']} ms; dispatch p50 "
              f"{idle['dispatch_p50_ms']} ms p99 {idle['dispatch_p99_ms']} ms", flush=True)
    return {"rows": rows, "idle": idle, "store": args.store, "batch": args.batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stars", type=int, default=10_000)
    ap.add_argument("--shapes", nargs="+", default=["wide", "chains"], choices=benchlib.SHAPES)
    ap.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--capacities", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--idle-stars", type=int, default=500,
                    help="length of the idle-latency chain (0: skip that measurement)")
    ap.add_argument("--batch", action=argparse.BooleanOptionalAction, default=True,
                    help="devices accept message batches (default: yes, as orion device does)")
    ap.add_argument("--store", action="store_true",
                    help="run the server with its durable store (SQLite in a temp directory)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--profile", metavar="FILE",
                    help="run the server under py-spy (must be installed) and write its "
                         "collapsed stacks to FILE")
    args = ap.parse_args()
    if args.quick:
        args.stars, args.devices, args.capacities, args.idle_stars = 200, [3], [2], 20
    print(benchlib.table([], COLUMNS), flush=True)
    out = asyncio.run(amain(args))
    path = benchlib.save("grpc-store" if args.store else "grpc", out, quick=args.quick)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
