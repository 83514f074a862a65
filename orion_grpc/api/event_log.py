"""The server's event log: every engine event, numbered, retained, fanned out to watchers.

``EventLog`` observes the engine's EventBus. Each event gets the next sequence number
(strictly increasing, no gaps) and is converted to ``orion.v1.Event`` once; the log keeps the
latest ``retention`` of them in one shared ring. A watcher is a cursor into that ring (the
sequence it has examined last), so a subscriber costs O(1) memory however far behind it is;
one that falls behind by more than ``max_lag`` events (at most the retention) is cut off with
RESOURCE_EXHAUSTED and a resume token rather than growing memory.

Resume tokens are ``base64url("v1.<epoch>.<sequence>")``. With a store (``journal``) the
epoch is the store's and the log continues across restarts: each event is journaled in the
same loop step as the change it describes (the log is a synchronous tap on the bus), the
newest ``retention`` events are loaded back at start, and watchers are only ever sent events
that are already durable — so a token a client holds always names an event that a restarted
server still has, and resuming from it yields no gap and no duplicate. Without a store the
epoch is new for every process. A token from another epoch is refused with
FAILED_PRECONDITION (RESUME_TOKEN_EPOCH_MISMATCH) and one older than the retained history
with OUT_OF_RANGE (RESUME_TOKEN_EXPIRED); both messages say how to recover.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice

import grpc

from ..core import DeviceEvent, Event, EventBus, IEventObserver, TaskEvent, Violation
from ..core.journal import Journal
from ..gen.orion.v1 import event_pb2, event_service_pb2
from . import wire
from .convert import set_timestamp
from .convert_events import (
    EVENT_ORION,
    DeviceEventRecord,
    OrionResultRecord,
    TaskEventRecord,
    event_parts,
)
from .errors import ApiError

TOKEN_VERSION = "v1"

# What LogEntry.lazy keeps until the event is first read.
EventRecord = TaskEventRecord | DeviceEventRecord | OrionResultRecord


# Field numbers used to frame encoded events by hand (see wire.py): WatchEventsResponse.event /
# .events, OrionEventPayload.snapshot (Event.orion: convert_events.EVENT_ORION).
_RESPONSE_EVENT = event_service_pb2.WatchEventsResponse.DESCRIPTOR.fields_by_name["event"].number
_RESPONSE_EVENTS = \
    event_service_pb2.WatchEventsResponse.DESCRIPTOR.fields_by_name["events"].number
_ORION_SNAPSHOT = event_pb2.OrionEventPayload.DESCRIPTOR.fields_by_name["snapshot"].number


class LogEntry:
    """One logged event, encoded once (``data``: an ``orion.v1.Event`` without the orion
    snapshot) and framed once for every watcher: all watchers send the same bytes.

    Star and device events, and an ended orion's result, are encoded when first read
    (``record``: see ``TaskEventRecord``): with no watcher and no store, nobody ever reads
    most of them."""

    __slots__ = ("sequence", "_data", "record", "snapshot", "type", "orion_id", "task_id",
                 "device_id", "_framed", "_token")

    def __init__(self, sequence: int, data: bytes | None, snapshot: bytes | None,
                 event_type: int, orion_id: str, task_id: str, device_id: str,
                 record: EventRecord | None = None,
                 token: Callable[[int], str] | None = None) -> None:
        self.sequence = sequence
        self._data = data
        self.record = record  # encoded into ``data`` on first read (then dropped)
        self._token = token
        self.snapshot = snapshot  # encoded TaskOrion, for watchers that asked for snapshots
        self.type = event_type  # what watch filters look at, without decoding
        self.orion_id = orion_id
        self.task_id = task_id
        self.device_id = device_id
        self._framed: list[bytes | None] = [None, None]

    @classmethod
    def of(cls, sequence: int, event: event_pb2.Event, data: bytes | None = None,
           snapshot: bytes | None = None) -> LogEntry:
        return cls(sequence, data if data is not None else event.SerializeToString(), snapshot,
                   event.type, event.orion_id, event.task_id, event.device_id)

    @classmethod
    def lazy(cls, sequence: int, record: EventRecord, token: Callable[[int], str]) -> LogEntry:
        return cls(sequence, None, None, record.type, record.orion_id, record.task_id,
                   record.device_id, record, token)

    @property
    def data(self) -> bytes:
        """The encoded ``orion.v1.Event`` (without the orion snapshot)."""
        data = self._data
        if data is None:
            record, token = self.record, self._token
            assert record is not None and token is not None
            data = self._data = record.encode(self.sequence, token(self.sequence))
            self.record = self._token = None
        return data

    @property
    def event(self) -> event_pb2.Event:
        """The event, decoded (without the orion snapshot)."""
        return event_pb2.Event.FromString(self.data)

    def framed(self, batched: bool, snapshot: bool = False) -> bytes:
        """This event as an encoded ``WatchEventsResponse`` field: ``event`` (one event per
        response) or one of ``events`` (batches: responses are such fields concatenated)."""
        if snapshot and self.snapshot is not None:
            # Two occurrences of a message field merge: the event, then its orion payload's
            # snapshot.
            extra = wire.field(EVENT_ORION, wire.field(_ORION_SNAPSHOT, self.snapshot))
            return wire.field(_RESPONSE_EVENTS if batched else _RESPONSE_EVENT,
                              self.data + extra)
        frame = self._framed[batched]
        if frame is None:
            frame = self._framed[batched] = wire.field(
                _RESPONSE_EVENTS if batched else _RESPONSE_EVENT, self.data)
        return frame


class Subscription:
    """One watcher's position in the log."""

    __slots__ = ("cursor", "max_lag", "wake", "_log")

    def __init__(self, log: EventLog, cursor: int, max_lag: int) -> None:
        self._log = log
        self.cursor = cursor  # last sequence examined (delivered or filtered out)
        self.max_lag = max_lag
        self.wake = asyncio.Event()

    @property
    def overflow(self) -> bool:
        """The watcher is more than ``max_lag`` events behind (it gets cut off)."""
        return self._log.latest_sequence - self.cursor > self.max_lag


class EventLog(IEventObserver):
    """The numbered, retained, durable (with a ``journal``) event history.

    :param journal: persist every event and deliver only durable ones (see the module doc).
    :param history: ``(sequence, encoded Event)`` pairs loaded from the store, oldest first;
        numbering continues after the last.
    """

    def __init__(self, retention: int = 50_000, max_lag: int | None = None,
                 epoch: str | None = None, *, journal: Journal | None = None,
                 history: Iterable[tuple[int, bytes]] = ()) -> None:
        if retention < 1:
            raise ValueError("retention must be at least 1")
        self.retention = retention
        self.max_lag = min(max_lag or retention, retention)
        self.epoch = epoch or f"{int(time.time()):x}{os.urandom(3).hex()}"
        self._entries: deque[LogEntry] = deque(maxlen=None)
        for sequence, data in history:
            self._entries.append(LogEntry.of(sequence, event_pb2.Event.FromString(data), data))
        while len(self._entries) > retention:
            self._entries.popleft()
        self._next = self._entries[-1].sequence + 1 if self._entries else 1
        self._durable = self._next - 1  # newest event that watchers may see
        self._journal = journal
        self._pending: deque[list[int]] = deque()  # [batch number, newest sequence in it]
        if journal is not None:
            journal.add_commit_listener(self._committed)
        self._subs: set[Subscription] = set()
        self._sleeping: list[Subscription] = []  # watchers waiting for the next event
        self._device_status: dict[str, str] = {}
        self.closed_reason: str | None = None
        self.snapshot_watchers = 0  # watchers with include_orion_snapshots

    def attach(self, bus: EventBus) -> None:
        """Log every event ``bus`` publishes, in the same loop step (a tap, not an observer:
        the event must be journaled together with the change it describes)."""
        bus.add_tap(self.append)

    # ------------------------------------------------------------------ writing
    async def on_event(self, event: Event) -> None:
        self.append(event)

    def append(self, event: Event) -> LogEntry:
        seq = self._next
        self._next += 1
        journal = self._journal
        if isinstance(event, TaskEvent):
            entry = LogEntry.lazy(seq, TaskEventRecord(event), self.token)
        elif isinstance(event, DeviceEvent):
            device_status = self._device_status
            record = DeviceEventRecord(event, device_status.get(event.device_id))
            device_status[event.device_id] = event.device_status
            entry = LogEntry.lazy(seq, record, self.token)
        else:
            # A whole-orion snapshot costs O(stars) in time and memory: take it only while a
            # watcher that asked for snapshots is connected.
            pb, snapshot, result = event_parts(event, seq, self.token(seq),
                                               orion_snapshot=self.snapshot_watchers > 0)
            if result is None:
                entry = LogEntry.of(seq, pb)
            else:
                entry = LogEntry.lazy(seq, OrionResultRecord(pb, result), self.token)
            if snapshot is not None:
                entry.snapshot = snapshot.SerializeToString()
        self._entries.append(entry)
        if len(self._entries) > self.retention:
            self._entries.popleft()
            if journal is not None and seq % 1024 == 0:
                journal.trim_events(self._entries[0].sequence)
        if journal is not None:
            if journal.sealed:
                return entry  # shutting down: not persisted, so never sent either
            journal.event(seq, entry.data)
            batch = journal.pending_batch()
            pending = self._pending
            if pending and pending[-1][0] == batch:
                pending[-1][1] = seq
            else:
                pending.append([batch, seq])
            return entry  # watchers wake when the batch is committed (_committed)
        self._durable = seq
        self._wake_sleepers()
        return entry

    def _wake_sleepers(self) -> None:
        """Wake the watchers waiting for an event (the others will look anyway: O(waiting)
        per event, not O(watchers))."""
        sleeping = self._sleeping
        if sleeping:
            for sub in sleeping:
                sub.wake.set()
            sleeping.clear()

    async def wait(self, sub: Subscription, timeout: float) -> bool:
        """Wait until an event after ``sub.cursor`` may be read (or the log closes); False
        after ``timeout`` seconds without one."""
        sub.wake.clear()
        if self._durable > sub.cursor or self.closed_reason is not None:
            return True
        self._sleeping.append(sub)
        try:
            await asyncio.wait_for(sub.wake.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if not sub.wake.is_set():
                try:
                    self._sleeping.remove(sub)
                except ValueError:
                    pass

    def _committed(self, batch: int) -> None:
        """The journal committed ``batch``: the events in it may now be sent."""
        pending = self._pending
        durable = self._durable
        while pending and pending[0][0] <= batch:
            durable = pending.popleft()[1]
        if durable != self._durable:
            self._durable = durable
            self._wake_sleepers()

    # ------------------------------------------------------------------ positions
    @property
    def latest_sequence(self) -> int:
        """Sequence of the newest event (0 before the first)."""
        return self._next - 1

    @property
    def durable_sequence(self) -> int:
        """Sequence of the newest event watchers may see (committed to the store, if any)."""
        return self._durable

    @property
    def oldest_sequence(self) -> int:
        """Sequence of the oldest retained event (latest + 1 when the log is empty)."""
        return self._entries[0].sequence if self._entries else self._next

    def token(self, sequence: int) -> str:
        raw = f"{TOKEN_VERSION}.{self.epoch}.{sequence}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def parse_token(self, token: str) -> int:
        """The sequence a resume token points at; ApiError if it cannot be resumed here."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            version, epoch, seq_text = raw.split(".")
            sequence = int(seq_text)
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "resume_token is not a token this server issued; pass an "
                           "Event.resume_token unchanged", "INVALID_RESUME_TOKEN",
                           [Violation("resume_token", "malformed", "INVALID_RESUME_TOKEN")]
                           ) from exc
        if version != TOKEN_VERSION or epoch != self.epoch:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"resume_token comes from another server run (epoch {epoch}; this server's "
                f"epoch is {self.epoch}): the events before this server started are gone. "
                "Re-read the state you need (GetOrionStatus) and watch again without a token "
                "(or with include_history).", "RESUME_TOKEN_EPOCH_MISMATCH",
                metadata={"token_epoch": epoch, "server_epoch": self.epoch})
        if sequence < self.oldest_sequence - 1:
            raise ApiError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"resume_token points at event {sequence}, but the oldest event still "
                f"retained is {self.oldest_sequence}: events in between are gone. Re-read the "
                "state you need and watch again without a token (or with include_history).",
                "RESUME_TOKEN_EXPIRED",
                metadata={"token_sequence": str(sequence),
                          "oldest_retained_sequence": str(self.oldest_sequence)})
        if sequence > self.latest_sequence:
            raise ApiError(grpc.StatusCode.OUT_OF_RANGE,
                           f"resume_token points at event {sequence}, which this server has "
                           f"not published (latest is {self.latest_sequence})",
                           "RESUME_TOKEN_AHEAD",
                           metadata={"token_sequence": str(sequence),
                                     "latest_sequence": str(self.latest_sequence)})
        return sequence

    # ------------------------------------------------------------------ reading
    def subscribe(self, after: int, max_lag: int | None = None) -> Subscription:
        sub = Subscription(self, after, min(max_lag or self.max_lag, self.retention))
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def lost(self, sub: Subscription) -> bool:
        """True if events after the subscriber's cursor have already been evicted."""
        return sub.cursor < self.oldest_sequence - 1

    def read(self, sub: Subscription, limit: int = 512) -> list[LogEntry]:
        """Durable entries after the subscriber's cursor, oldest first (contiguous sequences).

        A list, not a lazy view: the ring may shift while the caller awaits between entries.
        """
        entries = self._entries
        if not entries:
            return []
        first = entries[0].sequence
        start = sub.cursor + 1 - first
        if start < 0 or start >= len(entries):
            return []
        stop = min(len(entries), start + limit, self._durable + 1 - first)
        if start >= stop:
            return []
        # Watchers read near the end: islice from the nearer end (deque indexing in the
        # middle of a 50k ring is O(n) per item).
        if start > len(entries) // 2:
            tail = list(islice(reversed(entries), len(entries) - stop, len(entries) - start))
            tail.reverse()
            return tail
        return list(islice(entries, start, stop))

    def bookmark(self, cursor: int) -> event_pb2.Event:
        event = event_pb2.Event(sequence=cursor, resume_token=self.token(cursor),
                                type=event_pb2.EVENT_TYPE_BOOKMARK, source="event_log")
        set_timestamp(event.timestamp, time.time())
        event.bookmark.oldest_retained_sequence = self.oldest_sequence
        return event

    # ------------------------------------------------------------------ shutdown
    def close(self, reason: str = "server shutting down") -> None:
        """End every watch: each stream finishes with UNAVAILABLE and its resume token."""
        self.closed_reason = reason
        for sub in self._subs:
            sub.wake.set()
        self._sleeping.clear()
