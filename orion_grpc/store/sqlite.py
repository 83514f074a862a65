"""SQLite storage engine: the default store of ``orion serve`` (stdlib ``sqlite3``).

Choices, and why:

- **WAL mode**: a commit appends to the write-ahead log instead of rewriting pages in place,
  and readers never block the writer.
- **synchronous=FULL by default**: every commit is fsynced, so what the server acknowledged
  survives a power cut or a kernel crash, not only a killed process. The journal commits in
  groups (one transaction for everything queued since the last one), so the fsync is paid
  per group, not per change. ``synchronous=NORMAL`` (``--store-sync normal``) skips the fsync
  at commit (WAL is synced at checkpoints): still safe against a killed *process* — the OS
  has the data — and never corrupt, but a power cut may lose the last commits.
- **One writer, exclusive**: the connection takes the database's lock at open and keeps it
  (``locking_mode=EXCLUSIVE``), so a second server on the same file fails at once with
  ``StoreLockedError`` instead of two servers overwriting each other.
- Records are the model's JSON forms; events and request answers are stored as the bytes
  the API layer gives (serialised protobuf), so this module knows nothing about either.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.store import Batch, StoredState, merge_star

SCHEMA_VERSION = 1
SYNC_MODES = ("full", "normal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orions (orion_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stars (
    orion_id TEXT NOT NULL, task_id TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (orion_id, task_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (lease_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    method TEXT NOT NULL, request_id TEXT NOT NULL, created REAL NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (method, request_id));
"""


class StoreError(RuntimeError):
    """The store cannot be opened (the message says why and what to do)."""


class StoreLockedError(StoreError):
    """Another process holds the store (a second server on the same database)."""


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


class SQLiteStore:
    """A ``Store`` in one SQLite database file (or ``:memory:``)."""

    def __init__(self, path: str, *, sync: str = "full", lock_timeout: float = 2.0) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"store sync mode must be one of {', '.join(SYNC_MODES)}, "
                             f"got {sync!r}")
        self.path = path
        self.sync = sync
        self.durable = path != ":memory:"  # a file outlives the process; :memory: does not
        self._lock = threading.Lock()
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # One connection, used by the loading thread first and the journal's writer
            # thread after (never both at once): check_same_thread off, autocommit.
            self._conn = sqlite3.connect(path, timeout=lock_timeout, isolation_level=None,
                                         check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {path}: {exc}; choose a writable path "
                             "with --store (or ORION_STORE)") from exc
        try:
            self._open()
        except sqlite3.Error as exc:
            self._conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreLockedError(
                    f"the store {path} is in use by another process (another 'orion serve' "
                    "on the same database?); stop it or choose another --store") from exc
            raise StoreError(f"cannot use the store {path}: {exc}") from exc

    def describe(self) -> str:
        return self.path

    def _open(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() not in ("wal", "memory"):
            raise StoreError(f"the store {self.path} cannot use WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={self.sync.upper()}")
        conn.execute("BEGIN IMMEDIATE")  # takes the (exclusive, kept) lock now
        for statement in _SCHEMA.strip().split(";\n"):
            if statement.strip():
                conn.execute(statement)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        schema = int(meta.get("schema", SCHEMA_VERSION))
        if schema > SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise StoreError(f"the store {self.path} has schema version {schema}; this "
                               f"Orion understands up to {SCHEMA_VERSION} (upgrade Orion)")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                     (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")

    # ------------------------------------------------------------------ reading
    def load(self, event_limit: int) -> StoredState:
        with self._lock:
            conn = self._conn
            state = StoredState()
            state.meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            for orion_id, record in conn.execute("SELECT orion_id, record FROM orions"):
                state.orions[orion_id] = json.loads(record)
            for orion_id, task_id, spec, st in conn.execute(
                    "SELECT orion_id, task_id, spec, state FROM stars"):
                state.stars.setdefault(orion_id, {})[task_id] = merge_star(json.loads(spec),
                                                                           json.loads(st))
            for lease_id, record in conn.execute("SELECT lease_id, record FROM leases"):
                state.leases[lease_id] = json.loads(record)
            if event_limit > 0:
                rows = conn.execute("SELECT seq, data FROM events ORDER BY seq DESC LIMIT ?",
                                    (event_limit,)).fetchall()
                state.events = [(seq, bytes(data)) for seq, data in reversed(rows)]
            state.requests = [(m, r, json.loads(rec)) for m, r, rec in conn.execute(
                "SELECT method, request_id, record FROM requests ORDER BY created")]
            return state

    # ------------------------------------------------------------------ writing
    def write(self, batches: Sequence[Batch]) -> None:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                for batch in batches:
                    self._apply(conn, batch)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _apply(conn: sqlite3.Connection, b: Batch) -> None:
        if b.deleted_orions:
            ids = [(i,) for i in b.deleted_orions]
            conn.executemany("DELETE FROM orions WHERE orion_id = ?", ids)
            conn.executemany("DELETE FROM stars WHERE orion_id = ?", ids)
        if b.orions:
            conn.executemany("INSERT OR REPLACE INTO orions (orion_id, record) VALUES (?, ?)",
                             [(i, _dumps(r)) for i, r in b.orions.items()])
        for orion_id, stars in b.star_sets.items():
            conn.execute("DELETE FROM stars WHERE orion_id = ?", (orion_id,))
            conn.executemany(
                "INSERT INTO stars (orion_id, task_id, spec, state) VALUES (?, ?, ?, ?)",
                [(orion_id, tid, _dumps(spec), _dumps(st)) for tid, spec, st in stars])
        if b.stars:
            conn.executemany("UPDATE stars SET state = ? WHERE orion_id = ? AND task_id = ?",
                             [(_dumps(st), oid, tid) for oid, tid, st in b.stars])
        if b.leases:
            started = [(i, _dumps(r)) for i, r in b.leases.items() if r is not None]
            ended = [(i,) for i, r in b.leases.items() if r is None]
            if ended:
                conn.executemany("DELETE FROM leases WHERE lease_id = ?", ended)
            if started:
                conn.executemany("INSERT OR REPLACE INTO leases (lease_id, record) "
                                 "VALUES (?, ?)", started)
        if b.events:
            conn.executemany("INSERT OR REPLACE INTO events (seq, data) VALUES (?, ?)",
                             b.events)
        if b.events_before:
            conn.execute("DELETE FROM events WHERE seq < ?", (b.events_before,))
        if b.requests:
            conn.executemany(
                "INSERT OR REPLACE INTO requests (method, request_id, created, record) "
                "VALUES (?, ?, ?, ?)",
                [(m, r, float(rec.get("created", 0.0)), _dumps(rec)) for m, r, rec in b.requests])
        if b.requests_before:
            conn.execute("DELETE FROM requests WHERE created < ?", (b.requests_before,))
        if b.meta:
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             b.meta.items())

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:  # pragma: no cover - closing never matters more than once
                pass


def open_store(path: str, *, sync: str = "full") -> SQLiteStore:
    """The default store at ``path`` (``~`` and environment variables expanded)."""
    if path != ":memory:":
        path = os.path.expandvars(os.path.expanduser(path))
    return SQLiteStore(path, sync=sync)
