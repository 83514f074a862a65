"""The whole benchmark suite, one command: every section's table, then the targets.

    python bench/run_all.py                # everything (tens of minutes on 2 cores)
    python bench/run_all.py --quick        # every script at a tiny size (a smoke test)
    python bench/run_all.py --only engine grpc

Sections (each a script that can also run alone, see bench/README.md):

1. engine   engine_bench.py   in-process engine, fake devices, 4 shapes x 1k/10k/100k
2. grpc     grpc_bench.py     server + device processes over gRPC (10/100 devices, capacity 1/16)
   store    grpc_bench.py --store   the same with the durable SQLite store
3. fleet    fleet_bench.py    1k and 10k connected idle devices
4. watch    watch_bench.py    1, 100, 1000 watchers of a 10k-star orion
5. peers    peers_bench.py    Orion vs Dask distributed vs Ray (own venv: bench/.peers-venv)

Each writes bench/results/latest-<name>.json (quick runs: quick-<name>.json). At the end the
targets of issue 6 are checked against what this run measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib

HERE = Path(__file__).resolve().parent
SECTIONS: dict[str, tuple[str, list[str]]] = {
    "engine": ("engine_bench.py", []),
    "grpc": ("grpc_bench.py", []),
    "store": ("grpc_bench.py", ["--store", "--devices", "100", "--capacities", "16"]),
    "fleet": ("fleet_bench.py", []),
    "watch": ("watch_bench.py", []),
    "peers": ("peers_bench.py", []),
}
RESULT = {"engine": "engine", "grpc": "grpc", "store": "grpc-store", "fleet": "fleet",
          "watch": "watch", "peers": "peers"}


def _rows(data: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in data.get("rows", []) if all(r.get(k) == v for k, v in match.items())]


def _engine(d: dict[str, Any]) -> list[tuple[str, str, bool]]:
    big = max((r["stars"] for r in d["rows"]), default=0)
    rows = _rows(d, stars=big)
    slowest = min(rows, key=lambda r: r["stars_per_s"])
    growth = max(g["cpu"] for g in d["per_star_growth"].values()) if d["per_star_growth"] \
        else float("nan")
    return [
        (f"engine >= 20,000 stars/s at {big:,} (every shape)",
         f"slowest {slowest['shape']} {slowest['stars_per_s']:,}/s",
         slowest["stars_per_s"] >= 20_000),
        (f"{big:,}-star orion validates < 1 s", f"max {max(r['validate_s'] for r in rows)} s",
         max(r["validate_s"] for r in rows) < 1),
        (f"{big:,}-star orion completes < 10 s", f"max {max(r['run_s'] for r in rows)} s",
         max(r["run_s"] for r in rows) < 10),
        ("per-star cost at the largest N within 1.5x of the smallest (CPU)",
         f"worst {growth}x", growth <= 1.5),
    ]


def _grpc(d: dict[str, Any]) -> list[tuple[str, str, bool]]:
    best = max(_rows(d, devices=100), key=lambda r: r["stars_per_s"], default=None)
    idle = d["idle"]
    out = []
    if best is not None:
        out.append(("over gRPC >= 5,000 stars/s with 100 devices",
                    f"{best['stars_per_s']:,}/s ({best['shape']}, capacity {best['capacity']}; "
                    f"server {best['server_cpu_us_per_star']} CPU µs/star)",
                    best["stars_per_s"] >= 5000))
    if idle is not None:
        out.append(("idle dispatch p50 < 1 ms",
                    f"dispatch -> received {idle['dispatch_p50_ms']} ms; result -> next star "
                    f"{idle['hop_p50_ms']} ms", idle["dispatch_p50_ms"] < 1))
    return out


def _store(d: dict[str, Any]) -> list[tuple[str, str, bool]]:
    best = max(d["rows"], key=lambda r: r["stars_per_s"], default=None)
    if best is None:
        return []
    return [("with the durable store >= 3,000 stars/s", f"{best['stars_per_s']:,}/s "
             f"({best['shape']}, {best['devices']} devices x {best['capacity']})",
             best["stars_per_s"] >= 3000)]


def _fleet(d: dict[str, Any]) -> list[tuple[str, str, bool]]:
    big = max(d["rows"], key=lambda r: r["devices"])
    return [(f"{big['devices']:,} connected devices at <= 50 KB server RSS each",
             f"{big['rss_per_device_kb']} KB", big["rss_per_device_kb"] <= 50)]


def _watch(d: dict[str, Any]) -> list[tuple[str, str, bool]]:
    big = max(d["rows"], key=lambda r: r["watchers"])
    return [(f"{big['watchers']:,} watchers at >= 20,000 events/s in total, none missing one",
             f"{big['events_per_s']:,}/s, missed {big['missed']}, duplicated "
             f"{big['duplicated']}",
             big["events_per_s"] >= 20_000 and big["missed"] == 0 and big["duplicated"] == 0)]


def _peers(d: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    for r in d["rows"]:
        out.append((f">= 3x Dask on {r['shape']}", f"{r['orion_vs_dask']}x",
                    r["orion_vs_dask"] >= 3))
        out.append((f">= 2x Ray on {r['shape']}", f"{r['orion_vs_ray']}x", r["orion_vs_ray"] >= 2))
    return out


CHECKS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str, bool]]]] = {
    "engine": _engine, "grpc": _grpc, "store": _store, "fleet": _fleet, "watch": _watch,
    "peers": _peers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every script at a tiny size")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = ap.parse_args()
    started = time.time()
    print(f"machine: {json.dumps(benchlib.machine())}", flush=True)
    failed = []
    for name in args.only:
        script, extra = SECTIONS[name]
        argv = [sys.executable, str(HERE / script), *extra, *(["--quick"] if args.quick else [])]
        print(f"\n== {name}: {' '.join(Path(a).name if a.endswith('.py') else a for a in argv[1:])}",
              flush=True)
        if subprocess.run(argv, cwd=HERE.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"}
                          ).returncode != 0:
            failed.append(name)
    print(f"\n== targets (this run, {time.time() - started:.0f} s, load average now "
          f"{os.getloadavg()[0]:.1f})")
    prefix = "quick" if args.quick else "latest"
    for name in args.only:
        path = benchlib.RESULTS / f"{prefix}-{RESULT[name]}.json"
        if name in failed or not path.exists():
            print(f"  {name}: FAILED (no result)")
            continue
        for target, measured, met in CHECKS[name](json.loads(path.read_text())):
            print(f"  [{'met' if met else 'NOT met'}] {target}: {measured}")
    if failed:
        sys.exit(f"failed sections: {', '.join(failed)}")


if __name__ == "__main__":
    main()
