"""Many simulated devices in one process: a minimal raw-stub DeviceService.Connect loop each.

    python bench/sim_devices.py --target 127.0.0.1:50051 --prefix sim-a --count 500 \\
        --capacity 16 --channels 2 [--batch]

Every device opens its own Connect stream (``--channels`` HTTP/2 connections shared by all of
this process's devices), says ``hello`` and answers every assignment at once with a
successful, empty result — the cheapest device a server can have, so the benchmarks measure
the server. ``--batch`` announces that the device accepts batches (``hello.accepts_batches``)
and answers a batch of assignments with one batch of results.

The process prints ``ready N SECONDS RETRIES`` once all N devices are welcomed (SECONDS: time
to connect them all; RETRIES: stream openings that failed and were retried), then obeys lines
on stdin:

- ``stats``: print one JSON line with what was received since the previous ``stats``
  (assignments, dispatch -> receive latencies, result -> next assignment "hop" latencies,
  first-assignment time per device) and reset those counters;
- ``stop`` (or end of input): close every stream and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

import benchlib  # noqa: F401  (puts the repository on sys.path)
import grpc

from orion_grpc.gen.orion.v1 import device_service_pb2 as pb
from orion_grpc.gen.orion.v1 import device_service_pb2_grpc as pb_grpc
from orion_grpc.gen.orion.v1 import task_star_pb2

LINUX = task_star_pb2.DEVICE_TYPE_LINUX
MAX_SAMPLES = 200_000


class Stats:
    def __init__(self) -> None:
        self.connected = 0
        self.retries = 0  # failed stream openings (retried)
        self.last_error = ""
        self.reset()

    def reset(self) -> None:
        self.assignments = 0
        self.messages = 0  # messages that carried assignments
        self.reads = 0  # every message the server sent (assignments, acks, batches, ...)
        self.dispatch_us: list[int] = []  # server dispatch stamp -> received here
        self.hop_us: list[int] = []  # this device's previous result sent -> next assignment
        self.first_ns: dict[str, int] = {}  # device -> first assignment received

    def report(self) -> dict[str, Any]:
        return {"assignments": self.assignments, "messages": self.messages,
                "reads": self.reads,
                "dispatch_us": self.dispatch_us, "hop_us": self.hop_us,
                "devices_with_work": len(self.first_ns),
                "last_first_ns": max(self.first_ns.values(), default=0),
                "connected": self.connected, "connect_retries": self.retries,
                "last_connect_error": self.last_error}


def hello(device_id: str, capacity: int, batch: bool) -> pb.ConnectRequest:
    msg = pb.DeviceHello(device_id=device_id, device_type=LINUX, capabilities=["bench"],
                         capacity=capacity, daemon_version="bench-sim")
    if batch:
        msg.accepts_batches = True
    return pb.ConnectRequest(hello=msg)


def result_of(a: pb.TaskAssignment) -> pb.TaskResult:
    return pb.TaskResult(lease_id=a.lease_id, task_id=a.task_id, attempt=a.attempt,
                         success=True)


async def device(stub: pb_grpc.DeviceServiceStub, device_id: str, capacity: int, batch: bool,
                 stats: Stats, welcomed: asyncio.Event, total: int,
                 opening: asyncio.Semaphore) -> None:
    for attempt in range(20):
        # Opening thousands of streams at the same instant makes grpc fail some of them
        # (INTERNAL / CANCELLED at the first write): open in waves, and retry with a backoff
        # as a real daemon does (retries are counted and reported).
        async with opening:
            call = stub.Connect()
            try:
                await call.write(hello(device_id, capacity, batch))
                first = await call.read()
                break
            except grpc.aio.AioRpcError as exc:
                stats.retries += 1
                stats.last_error = f"{exc.code().name}: {exc.details()}"
                call.cancel()
        await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))
    else:
        raise RuntimeError(f"{device_id}: could not connect ({stats.last_error})")
    if first is grpc.aio.EOF or first.WhichOneof("message") != "welcome":
        raise RuntimeError(f"{device_id}: no welcome ({first})")
    server_batches = batch and first.welcome.accepts_batches
    stats.connected += 1
    if stats.connected == total:
        welcomed.set()
    last_sent = 0
    while True:
        msg = await call.read()
        if msg is grpc.aio.EOF:
            return
        stats.reads += 1
        kind = msg.WhichOneof("message")
        if kind == "assignment":
            assignments: Any = (msg.assignment,)
        elif kind == "batch":
            assignments = [m.assignment for m in msg.batch.messages
                           if m.WhichOneof("message") == "assignment"]
            if not assignments:
                continue
        elif kind == "goodbye":
            return
        else:
            continue
        now = time.time_ns()
        stats.messages += 1
        stats.assignments += len(assignments)
        if device_id not in stats.first_ns:
            stats.first_ns[device_id] = now
        dispatch, hops = stats.dispatch_us, stats.hop_us  # (reset replaces the lists)
        for a in assignments:
            if len(dispatch) < MAX_SAMPLES and a.task.HasField("execution_start_time"):
                dispatch.append((now - a.task.execution_start_time.ToNanoseconds()) // 1000)
        if capacity == 1 and last_sent and len(hops) < MAX_SAMPLES:
            hops.append((now - last_sent) // 1000)
        if len(assignments) == 1 or not server_batches:
            for a in assignments:
                await call.write(pb.ConnectRequest(result=result_of(a)))
        else:
            batch_msg = pb.ConnectRequest()
            add = batch_msg.batch.messages.add
            for a in assignments:
                add().result.CopyFrom(result_of(a))
            await call.write(batch_msg)
        last_sent = time.time_ns()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--prefix", default="sim")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--capacity", type=int, default=1)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", action="store_true")
    ap.add_argument("--opening", type=int, default=256, help="streams opened at once, at most")
    args = ap.parse_args()

    stats = Stats()
    welcomed = asyncio.Event()
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel, really
    channels = [grpc.aio.insecure_channel(args.target, options=options)
                for _ in range(max(1, args.channels))]
    stubs = [pb_grpc.DeviceServiceStub(c) for c in channels]
    start = time.perf_counter()
    opening = asyncio.Semaphore(args.opening)
    tasks = [asyncio.create_task(device(stubs[i % len(stubs)], f"{args.prefix}-{i}",
                                        args.capacity, args.batch, stats, welcomed, args.count,
                                        opening))
             for i in range(args.count)]
    waiter = asyncio.create_task(welcomed.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        for t in done:
            t.result()  # a device failed before all were welcomed: raise its error
    print(f"ready {args.count} {time.perf_counter() - start:.3f} {stats.retries}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "stats":
            print(json.dumps(stats.report()), flush=True)
            stats.reset()
        elif line in ("stop", ""):
            break
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()


if __name__ == "__main__":
    asyncio.run(main())
