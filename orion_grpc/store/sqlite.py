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
- **A handful of statements per commit**, whatever its size: rows go in as one JSON array
  per table (``INSERT … SELECT … FROM json_each(?)``, ``UPDATE … FROM json_each(?)``) and a
  commit's events as one length-prefixed chunk. Python's sqlite3 releases the GIL around
  every statement step; one step per row would make the writer thread and the event loop
  hand the GIL back and forth hundreds of times per commit (a convoy that halved the
  server's throughput in ``bench/grpc_bench.py --store``).
- Records are the model's JSON forms; events and request answers are stored as the bytes
  the API layer gives (serialised protobuf), so this module knows nothing about either.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.store import Batch, StoredState, merge_star

SCHEMA_VERSION = 2  # 2: events in chunks (1: a row per event)
SYNC_MODES = ("full", "normal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orions (orion_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stars (
    orion_id TEXT NOT NULL, task_id TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (orion_id, task_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (lease_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS event_chunks (
    first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    method TEXT NOT NULL, request_id TEXT NOT NULL, created REAL NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (method, request_id));
"""


class StoreError(RuntimeError):
    """The store cannot be opened (the message says why and what to do)."""


class StoreLockedError(StoreError):
    """Another process holds the store (a second server on the same database)."""


# One encoder for every record: json.dumps with options builds a new encoder per call, which
# costs more than encoding a star's small state.
_dumps = json.JSONEncoder(default=str, separators=(",", ":")).encode


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
        if schema < 2 and conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name = 'events'").fetchone():
            rows = conn.execute("SELECT seq, data FROM events ORDER BY seq").fetchall()
            if rows:
                conn.execute("INSERT INTO event_chunks VALUES (?, ?, ?)",
                             (rows[0][0], rows[-1][0], _chunk([bytes(d) for _, d in rows])))
            conn.execute("DROP TABLE events")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                     (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
        if conn.execute("SELECT json_valid('[]')").fetchone()[0] != 1:  # pragma: no cover
            raise StoreError("this SQLite has no JSON functions (needs 3.38 or later)")

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
                chunks: list[tuple[int, bytes]] = []
                count = 0
                for first, last, data in conn.execute(
                        "SELECT first_seq, last_seq, data FROM event_chunks "
                        "ORDER BY first_seq DESC"):
                    chunks.append((first, bytes(data)))
                    count += last - first + 1
                    if count >= event_limit:
                        break
                events = [(first + i, item) for first, data in reversed(chunks)
                          for i, item in enumerate(_unchunk(data))]
                state.events = events[-event_limit:]
            state.requests = [(m, r, json.loads(rec)) for m, r, rec in conn.execute(
                "SELECT method, request_id, record FROM requests ORDER BY created")]
            return state

    # ------------------------------------------------------------------ writing
    def write(self, batches: Sequence[Batch]) -> None:
        commit = _Commit(batches)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                commit.apply(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:  # pragma: no cover - closing never matters more than once
                pass


def _chunk(events: Sequence[bytes]) -> bytes:
    """Events as one blob: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in events)


def _unchunk(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out


def _rows(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as the one JSON parameter of a ``json_each`` statement. A record stays a nested
    object, read back as JSON text with ``value->N`` (``->>`` gives scalars as SQL values):
    each record is encoded once, not once on its own and again escaped inside the rows."""
    return _dumps(rows)


class _Commit:
    """The batches of one transaction folded into one set of changes, in order: an orion
    deleted and registered again, a star's state written twice, a lease started and ended
    within the commit — each comes out as what the last batch left."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        self.deleted: set[str] = set()
        self.orions: dict[str, Any] = {}
        self.star_sets: dict[str, Any] = {}
        self.states: dict[tuple[str, str], Any] = {}
        self.leases: dict[str, Any] = {}
        self.events: list[tuple[int, bytes]] = []
        self.events_before = 0
        self.requests: dict[tuple[str, str], Any] = {}
        self.requests_before = 0.0
        self.meta: dict[str, str] = {}
        fresh: set[str] = set()  # leases started within this commit
        for b in batches:
            for orion_id in b.deleted_orions:
                self.deleted.add(orion_id)
                self.orions.pop(orion_id, None)
                self.star_sets.pop(orion_id, None)
                self._drop_states(orion_id)
            self.orions.update(b.orions)
            for orion_id, stars in b.star_sets.items():
                self.star_sets[orion_id] = stars
                self._drop_states(orion_id)  # the set carries every star's newest state
            for orion_id, task_id, state in b.stars:
                self.states[(orion_id, task_id)] = state
            for lease_id, record in b.leases.items():
                if record is not None:
                    self.leases[lease_id] = record
                    fresh.add(lease_id)
                elif lease_id in fresh:
                    del self.leases[lease_id]  # never reaches the database
                    fresh.discard(lease_id)
                else:
                    self.leases[lease_id] = None
            self.events.extend(b.events)
            self.events_before = max(self.events_before, b.events_before)
            for method, request_id, record in b.requests:
                self.requests[(method, request_id)] = record
            self.requests_before = max(self.requests_before, b.requests_before)
            self.meta.update(b.meta)

    def _drop_states(self, orion_id: str) -> None:
        if self.states:
            self.states = {k: v for k, v in self.states.items() if k[0] != orion_id}

    def apply(self, conn: sqlite3.Connection) -> None:
        if self.deleted:
            ids = _rows(sorted(self.deleted))
            conn.execute("DELETE FROM orions WHERE orion_id IN (SELECT value FROM json_each(?))",
                         (ids,))
            conn.execute("DELETE FROM stars WHERE orion_id IN (SELECT value FROM json_each(?))",
                         (ids,))
        if self.orions:
            conn.execute("INSERT OR REPLACE INTO orions (orion_id, record) "
                         "SELECT value->>0, value->1 FROM json_each(?)",
                         (_rows([(i, r) for i, r in self.orions.items()]),))
        if self.star_sets:
            conn.execute("DELETE FROM stars WHERE orion_id IN (SELECT value FROM json_each(?))",
                         (_rows(list(self.star_sets)),))
            conn.execute("INSERT INTO stars (orion_id, task_id, spec, state) "
                         "SELECT value->>0, value->>1, value->2, value->3 FROM json_each(?)",
                         (_rows([(o, t, spec, st)
                                 for o, stars in self.star_sets.items()
                                 for t, spec, st in stars]),))
        if self.states:
            conn.execute("UPDATE stars SET state = u.state FROM (SELECT value->>0 AS o, "
                         "value->>1 AS t, value->2 AS state FROM json_each(?)) AS u "
                         "WHERE stars.orion_id = u.o AND stars.task_id = u.t",
                         (_rows([(o, t, st) for (o, t), st in self.states.items()]),))
        if self.leases:
            ended = [i for i, r in self.leases.items() if r is None]
            started = [(i, r) for i, r in self.leases.items() if r is not None]
            if ended:
                conn.execute("DELETE FROM leases WHERE lease_id IN "
                             "(SELECT value FROM json_each(?))", (_rows(ended),))
            if started:
                conn.execute("INSERT OR REPLACE INTO leases (lease_id, record) "
                             "SELECT value->>0, value->1 FROM json_each(?)", (_rows(started),))
        if self.events:
            events = sorted(self.events)
            conn.execute("INSERT OR REPLACE INTO event_chunks VALUES (?, ?, ?)",
                         (events[0][0], events[-1][0], _chunk([d for _, d in events])))
        if self.events_before:
            # whole chunks only: a chunk goes once its newest event is older than the limit
            conn.execute("DELETE FROM event_chunks WHERE last_seq < ?", (self.events_before,))
        if self.requests:
            conn.execute("INSERT OR REPLACE INTO requests (method, request_id, created, record) "
                         "SELECT value->>0, value->>1, value->>2, value->3 FROM json_each(?)",
                         (_rows([(m, r, float(rec.get("created", 0.0)), rec)
                                 for (m, r), rec in self.requests.items()]),))
        if self.requests_before:
            conn.execute("DELETE FROM requests WHERE created < ?", (self.requests_before,))
        if self.meta:
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             self.meta.items())


def open_store(path: str, *, sync: str = "full") -> SQLiteStore:
    """The default store at ``path`` (``~`` and environment variables expanded)."""
    if path != ":memory:":
        path = os.path.expandvars(os.path.expanduser(path))
    return SQLiteStore(path, sync=sync)
