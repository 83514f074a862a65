"""What the benchmark scripts share: DAG shapes, process helpers, tables and result files."""

from __future__ import annotations

import json
import os
import platform
import random
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Where results go (the smoke test points it at a temporary directory).
RESULTS = Path(os.environ.get("ORION_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
SHAPES = ("wide", "chains", "fan", "layered")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- shapes
def edges(shape: str, n: int, seed: int = 7) -> list[tuple[int, int]]:
    """The edges (prerequisite index, dependent index) of an ``n``-star DAG of ``shape``:

    - wide: no edges (n independent stars);
    - chains: 100 chains of n/100 stars (fewer when n < 100: chains of 1);
    - fan: star 0 -> stars 1..n-2 -> star n-1 (fan-out then fan-in);
    - layered: random layered DAG, ~sqrt(n) stars per layer, 3n edges between neighbouring
      layers (fixed seed).
    """
    if shape == "wide":
        return []
    if shape == "chains":
        per = max(1, n // 100)
        return [(i - 1, i) for i in range(n) if i % per]
    if shape == "fan":
        return [(0, i) for i in range(1, n - 1)] + [(i, n - 1) for i in range(1, n - 1)]
    if shape == "layered":
        rng = random.Random(seed)
        width = max(1, int(n ** 0.5))
        found: set[tuple[int, int]] = set()
        # Each star past the first layer has exactly ``width`` possible prerequisites: cap
        # the edge count so tiny orions terminate.
        target = min(3 * n, max(0, n - width) * width)
        while len(found) < target and n > width:
            dst = rng.randrange(width, n)
            layer_start = (dst // width) * width
            src = rng.randrange(max(0, layer_start - width), layer_start)
            found.add((src, dst))
        return sorted(found)
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


# ---------------------------------------------------------------------- processes
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# Limits a benchmark server lifts: simulated devices and watchers all come from one loopback
# address (one "client" to --max-streams-per-client), and orions may exceed the default size.
BENCH_LIMITS = ("--max-streams-per-client", "1000000", "--max-stars", "1000000",
                "--max-lines", "10000000")


def server_argv(*extra: str) -> list[str]:
    """``orion serve`` on a free loopback port, quiet, with long heartbeats (benchmark device
    simulators do not heartbeat; results and assignments are signs of life anyway)."""
    return [sys.executable, "-m", "orion_grpc.cli", "serve", "--host", "127.0.0.1", "--port",
            "0", "--log-level", "WARNING", "--heartbeat-interval", "600", "--lease-ttl", "3600",
            *BENCH_LIMITS, *extra]


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# ---------------------------------------------------------------------- reporting
def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_1_5_15": [round(x, 2) for x in load]}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` = [(key, heading), ...]."""
    rows = list(rows)
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def save(name: str, payload: dict[str, Any], *, quick: bool = False) -> Path:
    """Write bench/results/<name>-<stamp>.json and latest-<name>.json (quick runs: only
    quick-<name>.json, so they never overwrite a real result)."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "date": datetime.now(UTC).isoformat(), "quick": quick,
               "machine": machine(), **payload}
    text = json.dumps(payload, indent=2)
    if quick:
        path = RESULTS / f"quick-{name}.json"
        path.write_text(text)
        return path
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"{name}-{stamp}.json").write_text(text)
    path = RESULTS / f"latest-{name}.json"
    path.write_text(text)
    return path


class Proc:
    """A child process driven line by line over stdin/stdout (stderr goes to a temp file)."""

    def __init__(self, name: str, proc: Any, log: Any) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, name: str, argv: Sequence[str]) -> Proc:
        import asyncio
        import tempfile

        log = tempfile.TemporaryFile(mode="w+b")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, limit=2 ** 28)
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    async def line(self, timeout: float = 60.0) -> str:
        import asyncio

        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: no output within {timeout:g}s{self.tail()}") from None
        if not raw:
            raise RuntimeError(f"{self.name} exited ({await self.proc.wait()}){self.tail()}")
        return str(raw.decode().strip())

    async def expect(self, prefix: str, timeout: float = 60.0) -> str:
        line = await self.line(timeout)
        if not line.startswith(prefix):
            raise RuntimeError(f"{self.name}: expected {prefix!r}, got {line!r}{self.tail()}")
        return line

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode() + b"\n")

    def tail(self, lines: int = 20) -> str:
        from orion_grpc.demo import log_tail  # not at the top: peer_run.py runs without Orion

        return log_tail(self.log, lines)

    async def stop(self, timeout: float = 10.0) -> int:
        import asyncio
        import contextlib
        import signal

        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionResetError):
                self.send("stop")
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout / 2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.proc.wait(), timeout / 2)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    await self.proc.wait()
        self.log.close()
        return int(self.proc.returncode)


async def start_server(*extra: str, timeout: float = 60.0) -> tuple[Proc, str]:
    """``orion serve`` as a child process; returns it and its ``host:port``."""
    server = await Proc.start("server", server_argv(*extra))
    line = await server.expect("listening on ", timeout)
    return server, "127.0.0.1:" + line.rsplit(":", 1)[1]


def orion_pb(shape: str, n: int, orion_id: str, seed: int = 7) -> Any:
    """An ``orion.v1.TaskOrion`` of ``shape`` with ``n`` no-op stars (see ``edges``)."""
    from orion_grpc.gen.orion.v1 import orion_pb2

    orion = orion_pb2.TaskOrion(orion_id=orion_id, name=orion_id)
    tasks = orion.tasks
    for i in range(n):
        tasks.add(task_id=f"s{i}", description="noop")
    deps = orion.dependencies
    for k, (a, b) in enumerate(edges(shape, n, seed) if shape != "chain1" else
                               [(i - 1, i) for i in range(1, n)]):
        deps.add(line_id=f"l{k}", from_task_id=f"s{a}", to_task_id=f"s{b}")
    return orion


class Profiler:
    """``py-spy record`` attached to a running process (collapsed stacks, written on stop).

    py-spy is not an Orion dependency: install it into the venv to use ``--profile``."""

    def __init__(self, pid: int, out: str, rate: int = 250) -> None:
        self.argv = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate",
                     str(rate), "--nonblocking", "-o", out]
        self.proc: Any = None

    async def __aenter__(self) -> Profiler:
        import asyncio

        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return self

    async def __aexit__(self, *exc: object) -> None:
        import signal

        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            await self.proc.wait()
