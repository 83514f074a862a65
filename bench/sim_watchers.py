"""Many event watchers in one process: each a raw-stub WatchEvents stream that checks it misses
nothing.

    python bench/sim_watchers.py --target 127.0.0.1:50051 --count 250 --until ORION_ID

Every watcher subscribes from "now" (no filter) and reads — decoding every event — until the
ORION_COMPLETED/FAILED/CANCELLED event of ``--until``, checking that sequence numbers have no
gap and no duplicate. ``--no-batches`` asks for one event per response (the old form).

Prints ``ready N`` once every watcher is subscribed (the server sends the response headers when
the subscription exists), then, when all are done, one JSON line: per watcher the events
received, gaps, duplicates, the responses they came in, and when the last one arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import benchlib  # noqa: F401  (puts the repository on sys.path)
import grpc

from orion_grpc.gen.orion.v1 import event_pb2
from orion_grpc.gen.orion.v1 import event_service_pb2 as pb
from orion_grpc.gen.orion.v1 import event_service_pb2_grpc as pb_grpc

TERMINAL = {event_pb2.EVENT_TYPE_ORION_COMPLETED, event_pb2.EVENT_TYPE_ORION_FAILED,
            event_pb2.EVENT_TYPE_ORION_CANCELLED}
BOOKMARK = event_pb2.EVENT_TYPE_BOOKMARK


async def watcher(stub: pb_grpc.EventServiceStub, until: str, batches: bool,
                  subscribed: list[int], all_in: asyncio.Event, total: int) -> dict[str, Any]:
    call = stub.WatchEvents(pb.WatchEventsRequest(allow_batches=batches))
    await call.initial_metadata()  # sent once the subscription exists
    subscribed[0] += 1
    if subscribed[0] == total:
        all_in.set()
    events = gaps = duplicates = responses = 0
    last = None
    first_seq = 0
    done_ns = 0
    async for response in call:
        responses += 1
        for event in response.events or (response.event,):
            if event.type == BOOKMARK:
                continue
            seq = event.sequence
            if last is None:
                first_seq = seq
            elif seq <= last:
                duplicates += 1
            elif seq != last + 1:
                gaps += seq - last - 1
            last = seq
            events += 1
            if event.type in TERMINAL and event.orion_id == until:
                done_ns = time.time_ns()
                call.cancel()
                return {"events": events, "gaps": gaps, "duplicates": duplicates,
                        "responses": responses, "first": first_seq, "last": last,
                        "done_ns": done_ns}
    raise RuntimeError(f"the stream ended before orion {until} did")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--until", required=True, help="stop at the end of this orion")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batches", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    options = [("grpc.use_local_subchannel_pool", 1),
               ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    channels = [grpc.aio.insecure_channel(args.target, options=options)
                for _ in range(max(1, args.channels))]
    stubs = [pb_grpc.EventServiceStub(c) for c in channels]
    subscribed = [0]
    all_in = asyncio.Event()
    tasks = [asyncio.create_task(watcher(stubs[i % len(stubs)], args.until, args.batches,
                                         subscribed, all_in, args.count))
             for i in range(args.count)]
    waiter = asyncio.create_task(all_in.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        for t in done:
            t.result()
    print(f"ready {args.count}", flush=True)
    results = await asyncio.gather(*tasks)
    print(json.dumps(results), flush=True)
    for c in channels:
        await c.close()


if __name__ == "__main__":
    asyncio.run(main())
