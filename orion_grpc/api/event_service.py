"""EventService.WatchEvents: the live, resumable event feed (see event_log.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from ..core import Violation
from ..gen.orion.v1 import event_pb2
from ..gen.orion.v1 import event_service_pb2 as pb
from ..gen.orion.v1 import event_service_pb2_grpc as pb_grpc
from .convert import Problems
from .errors import ApiError, rpc_errors
from .event_log import EventLog, LogEntry

_KNOWN_TYPES = frozenset(v for v in event_pb2.EventType.values()
                         if v not in (event_pb2.EVENT_TYPE_UNSPECIFIED,
                                      event_pb2.EVENT_TYPE_BOOKMARK))
_DEVICE_TYPES = frozenset({event_pb2.EVENT_TYPE_DEVICE_CONNECTED,
                           event_pb2.EVENT_TYPE_DEVICE_DISCONNECTED,
                           event_pb2.EVENT_TYPE_DEVICE_STATUS_CHANGED})


RESUME_TOKEN_HEADER = "x-orion-resume-token"


class _Filter:
    def __init__(self, request: pb.WatchEventsRequest) -> None:
        problems = Problems()
        names = ", ".join(event_pb2.EventType.Name(v) for v in sorted(_KNOWN_TYPES))
        for i, value in enumerate(request.types):
            if value not in _KNOWN_TYPES:
                what = ("EVENT_TYPE_UNSPECIFIED matches no event" if value == 0 else
                        "EVENT_TYPE_BOOKMARK is always sent; do not filter on it"
                        if value == event_pb2.EVENT_TYPE_BOOKMARK else
                        f"unknown EventType value {value}")
                problems.add(f"types[{i}]", f"{what}; expected one of {names}",
                             "UNKNOWN_ENUM_VALUE" if value not in (0,) else "INVALID_FIELD")
        problems.raise_if_any("Invalid event filter", "INVALID_FILTER")
        self.types = frozenset(request.types)
        self.orion_id = request.orion_id
        self.task_ids = frozenset(request.task_ids)
        self.device_id = request.device_id
        self.snapshots = request.include_orion_snapshots

    def matches(self, event: event_pb2.Event) -> bool:
        if self.types and event.type not in self.types:
            return False
        if self.orion_id and event.orion_id != self.orion_id:
            return False
        if self.task_ids and event.task_id not in self.task_ids:
            return False
        return not self.device_id or event.device_id == self.device_id

    def response(self, entry: LogEntry) -> pb.WatchEventsResponse:
        response = pb.WatchEventsResponse(event=entry.event)
        if self.snapshots and entry.snapshot is not None:
            response.event.orion.snapshot.CopyFrom(entry.snapshot)
        return response


class EventServicer(pb_grpc.EventServiceServicer):
    def __init__(self, log: EventLog, bookmark_interval: float = 30.0) -> None:
        self.log = log
        self.bookmark_interval = bookmark_interval

    def _start_after(self, request: pb.WatchEventsRequest) -> int:
        log = self.log
        if request.resume_token:
            if request.include_history:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               "set either resume_token or include_history, not both",
                               "CONFLICTING_FIELDS",
                               [Violation("include_history", "conflicts with resume_token",
                                          "CONFLICTING_FIELDS")])
            return log.parse_token(request.resume_token)
        if request.include_history:
            return log.oldest_sequence - 1
        return log.durable_sequence  # "from now": a token must never name a non-durable event

    @rpc_errors
    async def WatchEvents(self, request: pb.WatchEventsRequest,
                          context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[pb.WatchEventsResponse]:
        log = self.log
        wanted = _Filter(request)
        self._check_open()
        sub = log.subscribe(self._start_after(request))
        log.snapshot_watchers += wanted.snapshots
        try:
            # Headers go out at once (not with the first event), so a client's
            # wait_for_connection() means "subscribed"; they carry the starting position.
            await context.send_initial_metadata(((RESUME_TOKEN_HEADER, log.token(sub.cursor)),))
            while True:
                self._check_open(sub.cursor)
                if sub.overflow or log.lost(sub):
                    raise ApiError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"this watcher fell more than {sub.max_lag} events behind and was cut "
                        "off to bound the server's memory; resume with resume_token "
                        f"{log.token(sub.cursor)} (and read faster, or filter more)",
                        "WATCHER_TOO_SLOW", metadata={"resume_token": log.token(sub.cursor),
                                                      "max_lag": str(sub.max_lag)})
                entries = log.read(sub)
                if entries:
                    for entry in entries:
                        if wanted.matches(entry.event):
                            yield wanted.response(entry)
                        sub.cursor = entry.sequence
                    continue
                sub.wake.clear()
                try:
                    await asyncio.wait_for(sub.wake.wait(), self.bookmark_interval)
                except TimeoutError:
                    yield pb.WatchEventsResponse(event=log.bookmark(sub.cursor))
        finally:
            log.unsubscribe(sub)
            log.snapshot_watchers -= wanted.snapshots

    def _check_open(self, cursor: int | None = None) -> None:
        log = self.log
        if log.closed_reason is None:
            return
        token = log.token(log.durable_sequence if cursor is None else cursor)
        raise ApiError(grpc.StatusCode.UNAVAILABLE,
                       f"{log.closed_reason}, resume with token {token}", "SERVER_SHUTTING_DOWN",
                       metadata={"resume_token": token})
