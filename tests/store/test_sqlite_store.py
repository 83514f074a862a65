"""The SQLite store: round trips of every record kind, group commits through the journal,
one server per database, and crash consistency when the writing process is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orion_grpc.core import EngineConfig, FakeDevice, OrionEngine, TaskOrion, TaskStar
from orion_grpc.core.journal import Journal
from orion_grpc.core.recovery import orion_from_records, restore
from orion_grpc.core.store import Batch
from orion_grpc.store import SQLiteStore, StoreError, StoreLockedError, open_store

ROOT = Path(__file__).resolve().parents[2]


def test_every_record_kind_round_trips(tmp_path: Path) -> None:
    path = str(tmp_path / "orion.db")
    store = SQLiteStore(path)
    store.write([Batch(
        number=1, orions={"o": {"orion_id": "o", "name": "n", "run": {"strategy": None}}},
        star_sets={"o": [("b", {"task_id": "b", "position": 1}, {"status": "pending"}),
                         ("a", {"task_id": "a", "position": 0}, {"status": "running"})]},
        leases={"d:1": {"lease_id": "d:1", "device_id": "d"}},
        events=[(1, b"\x00one"), (2, b"two")], requests=[("M", "r1", {"created": 5.0})],
        meta={"epoch": "e"})])
    store.write([Batch(number=2, stars=[("o", "a", {"status": "completed", "result": {"x": 1}})],
                       leases={"d:1": None, "d:2": {"lease_id": "d:2"}},
                       events=[(3, b"three")], events_before=2)])
    store.close()

    reopened = SQLiteStore(path)
    stored = reopened.load(event_limit=10)
    reopened.close()
    assert stored.orions == {"o": {"orion_id": "o", "name": "n", "run": {"strategy": None}}}
    assert stored.stars["o"]["a"] == {"task_id": "a", "position": 0, "status": "completed",
                                      "result": {"x": 1}}
    assert stored.stars["o"]["b"]["status"] == "pending"
    assert set(stored.leases) == {"d:2"}
    # Retention drops whole commits' chunks: 1-2 stay while 2 is still wanted.
    assert stored.events == [(1, b"\x00one"), (2, b"two"), (3, b"three")]
    assert stored.requests == [("M", "r1", {"created": 5.0})]
    assert stored.meta["epoch"] == "e" and stored.meta["schema"] == "2"
    store = SQLiteStore(path)
    store.write([Batch(events=[(4, b"four")], events_before=3)])
    assert store.load(event_limit=10).events == [(3, b"three"), (4, b"four")]
    store.close()


def test_one_commit_folds_its_batches_in_order(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "fold.db"))
    store.write([
        Batch(orions={"o": {"v": 1}}, star_sets={"o": [("a", {}, {"status": "pending"})]},
              leases={"gone": {"lease_id": "gone"}}),
        Batch(stars=[("o", "a", {"status": "running"})], leases={"kept": {"lease_id": "kept"}}),
        Batch(stars=[("o", "a", {"status": "completed"})], leases={"gone": None}),
        Batch(deleted_orions=["x"], orions={"x": {"v": 2}},
              star_sets={"x": [("b", {}, {"status": "pending"})]}),
        Batch(deleted_orions=["y"]),  # registered and deleted in one commit: nothing left
    ])
    stored = store.load(0)
    assert stored.stars["o"]["a"]["status"] == "completed"
    assert set(stored.leases) == {"kept"}
    assert set(stored.orions) == {"o", "x"} and set(stored.stars) == {"o", "x"}
    store.close()


def test_a_version_1_store_is_migrated(tmp_path: Path) -> None:
    path = str(tmp_path / "v1.db")
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "CREATE TABLE events (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);"
                       "INSERT INTO meta VALUES ('schema', '1');"
                       "INSERT INTO events VALUES (1, x'01'), (2, x'0202');")
    conn.close()
    store = SQLiteStore(path)
    stored = store.load(10)
    assert stored.events == [(1, b"\x01"), (2, b"\x02\x02")] and stored.meta["schema"] == "2"
    store.close()


def test_load_returns_only_the_newest_events(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "e.db"))
    store.write([Batch(events=[(i, b"e") for i in range(1, 101)])])
    assert [seq for seq, _ in store.load(event_limit=3).events] == [98, 99, 100]
    store.close()


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "f.db"))
    with pytest.raises(sqlite3.IntegrityError):
        # the second star of a set repeats a task id: the whole write is rolled back
        store.write([Batch(events=[(1, b"e")]),
                     Batch(star_sets={"o": [("a", {}, {}), ("a", {}, {})]})])
    stored = store.load(10)
    assert stored.events == [] and stored.stars == {}
    store.close()


def test_a_second_server_on_the_same_database_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "one.db")
    first = SQLiteStore(path)
    with pytest.raises(StoreLockedError, match="in use by another process"):
        SQLiteStore(path, lock_timeout=0.1)
    first.close()
    SQLiteStore(path).close()  # free again once the first is closed


def test_an_unusable_path_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="choose a writable path"):
        open_store(str(tmp_path / "file" / "orion.db"))
    with pytest.raises(ValueError, match="full, normal"):
        SQLiteStore(":memory:", sync="off")


def test_wal_and_the_sync_mode_are_set(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"), sync="normal")
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()
    full = SQLiteStore(str(tmp_path / "f.db"))
    assert full._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    full.close()


async def test_an_engine_round_trips_through_sqlite(tmp_path: Path) -> None:
    """Orions, their stars' states and results come back from the file as they were."""
    path = str(tmp_path / "engine.db")
    config = EngineConfig(retry_backoff_base=0.0, device_grace_period=0.0)
    engine = OrionEngine(config, store=open_store(path))
    restore(engine, engine.journal.store.load(0), hold=1.0)  # type: ignore[union-attr]
    await FakeDevice("d1", fail_task_ids={"bad"}).connect(engine.devices)
    orion = TaskOrion("o", metadata={"team": "x"})
    for task_id in ("a", "bad", "c"):
        orion.add_task(TaskStar(task_id, description=task_id, target_device_id="d1",
                                task_data={"n": task_id}, priority=3))
    result = await engine.orchestrator.orchestrate_orion(orion)
    await engine.close()

    store = open_store(path)
    stored = store.load(100)
    store.close()
    again = orion_from_records(stored.orions["o"], stored.stars["o"])
    assert [t.task_id for t in again.get_all_tasks()] == ["a", "bad", "c"]
    assert again.state.value == result["status"] == "partially_failed"
    assert {t.task_id: t.result for t in again.get_all_tasks()} == result["results"]
    bad = again.get_task("bad")
    assert bad.error is not None and bad.error.reason == "task_error"
    assert again.get_task("a").task_data == {"n": "a"} and again.metadata == {"team": "x"}
    assert stored.meta["boot"] == "1" and stored.meta["epoch"]


async def test_the_journal_group_commits_into_sqlite(tmp_path: Path) -> None:
    """Many loop steps while a commit is in flight share the next transaction."""
    journal = Journal(open_store(str(tmp_path / "g.db")), linger=0)  # a batch per step
    steps = 2000
    for k in range(1, steps + 1):
        journal.event(k, b"x" * 100)
        await asyncio.sleep(0)  # one loop step each
    await journal.barrier()
    stats = journal.stats
    assert stats.batches == steps and stats.records == steps
    assert stats.commits < steps / 2  # far fewer transactions (fsyncs) than steps
    await journal.close()
    store = open_store(str(tmp_path / "g.db"))
    assert len(store.load(steps).events) == steps
    store.close()


@pytest.mark.timeout(60)
def test_a_killed_writer_leaves_a_consistent_store_with_every_acknowledged_step(
        tmp_path: Path) -> None:
    path = str(tmp_path / "crash.db")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("crash_writer.py")),
                             path], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    acknowledged = 0
    for line in proc.stdout:  # each line: a step the writer saw committed
        acknowledged = int(line)
        if acknowledged >= 700:
            break
    proc.send_signal(signal.SIGKILL)  # mid-write: more steps are always in flight
    proc.wait(10)

    stored = SQLiteStore(path).load(event_limit=1_000_000)
    step = int(stored.meta["step"])
    assert step >= acknowledged  # nothing acknowledged is lost
    assert [seq for seq, _ in stored.events] == list(range(1, step + 1))  # no gap, no extra
    assert stored.events[-1][1] == f"event {step}".encode()
    assert set(stored.leases) == {f"l{step}"}  # each lease's start and end, atomically
    assert stored.stars["o"]["a"]["result"] == step
