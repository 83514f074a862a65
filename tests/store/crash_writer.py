"""A process that journals steps into a SQLite store as fast as it can, printing each step
once it is acknowledged (durable); test_sqlite_store.py SIGKILLs it mid-write.

Step k of the loop, in ONE loop step: event k, lease "l<k>" started and "l<k-1>" ended,
star "a" finishes attempt k (result k), meta step = k. Any committed state must therefore
satisfy: events 1..K, leases {l<K>}, result K, step K — for one K.

    python crash_writer.py DB_PATH
"""

from __future__ import annotations

import asyncio
import sys

from orion_grpc.core import TaskOrion, TaskStar
from orion_grpc.core.journal import Journal
from orion_grpc.store import open_store


class _Lease:
    def __init__(self, k: int) -> None:
        self.lease_id, self.device_id, self.task_id, self.orion_id = f"l{k}", "d1", "a", "o"
        self.attempt, self.timeout, self.started_at, self.deadline = k, None, 0.0, None
        self.trace_context: dict[str, str] = {}


async def main(path: str) -> None:
    journal = Journal(open_store(path))
    orion = TaskOrion("o")
    orion.add_task(TaskStar("a", description="a"))
    journal.orion_registered(orion, {})
    star = orion._tasks["a"]
    k = 0
    while True:
        k += 1
        star._status = star._status  # keep the star as is; only its result changes
        star._result = k
        journal.star_changed(orion, star)
        journal.event(k, f"event {k}".encode())
        journal.lease_started(_Lease(k))  # type: ignore[arg-type]
        if k > 1:
            journal.lease_ended(f"l{k - 1}")
        journal.set_meta("step", str(k))
        if k % 7 == 0:
            await journal.barrier()
            print(k, flush=True)
        else:
            await asyncio.sleep(0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
