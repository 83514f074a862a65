"""EventService.WatchEvents: the live, resumable event feed (see event_log.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ..core import Violation
from ..gen.orion.v1 import event_pb2
from ..gen.orion.v1 import event_service_pb2 as pb
from ..gen.orion.v1 import event_service_pb2_grpc as pb_grpc
from . import wire
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

    def matches(self, entry: LogEntry) -> bool:
        if self.types and entry.type not in self.types:
            return False
        if self.orion_id and entry.orion_id != self.orion_id:
            return False
        if self.task_ids and entry.task_id not in self.task_ids:
            return False
        return not self.device_id or entry.device_id == self.device_id

    @property
    def everything(self) -> bool:
        return not (self.types or self.orion_id or self.task_ids or self.device_id)


# A batched response is written once it holds this many bytes (a client's default receive limit
# is 4 MiB; one larger event still goes alone).
MAX_BATCH_BYTES = 1 << 20


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
                          ) -> AsyncIterator[bytes | pb.WatchEventsResponse]:
        log = self.log
        wanted = _Filter(request)
        self._check_open()
        sub = log.subscribe(self._start_after(request))
        log.snapshot_watchers += wanted.snapshots
        snapshots, batched = wanted.snapshots, request.allow_batches
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
                    # Every watcher sends the same encoded bytes (LogEntry.framed): no
                    # per-watcher protobuf work. With allow_batches, what is pending goes as
                    # few responses; otherwise one response per event.
                    cursor = entries[-1].sequence
                    if not wanted.everything:
                        entries = [e for e in entries if wanted.matches(e)]
                    if not batched:
                        for entry in entries:
                            yield entry.framed(False, snapshots)
                            sub.cursor = entry.sequence
                    else:
                        frames = [e.framed(True, snapshots) for e in entries]
                        for chunk in _chunks(frames):
                            yield chunk
                    sub.cursor = cursor
                    continue
                if not await log.wait(sub, self.bookmark_interval):
                    mark = log.bookmark(sub.cursor)
                    yield pb.WatchEventsResponse(events=[mark]) if batched else \
                        pb.WatchEventsResponse(event=mark)
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


def _chunks(frames: list[bytes]) -> list[bytes]:
    """Encoded batched responses holding ``frames`` in order, each up to MAX_BATCH_BYTES."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for frame in frames:
        if group and size + len(frame) > MAX_BATCH_BYTES:
            out.append(b"".join(group))
            group, size = [], 0
        group.append(frame)
        size += len(frame)
    if group:
        out.append(b"".join(group))
    return out


def add_event_service(server: grpc.aio.Server, servicer: EventServicer) -> None:
    """As the generated add_EventServiceServicer_to_server, but WatchEvents may yield
    pre-encoded responses (bytes, see wire.py): every watcher sends the same bytes."""
    handlers = {"WatchEvents": grpc.unary_stream_rpc_method_handler(
        servicer.WatchEvents, request_deserializer=pb.WatchEventsRequest.FromString,
        response_serializer=wire.passthrough(pb.WatchEventsResponse.SerializeToString))}
    name = pb.DESCRIPTOR.services_by_name["EventService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
