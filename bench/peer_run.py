"""One peer workload (Dask distributed or Ray), run by peers_bench.py in bench/.peers-venv.

    bench/.peers-venv/bin/python bench/peer_run.py --system dask --shape chains --stars 10000

Builds the same DAG as the Orion benchmarks (benchlib.edges) out of no-op tasks, each
depending on its prerequisites' results, runs it and prints one JSON line: the seconds from
the first submission to the last result, and the task count. Startup of the cluster is not
timed. Imports neither Orion nor gRPC: this venv holds only the peers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any

from benchlib import edges


def noop(*_prerequisites: Any) -> None:
    return None


def order(shape: str, n: int) -> tuple[list[int], dict[int, list[int]]]:
    """Stars in a topological order (index order is one for every shape) and their
    prerequisites."""
    prereqs: dict[int, list[int]] = defaultdict(list)
    for a, b in edges(shape, n):
        prereqs[b].append(a)
    return list(range(n)), prereqs


def run_dask(shape: str, n: int, workers: int) -> float:
    from dask.distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(noop, pure=False).result()  # warm
        ids, prereqs = order(shape, n)
        start = time.perf_counter()
        futures: dict[int, Any] = {}
        for i in ids:
            futures[i] = client.submit(noop, *[futures[p] for p in prereqs.get(i, ())],
                                       pure=False)
        wait(list(futures.values()))
        return time.perf_counter() - start


def run_ray(shape: str, n: int, workers: int) -> float:
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        task = ray.remote(noop)
        ray.get(task.remote())  # warm
        ids, prereqs = order(shape, n)
        start = time.perf_counter()
        refs: dict[int, Any] = {}
        for i in ids:
            refs[i] = task.remote(*[refs[p] for p in prereqs.get(i, ())])
        ray.get(list(refs.values()))
        return time.perf_counter() - start
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--system", choices=["dask", "ray"], required=True)
    ap.add_argument("--shape", required=True)
    ap.add_argument("--stars", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    run = run_dask if args.system == "dask" else run_ray
    seconds = run(args.shape, args.stars, args.workers)
    print(json.dumps({"system": args.system, "shape": args.shape, "stars": args.stars,
                      "workers": args.workers, "seconds": round(seconds, 3)}), flush=True)


if __name__ == "__main__":
    main()
