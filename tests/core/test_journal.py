"""Journal: notes on the loop, one batch per loop step, group commits, acknowledge after
commit, a broken store stops acknowledgements, a sealed journal keeps nothing more."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from orion_grpc.core import TaskOrion, TaskStar, UnavailableError
from orion_grpc.core.journal import Journal
from orion_grpc.core.store import Batch, MemoryStore


def orion_of(*ids: str, orion_id: str = "o1") -> TaskOrion:
    orion = TaskOrion(orion_id)
    for task_id in ids:
        orion.add_task(TaskStar(task_id, description=task_id, target_device_id="d1"))
    return orion


class SlowStore(MemoryStore):
    """Each write blocks until the test releases it, recording how many batches it got."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches_per_write: list[int] = []

    def write(self, batches: Sequence[Batch]) -> None:
        self.entered.set()
        self.release.wait(5)
        self.batches_per_write.append(len(batches))
        super().write(batches)


async def test_a_loop_step_is_one_batch_and_barrier_waits_for_its_commit():
    store = MemoryStore()
    journal = Journal(store)
    orion = orion_of("a", "b")
    journal.orion_registered(orion, {"who": "test"})
    orion.start_execution()
    orion._tasks["a"].start_execution()
    orion.finish_task("a", True, {"x": 1})
    assert store.writes == 0  # nothing written inside the step
    await journal.barrier()
    assert store.writes == 1 and journal.stats.batches == 1
    stored = store.load(10)
    assert stored.orions["o1"]["registry_metadata"] == {"who": "test"}
    assert stored.orions["o1"]["execution_start_time"] is not None
    assert stored.stars["o1"]["a"]["status"] == "completed"
    assert stored.stars["o1"]["a"]["result"] == {"x": 1}
    assert stored.stars["o1"]["b"]["description"] == "b"
    await journal.close()


async def test_status_changes_after_the_first_save_write_only_the_small_state():
    store = MemoryStore()
    journal = Journal(store)
    orion = orion_of("a")
    journal.orion_registered(orion, {})
    await journal.barrier()
    orion._tasks["a"].start_execution()
    written: list[Batch] = []
    original = store.write
    store.write = lambda batches: (written.extend(batches), original(batches))  # type: ignore
    await journal.barrier()
    assert [(b.orions, b.star_sets) for b in written] == [({}, {})]
    assert written[0].stars == [("o1", "a", written[0].stars[0][2])]
    assert written[0].stars[0][2]["status"] == "running"
    await journal.close()


async def test_batches_queued_while_a_commit_runs_share_the_next_commit():
    store = SlowStore()
    journal = Journal(store, linger=0)  # one batch per loop step
    journal.set_meta("k0", "v")
    first = asyncio.ensure_future(journal.barrier())
    assert await asyncio.to_thread(store.entered.wait, 5)  # the writer is stuck in write()
    for i in range(1, 6):  # five more loop steps while the first commit is stuck
        journal.set_meta(f"k{i}", "v")
        await asyncio.sleep(0)
    last = asyncio.ensure_future(journal.barrier())
    store.release.set()
    await asyncio.wait_for(asyncio.gather(first, last), 5)
    assert store.batches_per_write == [1, 5]  # group commit: one transaction for five steps
    assert journal.stats.commits == 2 and journal.stats.max_batches_per_commit == 5
    assert set(store.load(0).meta) == {f"k{i}" for i in range(6)}
    await journal.close()


async def test_a_failing_store_makes_every_barrier_raise_and_drops_callbacks():
    store = MemoryStore()
    store.fail_writes = True
    journal = Journal(store)
    acked: list[str] = []
    journal.set_meta("k", "v")
    journal.call_when_durable(lambda: acked.append("ack"))
    with pytest.raises(UnavailableError) as info:
        await journal.barrier()
    assert info.value.reason == "STORE_UNAVAILABLE"
    assert "failed to write" in info.value.message
    with pytest.raises(UnavailableError):  # and from then on, at once
        await journal.barrier()
    assert acked == []  # nothing that is not durable is acknowledged
    await journal.close()


async def test_call_when_durable_runs_after_the_commit_and_at_once_when_nothing_is_pending():
    journal = Journal(MemoryStore())
    calls: list[int] = []
    journal.call_when_durable(lambda: calls.append(0))  # nothing pending: now
    assert calls == [0]
    journal.set_meta("k", "v")
    journal.call_when_durable(lambda: calls.append(1))
    assert calls == [0]
    await journal.barrier()
    assert calls == [0, 1]
    await journal.close()


async def test_a_sealed_journal_keeps_what_came_before_and_nothing_after():
    store = MemoryStore()
    journal = Journal(store)
    orion = orion_of("a")
    journal.orion_registered(orion, {})
    orion.start_execution()
    journal.seal()  # a graceful shutdown begins in the same step
    orion.cancel_all("server shutting down")
    journal.event(1, b"late")
    with pytest.raises(UnavailableError) as info:
        await journal.barrier()
    assert info.value.reason == "SERVER_SHUTTING_DOWN"
    await journal.close()
    stored = store.load(10)
    assert stored.stars["o1"]["a"]["status"] == "pending"  # the cancellation was not kept
    assert not stored.orions["o1"]["cancelled"] and stored.events == []


async def test_deleting_an_orion_removes_it_and_its_stars():
    store = MemoryStore()
    journal = Journal(store)
    orion = orion_of("a")
    journal.orion_registered(orion, {})
    await journal.barrier()
    journal.orion_deleted("o1")
    orion._tasks["a"].start_execution()  # no longer journaled
    await journal.barrier()
    stored = store.load(0)
    assert stored.orions == {} and stored.stars == {}
    assert orion._journal is None
    await journal.close()


async def test_steps_nobody_waits_for_linger_into_one_batch_and_a_waiter_hurries_them():
    store = MemoryStore()
    journal = Journal(store, linger=60.0)  # never, in this test: only a waiter hands off
    for i in range(5):
        journal.set_meta(f"k{i}", "v")
        await asyncio.sleep(0)  # five loop steps
    assert journal.stats.batches == 0 and store.writes == 0
    await asyncio.wait_for(journal.barrier(), 5)
    assert (journal.stats.batches, store.writes) == (1, 1)
    assert set(store.load(0).meta) == {f"k{i}" for i in range(5)}
    journal.set_meta("late", "v")
    acked = asyncio.get_running_loop().create_future()
    journal.call_when_durable(lambda: acked.set_result(True))  # hurries too
    assert await asyncio.wait_for(acked, 5)
    await journal.close()
