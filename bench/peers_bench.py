"""Side by side: Orion, Dask distributed and Ray on the same DAGs of no-op tasks, in one run.

    python bench/peers_bench.py                      # chains and fan, 10k tasks, 2 workers
    python bench/peers_bench.py --stars 20000 --workers 4
    python bench/peers_bench.py --quick              # tiny, for the smoke test

Dask and Ray are never Orion dependencies: on first use this script creates
``bench/.peers-venv`` (git-ignored) and installs the pinned ``PEERS`` into it; their workloads
run there (``bench/peer_run.py``). Each system gets the same number of worker processes:

- Orion: ``orion serve`` (no store) and ``--workers`` real ``orion device`` daemons
  (``LocalFleet``, capacity ``--capacity``, built-in ``echo`` executor); the client submits
  with ``OrchestrateOrion`` and the time runs until the result is back;
- Dask: ``LocalCluster(n_workers=W, threads_per_worker=1)``; every task ``client.submit``-ed
  with its prerequisites' futures as arguments; until all results are in;
- Ray: ``ray.init(num_cpus=W)``; ``noop.remote(*prerequisite_refs)``; until ``ray.get`` of all.

Shapes (benchlib.edges): chains (100 chains of N/100) and fan (root -> N-2 leaves -> sink).
Cluster start-up is not timed for any system. Prints a table with the ratios Orion/peer
(tasks per second) and Orion's CPU per task (the server's, and the daemons' together: user +
system time over the run / tasks; both share the machine's cores, so together they bound
the rate), and writes bench/results/latest-peers.json. ``--profile FILE`` records the
first daemon with py-spy (if installed) during the timed runs: FILE-SHAPE, collapsed stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import benchlib

from orion_grpc.client import OrionClient
from orion_grpc.demo import DeviceSpec, LocalFleet

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peers-venv"
PEERS = ("dask[distributed]==2026.8.0", "ray==2.60.0")
COLUMNS = [("shape", "shape"), ("stars", "tasks"), ("orion_per_s", "Orion tasks/s"),
           ("dask_per_s", "Dask tasks/s"), ("ray_per_s", "Ray tasks/s"),
           ("orion_vs_dask", "Orion/Dask"), ("orion_vs_ray", "Orion/Ray"),
           ("orion_server_cpu_us", "Orion server CPU µs/task"),
           ("orion_daemons_cpu_us", "Orion daemons CPU µs/task")]


def peers_python() -> str:
    """The peers venv's interpreter, created and filled on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} (Dask and Ray, not Orion dependencies) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import dask.distributed, ray"],
                           capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEERS], check=True)
    return str(python)


def run_peer(python: str, system: str, shape: str, stars: int, workers: int) -> float:
    out = subprocess.run([python, str(HERE / "peer_run.py"), "--system", system, "--shape",
                          shape, "--stars", str(stars), "--workers", str(workers)],
                         capture_output=True, text=True, timeout=3600, cwd=HERE)
    if out.returncode != 0:
        raise RuntimeError(f"{system} {shape} failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


async def run_orion(shapes: list[str], stars: int, workers: int, capacity: int,
                    profile: str | None = None) -> dict[str, dict[str, float]]:
    """Per shape: the seconds of the orion, and the CPU seconds of the server and of the
    daemons over it."""
    specs = [DeviceSpec(f"worker-{i}", "linux", ("bench",), capacity) for i in range(workers)]
    runs = {}
    async with LocalFleet(specs, server_args=["--store", "none", *benchlib.BENCH_LIMITS,
                                              "--event-retention",
                                              str(max(50_000, 4 * stars))]) as fleet, \
            OrionClient(fleet.target, timeout=600) as client:
        await client.wait_ready()
        await client.orchestrate_orion(benchlib.orion_pb("wide", 200, "warm"),
                                       assignment_strategy="round_robin")
        assert fleet.server is not None
        server, daemons = fleet.server.pid, [d.pid for d in fleet.daemons.values()]
        for shape in shapes:
            orion = benchlib.orion_pb(shape, stars, f"peers-{shape}")
            profiler = benchlib.Profiler(daemons[0], f"{profile}-{shape}") if profile \
                else contextlib.nullcontext()
            async with profiler:
                cpu = [benchlib.cpu_seconds(server), sum(map(benchlib.cpu_seconds, daemons))]
                start = time.perf_counter()
                result = await client.orchestrate_orion(
                    orion, assignment_strategy="round_robin", timeout=3600)
                seconds = time.perf_counter() - start
                cpu = [benchlib.cpu_seconds(server) - cpu[0],
                       sum(map(benchlib.cpu_seconds, daemons)) - cpu[1]]
            if result["status"] != "completed":
                raise RuntimeError(f"orion {shape} ended {result['status']}")
            runs[shape] = {"seconds": seconds, "server_cpu": cpu[0], "daemons_cpu": cpu[1]}
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stars", type=int, default=10_000)
    ap.add_argument("--shapes", nargs="+", default=["chains", "fan"], choices=benchlib.SHAPES)
    ap.add_argument("--workers", type=int, default=2, help="worker processes for every system")
    ap.add_argument("--capacity", type=int, default=16, help="capacity of each Orion device")
    ap.add_argument("--peers", nargs="*", default=["dask", "ray"], choices=["dask", "ray"],
                    help="peers to run (none: only Orion's side, no peers venv needed)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--profile", metavar="FILE",
                    help="record the first Orion daemon with py-spy (must be installed) during "
                         "each shape's run: collapsed stacks in FILE-SHAPE")
    args = ap.parse_args()
    if args.quick:
        args.stars = 200
    python = peers_python() if args.peers else ""
    orion = asyncio.run(run_orion(args.shapes, args.stars, args.workers, args.capacity,
                                  args.profile))
    rows = []
    print(benchlib.table([], COLUMNS), flush=True)
    for shape in args.shapes:
        n = args.stars
        run = orion[shape]
        row: dict[str, object] = {
            "shape": shape, "stars": n, "orion_s": round(run["seconds"], 3),
            "orion_per_s": round(n / run["seconds"]),
            "orion_server_cpu_us": round(1e6 * run["server_cpu"] / n, 1),
            "orion_daemons_cpu_us": round(1e6 * run["daemons_cpu"] / n, 1)}
        for peer in args.peers:
            seconds = run_peer(python, peer, shape, n, args.workers)
            row.update({f"{peer}_s": round(seconds, 3), f"{peer}_per_s": round(n / seconds),
                        f"orion_vs_{peer}": round(seconds / run["seconds"], 2)})
        rows.append(row)
        print(benchlib.table([row], COLUMNS).splitlines()[-1], flush=True)
    out = {"rows": rows, "workers": args.workers, "orion_device_capacity": args.capacity,
           "peers": list(PEERS)}
    print(f"\nwrote {benchlib.save('peers', out, quick=args.quick)}")


if __name__ == "__main__":
    main()
