"""DeviceService: the device link over gRPC (one bidirectional stream per device session).

``DeviceServiceServicer.Connect`` turns a device's stream into a ``GrpcDeviceLink`` — the
engine's ``DeviceLink`` — and feeds what the device says back into the engine's
``OrionDeviceManager`` (``complete_lease``, ``heartbeat``, ``set_draining``, ``device_lost``).
The protocol, message by message, is in docs/protocol.md; in short:

- the first message must be ``hello`` (else FAILED_PRECONDITION); the server registers the
  device, accepts the results it replays (fenced), reconciles the leases it still runs and
  answers ``welcome`` (session id, heartbeat interval, lease TTL);
- a new session for the same device id supersedes the old one (old stream: ``goodbye``);
- a device silent for ``lease_ttl`` (the watchdog), or whose stream ends, is lost: its
  leases fail with ``device_disconnection`` and the engine retries them elsewhere.

Threading model: everything runs on the server's event loop. Per session there is a reader
task (device -> engine), a writer task (outbound queue -> stream) and a watchdog; the
engine's calls into the link (``send_assignment`` / ``send_cancel`` / ``close``) only
enqueue, so they never block the scheduler. Engine state is touched only synchronously from
these tasks, never from inside a link call (the engine calls links mid-update).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
from opentelemetry import baggage, propagate, trace

from ..core import log_context
from ..core.device_manager import (
    REASON_DEVICE_DISCONNECTION,
    REASON_REJECTED,
    REASON_TASK_ERROR,
    DeviceLink,
    Lease,
    OrionDeviceManager,
)
from ..core.engine import OrionEngine
from ..core.events import EventType, TaskEvent
from ..core.spec import id_problem
from ..core.task_star import TaskStar
from ..gen.orion.v1 import device_service_pb2 as pb
from ..gen.orion.v1 import device_service_pb2_grpc as pb_grpc
from ..gen.orion.v1 import task_star_pb2
from . import wire
from .auth import check_device_id, current_principal
from .convert import dict_to_struct, struct_to_dict, task_to_pb, value_from_pb
from .errors import ApiError, abort
from .limits import json_problems

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    _Context = grpc.aio.ServicerContext[pb.ConnectRequest, pb.ConnectResponse]
else:
    _Context = grpc.aio.ServicerContext

# Machine-readable ``goodbye.reason`` / ``cancel.reason`` / ``result_ack.reason`` values.
GOODBYE_SUPERSEDED = "superseded"
GOODBYE_HEARTBEAT_TIMEOUT = "heartbeat_timeout"
GOODBYE_SERVER_SHUTDOWN = "server_shutdown"
GOODBYE_DEVICE_LOST = "device_lost"
GOODBYE_OVERLOADED = "outbound_queue_full"
CANCEL_UNKNOWN_LEASE = "unknown_lease"
CANCEL_SERVER_SHUTDOWN = "server_shutdown"
CLOCK_SKEW_WARNING = 30.0  # seconds between a device's clock and ours worth a warning
FENCE_UNKNOWN_LEASE = "unknown_or_stale_lease"
FENCE_NOT_HOLDER = "not_lease_holder"
FENCE_TASK_MISMATCH = "task_mismatch"

# HTTP/2 keepalive agreed between the server and device daemons. Daemons ping every
# ``DEVICE_KEEPALIVE_TIME_MS`` to notice a dead server (the protocol has no server -> device
# heartbeat); a grpc server by default answers pings more frequent than every 5 minutes on an
# otherwise idle connection with GOAWAY "too_many_pings", so the server must allow them.
DEVICE_KEEPALIVE_TIME_MS = 30_000
DEVICE_KEEPALIVE_TIMEOUT_MS = 10_000
DEVICE_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_recv_ping_interval_without_data_ms", DEVICE_KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),  # 0 = never punish pings
    ("grpc.keepalive_permit_without_calls", 1),
)
"""Options to merge into ``grpc.aio.server(options=...)`` so device keepalive pings are welcome."""


@dataclass(frozen=True)
class DeviceLinkConfig:
    """Parameters of device sessions (the server builds it from flags / environment).

    :param heartbeat_interval: seconds between device heartbeats (sent in ``welcome``).
    :param lease_ttl: seconds a device may stay silent before it is lost (sent in ``welcome``);
        ``lease_ttl / heartbeat_interval`` is the number of heartbeats it may miss.
    :param max_inflight: upper bound on the capacity a device may claim (leases in flight on
        one device); a larger ``hello.capacity`` is clamped.
    :param hello_timeout: seconds a new stream may take to send its ``hello``.
    :param outbound_queue_limit: messages queued for a device that is not reading; beyond it
        the session is ended (RESOURCE_EXHAUSTED) rather than growing memory.
    :param goodbye_timeout: seconds spent flushing queued messages (the ``goodbye``) when a
        session ends, before the stream is closed regardless.
    :param progress_min_interval: at most one TASK_PROGRESS event per lease per this many
        seconds (reports in between are dropped, except the one saying "done", progress 1).
    :param disconnect_grace: seconds a device whose session ended (its stream closed or broke,
        or it went silent) keeps its running leases, offline, waiting for it to reconnect and
        report them; 0 (the default): the device is lost at once and its stars are retried.
    """

    heartbeat_interval: float = 10.0
    lease_ttl: float = 30.0
    max_inflight: int = 64
    hello_timeout: float = 30.0
    outbound_queue_limit: int = 10_000
    goodbye_timeout: float = 2.0
    progress_min_interval: float = 0.1
    disconnect_grace: float = 0.0

    def __post_init__(self) -> None:
        if not self.heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be > 0, got {self.heartbeat_interval}")
        if not self.lease_ttl > self.heartbeat_interval:
            raise ValueError(f"lease_ttl ({self.lease_ttl}) must exceed heartbeat_interval "
                             f"({self.heartbeat_interval}), or every device would be lost")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")

    @classmethod
    def for_heartbeat(cls, heartbeat_interval: float, missed_heartbeats: int = 3,
                      **kwargs: Any) -> DeviceLinkConfig:
        """A config whose lease TTL is ``missed_heartbeats`` heartbeat intervals."""
        return cls(heartbeat_interval=heartbeat_interval,
                   lease_ttl=heartbeat_interval * missed_heartbeats, **kwargs)

    @property
    def missed_heartbeat_limit(self) -> float:
        return self.lease_ttl / self.heartbeat_interval


# ---------------------------------------------------------------------- conversions
# Private on purpose: these are the device link's own wire shapes (the generic resource
# conversions live with the other servicers).

def _seconds_to(msg: Any, seconds: float) -> None:
    """Fill a Timestamp (seconds since the epoch) or Duration."""
    msg.FromNanoseconds(round(seconds * 1e9))


_DEVICE_TYPE_NAMES = {value: name.removeprefix("DEVICE_TYPE_").lower()
                      for name, value in task_star_pb2.DeviceType.items()
                      if value != task_star_pb2.DEVICE_TYPE_UNSPECIFIED}


def _trace_context(lease: Lease) -> dict[str, str]:
    """The lease's W3C trace context, else the caller's active OpenTelemetry span (if any)."""
    if lease.trace_context:
        return dict(lease.trace_context)
    carrier: dict[str, str] = {}
    # The propagators write nothing without a valid span or baggage: checking costs a fraction
    # of running them, for every assignment of a server that does not trace.
    if trace.get_current_span().get_span_context().is_valid or baggage.get_all():
        propagate.inject(carrier)
    return carrier


def assignment_to_proto(lease: Lease, star: TaskStar | None = None) -> pb.TaskAssignment:
    """The ``TaskAssignment`` a device receives for ``lease`` (attempt is 1-based on the wire);
    ``star``, when known, fills ``task`` (the full star definition)."""
    msg = pb.TaskAssignment(lease_id=lease.lease_id, attempt=lease.attempt + 1,
                            orion_id=lease.orion_id or "", task_id=lease.task_id,
                            task_text=lease.task_description)
    if star is not None:
        task_to_pb(star, lease.orion_id, msg.task)
    if lease.deadline is not None:
        _seconds_to(msg.deadline, lease.deadline)
    if lease.timeout:
        _seconds_to(msg.timeout, lease.timeout)
    if lease.task_data:
        dict_to_struct(lease.task_data, msg.task_data)
    msg.trace_context.update(_trace_context(lease))
    return msg


# ---------------------------------------------------------------------- sessions
@dataclass(frozen=True)
class _End:
    """Outbound-queue sentinel: the writer stops after the messages queued before it."""


_END = _End()


@dataclass
class SessionInfo:
    """A live device session (what ``DeviceServiceServicer.sessions`` reports)."""

    device_id: str
    session_id: str
    peer: str
    connected_at: float
    capacity: int


DEVICE_SERVICE = pb.DESCRIPTOR.services_by_name["DeviceService"].full_name
# ConnectResponse field numbers (proto/orion/v1/device_service.proto), for wire.field.
_ASSIGNMENT, _BATCH, _BATCH_MESSAGES = 2, 6, 1
# A batch is written once it holds this many messages or bytes (a device's default receive
# limit is 4 MiB; one larger message still goes alone).
MAX_BATCH_MESSAGES = 256
MAX_BATCH_BYTES = 1 << 20


class _Session:
    """Server-side state of one Connect stream.

    The outbound queue holds encoded ``ConnectResponse`` messages (encoded once, where they
    are made); the writer takes everything queued at once and, for a device that accepts
    batches, writes it as few ``batch`` messages — one write per scheduler step instead of
    one per assignment.
    """

    def __init__(self, info: SessionInfo, limit: int, devices: OrionDeviceManager,
                 star_of: Callable[[Lease], TaskStar | None] = lambda lease: None,
                 batches: bool = False) -> None:
        self.info = info
        self.device_id = info.device_id
        self.outbound: deque[bytes | _End] = deque()
        self.wake = asyncio.Event()  # set when the outbound queue gets something
        self.batches = batches
        self.limit = limit
        self.last_seen = time.monotonic()
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.status: tuple[grpc.StatusCode, str] | None = None
        self.superseded = False
        self.detached = False  # the device manager no longer routes to this session
        self.last_progress: dict[str, float] = {}  # lease id -> when its last event went out
        self.skew_reported = False
        self.link = GrpcDeviceLink(self, devices, star_of)

    def send(self, msg: pb.ConnectResponse) -> None:
        """Queue ``msg`` for the device; never blocks."""
        self.send_encoded(msg.SerializeToString())

    def send_encoded(self, data: bytes) -> None:
        """Queue an encoded ``ConnectResponse``; never blocks."""
        if self.ended.is_set():
            return
        if len(self.outbound) >= self.limit:
            self.end(f"device {self.device_id} is not reading its stream "
                     f"({self.limit} messages queued)",
                     status=(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             "outbound queue full: the device is not reading its stream"))
            return
        self.outbound.append(data)
        self.wake.set()

    def end(self, reason: str, goodbye: str | pb.ServerGoodbye | None = None,
            status: tuple[grpc.StatusCode, str] | None = None) -> None:
        """Finish the session: optionally say goodbye, then close the stream. Idempotent."""
        if self.ended.is_set():
            return
        if goodbye is not None:
            if isinstance(goodbye, str):
                goodbye = pb.ServerGoodbye(reason=goodbye)
            self.outbound.append(pb.ConnectResponse(goodbye=goodbye).SerializeToString())
        self.outbound.append(_END)
        self.wake.set()
        self.end_reason = reason
        self.status = status
        self.ended.set()

    def take_writes(self) -> tuple[list[bytes], bool]:
        """Everything queued, as the messages to write (batched if the device accepts
        batches), and whether the stream ends after them."""
        items = list(self.outbound)
        self.outbound.clear()
        ends = False
        if _END in items:
            items = items[:items.index(_END)]
            ends = True
        encoded = cast(list[bytes], items)
        if not self.batches or len(encoded) < 2:
            return encoded, ends
        writes: list[bytes] = []
        group: list[bytes] = []
        size = 0
        for data in encoded:
            if group and (len(group) >= MAX_BATCH_MESSAGES or size + len(data) > MAX_BATCH_BYTES):
                writes.append(_batch(group))
                group, size = [], 0
            group.append(data)
            size += len(data)
        writes.append(_batch(group))
        return writes, ends


def _batch(messages: list[bytes]) -> bytes:
    if len(messages) == 1:
        return messages[0]
    return wire.field(_BATCH, b"".join([wire.field(_BATCH_MESSAGES, m) for m in messages]))


class GrpcDeviceLink(DeviceLink):
    """The engine's view of one device session: every call only queues a message."""

    def __init__(self, session: _Session, devices: OrionDeviceManager,
                 star_of: Callable[[Lease], TaskStar | None] = lambda lease: None) -> None:
        self._session = session
        self._devices = devices
        self._star_of = star_of

    @property
    def session_id(self) -> str:
        return self._session.info.session_id

    def send_assignment(self, lease: Lease) -> None:
        self._session.send_encoded(wire.field(_ASSIGNMENT, assignment_to_proto(
            lease, self._star_of(lease)).SerializeToString()))

    def send_cancel(self, lease_id: str, reason: str) -> None:
        # The manager calls this before it releases the lease, so the lease is still known.
        lease = self._devices.get_lease(lease_id)
        self._session.send(pb.ConnectResponse(cancel=pb.LeaseCancel(
            lease_id=lease_id, reason=reason, task_id=lease.task_id if lease else "")))

    def close(self, reason: str) -> None:
        """The manager dropped this link (superseded, lost, unregistered or shut down)."""
        session = self._session
        session.detached = True
        if session.superseded:
            goodbye = GOODBYE_SUPERSEDED
        elif "shut down" in reason:
            goodbye = GOODBYE_SERVER_SHUTDOWN
        else:
            goodbye = GOODBYE_DEVICE_LOST
        session.end(reason, goodbye)


class DeviceServiceServicer(pb_grpc.DeviceServiceServicer):
    """Implements ``orion.v1.DeviceService`` over an ``OrionEngine``."""

    def __init__(self, engine: OrionEngine, config: DeviceLinkConfig | None = None) -> None:
        self.engine = engine
        self.config = config or DeviceLinkConfig.for_heartbeat(engine.config.heartbeat_interval)
        self._sessions: dict[str, _Session] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._closing = False

    @property
    def devices(self) -> OrionDeviceManager:
        return self.engine.devices

    def _star_of(self, lease: Lease) -> TaskStar | None:
        """The star a lease runs, if it belongs to a known orion (single tasks do not)."""
        if not lease.orion_id:
            return None
        orion = self.engine.orchestrator.get_running_orion(lease.orion_id)
        return orion.get_task(lease.task_id) if orion is not None else None

    # ------------------------------------------------------------------ public helpers
    @property
    def sessions(self) -> dict[str, SessionInfo]:
        """Live sessions by device id."""
        return {device_id: s.info for device_id, s in self._sessions.items()}

    @property
    def stream_count(self) -> int:
        """Connect streams being served now (live sessions, and superseded ones ending)."""
        return len(self._handlers)

    async def wait_for_session(self, device_id: str, *, not_session: str | None = None,
                               timeout: float | None = None) -> str:
        """Wait until ``device_id`` has a live session (other than ``not_session``); its id."""
        def current() -> str | None:
            s = self._sessions.get(device_id)
            return s.info.session_id if s is not None and s.info.session_id != not_session \
                else None
        await self._wait(lambda: current() is not None, timeout)
        return current() or ""

    async def wait_for_no_session(self, device_id: str, *, timeout: float | None = None) -> None:
        """Wait until ``device_id`` has no live session."""
        await self._wait(lambda: device_id not in self._sessions, timeout)

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None) -> None:
        if predicate():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove(entry)

    def _sessions_changed(self) -> None:
        for predicate, fut in self._waiters:
            if not fut.done() and predicate():
                fut.set_result(None)

    async def close(self, reason: str = GOODBYE_SERVER_SHUTDOWN,
                    reconnect_after: float | None = None, timeout: float | None = None, *,
                    cancel_running: bool = False) -> None:
        """Server shutdown: say ``goodbye`` on every session, end them, wait for the handlers.

        New streams are refused (UNAVAILABLE) from now on. Leases still running fail with
        ``device_disconnection`` as their devices are released. With ``cancel_running`` each
        device is first told to stop them (``cancel {reason: server_shutdown}``): for a server
        whose orions will not be resumed, their results could only be fenced off. Without it
        devices keep working and replay the results to the restarted server.
        """
        self._closing = True
        goodbye = pb.ServerGoodbye(reason=reason)
        if reconnect_after is not None:
            _seconds_to(goodbye.reconnect_after, reconnect_after)
        for session in list(self._sessions.values()):
            if cancel_running and not session.detached:
                device = self.devices.get_device_info(session.device_id)
                for lease in list(device.running.values()) if device is not None else ():
                    session.send(pb.ConnectResponse(cancel=pb.LeaseCancel(
                        lease_id=lease.lease_id, reason=CANCEL_SERVER_SHUTDOWN,
                        task_id=lease.task_id)))
            session.end(f"server shutting down ({reason})", goodbye)
            self._release(session, f"server shutting down ({reason})")
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=timeout or self.config.goodbye_timeout + 1.0)

    # ------------------------------------------------------------------ Connect
    # The generated base declares the iterator style; this handler uses context.read/write.
    async def Connect(self, request_iterator: Any, context: _Context) -> None:  # type: ignore[override]
        """One device session: hello -> welcome, then both directions until either side ends.

        The handler reads with ``context.read`` and writes with ``context.write`` from separate
        tasks (``request_iterator`` is not used), so a device that stops reading can never
        stall the engine or keep a lost session alive.
        """
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        hello = await self._read_hello(context)
        try:  # a device credential acts only as the device it names
            check_device_id(current_principal(), hello.device_id.strip())
        except ApiError as exc:
            await abort(context, exc)
        # Every log line of this session (this handler's task and its children) names it.
        log_context.bind(device_id=hello.device_id.strip() or None)
        session = self._open_session(hello, context)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        reader = asyncio.create_task(self._read_loop(session, context),
                                     name=f"device-read-{session.device_id}")
        writer = asyncio.create_task(self._write_loop(session, context),
                                     name=f"device-write-{session.device_id}")
        watchdog = asyncio.create_task(self._watchdog(session),
                                       name=f"device-watchdog-{session.device_id}")
        try:
            await session.ended.wait()
            self._release(session, session.end_reason)
            # Let the writer flush the goodbye (bounded: the device may not be reading).
            await asyncio.wait([writer], timeout=self.config.goodbye_timeout)
        finally:
            # Runs on cancellation too (the device cancelled the RPC or the connection died):
            # release first, synchronously, so the engine learns at once.
            self._release(session, session.end_reason or "stream cancelled")
            for task in (reader, writer, watchdog):
                task.cancel()
            try:
                await asyncio.gather(reader, writer, watchdog, return_exceptions=True)
            finally:  # gRPC may cancel the handler again right here: forget it regardless
                if handler is not None:
                    self._handlers.discard(handler)
        if session.status is not None:
            await context.abort(*session.status)

    async def _read_hello(self, context: _Context) -> pb.DeviceHello:
        try:
            raw: object = await asyncio.wait_for(context.read(), self.config.hello_timeout)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no hello within {self.config.hello_timeout:g}s")
        if raw is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "the stream ended before the device sent hello")
        first = cast(pb.ConnectRequest, raw)
        kind = first.WhichOneof("message")
        if kind != "hello":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"the first message of a DeviceService.Connect stream must be "
                                f"'hello', got '{kind or 'empty message'}'")
        hello: pb.DeviceHello = first.hello
        problems = []
        problem = id_problem(hello.device_id.strip())
        if not hello.device_id.strip():
            problems.append("hello.device_id must be a non-empty string")
        elif problem is not None:
            problems.append(f"hello.device_id {problem}")
        if hello.capacity < 0:
            problems.append(f"hello.capacity must be >= 0 (0 means 1), got {hello.capacity}")
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        return hello

    def _open_session(self, hello: pb.DeviceHello, context: _Context) -> _Session:
        """Register the device, replay its results, reconcile its leases, attach its link."""
        dm = self.devices
        device_id = hello.device_id.strip()
        capacity = min(max(hello.capacity, 1), self.config.max_inflight)
        info = SessionInfo(device_id, uuid.uuid4().hex, context.peer() or "", time.time(), capacity)
        session = _Session(info, self.config.outbound_queue_limit, dm, self._star_of,
                           batches=hello.accepts_batches)

        welcome = pb.ServerWelcome(session_id=info.session_id, accepts_batches=True)
        _seconds_to(welcome.heartbeat_interval, self.config.heartbeat_interval)
        _seconds_to(welcome.lease_ttl, self.config.lease_ttl)
        _seconds_to(welcome.server_time, time.time())
        session.send(pb.ConnectResponse(welcome=welcome))  # before anything the engine sends

        old = self._sessions.get(device_id)
        if old is not None:
            old.superseded = True  # its link gets closed by attach_link below
        self._sessions[device_id] = session

        metadata = {
            "system_info": struct_to_dict(hello.system_info),
            "platform": hello.platform,
            "daemon_version": hello.daemon_version,
            "session_id": info.session_id,
            "peer": info.peer,
            "connected_at": info.connected_at,
        }
        dm.register(device_id, server_url=info.peer,
                    os=_DEVICE_TYPE_NAMES.get(hello.device_type),
                    capabilities=list(hello.capabilities), metadata=metadata, capacity=capacity)
        dm.set_draining(device_id, False)

        # At-least-once delivery: results the device kept are accepted if their lease is
        # still live and its own, and acknowledged either way so the device can drop them.
        for result in hello.unacknowledged_results:
            self._on_result(session, result)
        # Leases the server holds on this device but the device neither runs nor reported
        # a result for are gone (the daemon restarted): fail them so the star moves on.
        reported = set(hello.running_lease_ids)
        device = dm.get_device_info(device_id)
        for lease_id in list(device.running if device is not None else ()):
            if lease_id not in reported:
                dm.complete_lease(device_id, lease_id, False, None,
                                  f"device {device_id} reconnected without lease {lease_id}",
                                  REASON_DEVICE_DISCONNECTION)
        # Leases the device runs that the server does not know (or no longer gives it): stop.
        for lease_id in reported:
            lease = dm.get_lease(lease_id)
            if lease is None or lease.device_id != device_id:
                session.send(pb.ConnectResponse(cancel=pb.LeaseCancel(
                    lease_id=lease_id, reason=CANCEL_UNKNOWN_LEASE)))

        dm.attach_link(device_id, session.link)  # supersedes (closes) the old link
        logger.info("device %s connected (session %s, capacity %d, from %s)%s", device_id,
                    info.session_id, capacity, info.peer, " superseding an older session"
                    if old is not None else "")
        self._sessions_changed()
        return session

    def _release(self, session: _Session, reason: str) -> None:
        """The session is over: forget it; if the engine still routes to it, the device is lost."""
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]
            self._sessions_changed()
        if not session.detached:
            session.detached = True
            logger.info("device %s session %s ended: %s", session.device_id,
                        session.info.session_id, reason)
            grace = self.config.disconnect_grace
            if grace > 0 and not self._closing:
                # Offline, holding its leases: a reconnect within the grace continues them.
                self.devices.hold_leases(session.device_id, grace, reason)
            else:
                self.devices.device_lost(session.device_id, reason)

    # ------------------------------------------------------------------ tasks
    async def _write_loop(self, session: _Session, context: _Context) -> None:
        try:
            while True:
                if not session.outbound:
                    session.wake.clear()
                    await session.wake.wait()
                    continue
                writes, ends = session.take_writes()
                for data in writes:
                    await context.write(data)
                if ends:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke under us
            session.end(f"write to device failed: {exc!r}")

    async def _read_loop(self, session: _Session, context: _Context) -> None:
        handlers: dict[str, Callable[[_Session, Any], None]] = {
            "heartbeat": self._on_heartbeat, "ack": self._on_ack, "reject": self._on_reject,
            "progress": self._on_progress, "result": self._on_result, "drain": self._on_drain,
        }
        try:
            while True:
                raw: object = await context.read()
                if raw is grpc.aio.EOF:
                    session.end("the device closed the stream")
                    return
                msg = cast(pb.ConnectRequest, raw)
                session.last_seen = time.monotonic()
                kind = msg.WhichOneof("message")
                if kind == "batch":
                    for inner in msg.batch.messages:
                        inner_kind = inner.WhichOneof("message")
                        if inner_kind == "batch":
                            session.end("nested batch", status=(
                                grpc.StatusCode.FAILED_PRECONDITION,
                                "a batch may not contain a batch; send its messages in one"))
                            return
                        if not self._handle(session, inner, inner_kind, handlers):
                            return
                elif not self._handle(session, msg, kind, handlers):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke (or the device cancelled it)
            session.end(f"read from device failed: {exc!r}")

    def _handle(self, session: _Session, msg: pb.ConnectRequest, kind: str | None,
                handlers: dict[str, Callable[[_Session, Any], None]]) -> bool:
        """Act on one device message; False if it ended the session."""
        if kind == "hello":
            session.end("second hello on one stream", status=(
                grpc.StatusCode.FAILED_PRECONDITION,
                "hello may only be the first message of a stream; open a new stream "
                "to start a new session"))
            return False
        handler = handlers.get(kind) if kind else None
        if kind is None or handler is None:
            logger.debug("device %s sent an empty/unknown message", session.device_id)
            return True
        handler(session, getattr(msg, kind))
        return True

    async def _watchdog(self, session: _Session) -> None:
        """Declare the device lost after ``lease_ttl`` without any message from it."""
        ttl = self.config.lease_ttl
        while True:
            remaining = session.last_seen + ttl - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(remaining)
        reason = f"no heartbeat for {ttl:g}s"
        logger.warning("device %s: %s; declaring it lost", session.device_id, reason)
        session.end(reason, GOODBYE_HEARTBEAT_TIMEOUT)
        # Release now, not after the goodbye is written: a silent device may never read it.
        self._release(session, reason)

    # ------------------------------------------------------------------ device messages
    def _is_current(self, session: _Session) -> bool:
        return self._sessions.get(session.device_id) is session and not session.detached

    def _on_heartbeat(self, session: _Session, msg: pb.DeviceHeartbeat) -> None:
        if not self._is_current(session):
            return
        self.devices.heartbeat(session.device_id)
        if msg.HasField("sent_at"):
            self._note_clock_skew(session, msg.sent_at.ToNanoseconds() / 1e9 - time.time())

    def _note_clock_skew(self, session: _Session, skew: float) -> None:
        """Report how far the device's clock is from ours (metadata ``clock_skew_seconds``,
        a warning once per session beyond ``CLOCK_SKEW_WARNING``). Informational only: no
        decision depends on a device's clock — leases, deadlines and liveness are measured
        with this server's monotonic clock."""
        info = self.devices.get_device_info(session.device_id)
        if info is not None:
            info.metadata["clock_skew_seconds"] = round(skew, 1)
        if abs(skew) > CLOCK_SKEW_WARNING and not session.skew_reported:
            session.skew_reported = True
            logger.warning("device %s: its clock is %.0fs %s the server's (harmless: leases "
                           "and deadlines use the server's clock)", session.device_id,
                           abs(skew), "ahead of" if skew > 0 else "behind")

    def _own_lease(self, session: _Session, lease_id: str) -> Lease | None:
        lease = self.devices.get_lease(lease_id)
        return lease if lease is not None and lease.device_id == session.device_id else None

    def _on_ack(self, session: _Session, msg: pb.AssignmentAck) -> None:
        # Nothing to do: the lease has been running since it was sent. Kept for observability.
        logger.debug("device %s acked lease %s", session.device_id, msg.lease_id)

    def _on_reject(self, session: _Session, msg: pb.AssignmentReject) -> None:
        if self._own_lease(session, msg.lease_id) is None:
            return
        logger.info("device %s rejected lease %s: %s", session.device_id, msg.lease_id,
                    msg.reason or "no reason given")
        self.devices.complete_lease(
            session.device_id, msg.lease_id, False, None,
            f"device {session.device_id} rejected the assignment: {msg.reason or 'no reason'}",
            REASON_REJECTED)

    def _on_progress(self, session: _Session, msg: pb.TaskProgress) -> None:
        lease = self._own_lease(session, msg.lease_id)
        if lease is None:
            return
        bus = self.engine.bus
        if not bus.has_subscribers(EventType.TASK_PROGRESS):
            return  # keep it cheap: nobody listens
        progress = msg.progress if math.isfinite(msg.progress) else 0.0
        now = time.monotonic()
        last = session.last_progress.get(lease.lease_id)
        if last is not None and now - last < self.config.progress_min_interval and progress < 1:
            return  # a chatty executor: keep the event log cheap
        session.last_progress[lease.lease_id] = now
        if len(session.last_progress) > 4 * session.info.capacity + 16:
            live = self.devices.get_device_info(session.device_id)
            running = live.running if live is not None else {}
            session.last_progress = {k: v for k, v in session.last_progress.items()
                                     if k in running}
        data: dict[str, Any] = {
            "orion_id": lease.orion_id, "device_id": lease.device_id, "lease_id": lease.lease_id,
            "attempt": lease.attempt, "progress": progress, "message": msg.message,
            "details": {} if json_problems(msg.data) else struct_to_dict(msg.data),
        }
        if lease.orion_id:
            orion = self.engine.orchestrator.get_running_orion(lease.orion_id)
            if orion is not None:
                data["orion"] = orion
        bus.publish(TaskEvent(event_type=EventType.TASK_PROGRESS,
                              source_id=f"device_service.{lease.device_id}",
                              timestamp=time.time(), data=data, task_id=lease.task_id,
                              status="running"))

    def _on_result(self, session: _Session, msg: pb.TaskResult) -> None:
        accepted, reason = self._accept_result(session, msg)
        ack = pb.ConnectResponse(result_ack=pb.ResultAck(
            lease_id=msg.lease_id, accepted=accepted, reason=reason))
        journal = self.engine.journal
        if journal is None:
            session.send(ack)
        else:
            # Acknowledge once the outcome is committed: until then the device keeps the
            # result and replays it after a restart (accepted once, by lease fencing).
            journal.call_when_durable(lambda: session.send(ack))

    def _accept_result(self, session: _Session, msg: pb.TaskResult) -> tuple[bool, str]:
        dm, device_id = self.devices, session.device_id
        lease = dm.get_lease(msg.lease_id)
        if lease is None:
            return False, FENCE_UNKNOWN_LEASE
        if lease.device_id != device_id:
            logger.warning("device %s sent a result for lease %s held by %s: fenced off",
                           device_id, msg.lease_id, lease.device_id)
            return False, FENCE_NOT_HOLDER
        if msg.task_id and msg.task_id != lease.task_id:
            return False, FENCE_TASK_MISMATCH
        success, error = msg.success, msg.error or "task failed"
        bad = json_problems(msg.result, "result") if msg.HasField("result") else []
        if bad:  # NaN or too deep: it could not travel on in events and replies
            success, error = False, (f"device {device_id} returned a result that is not valid "
                                     f"JSON: {bad[0].field}: {bad[0].description}")
        result = value_from_pb(msg.result) if msg.HasField("result") and not bad else None
        ok = dm.complete_lease(device_id, msg.lease_id, success, result,
                               None if success else error,
                               None if success else REASON_TASK_ERROR)
        return (True, "") if ok else (False, FENCE_UNKNOWN_LEASE)

    def _on_drain(self, session: _Session, msg: pb.DeviceDrain) -> None:
        if self._is_current(session):
            logger.info("device %s is draining: %s", session.device_id, msg.reason or "-")
            self.devices.set_draining(session.device_id, True)


def add_device_service(server: grpc.aio.Server, engine: OrionEngine,
                       config: DeviceLinkConfig | None = None) -> DeviceServiceServicer:
    """Host ``orion.v1.DeviceService`` for ``engine`` on ``server``; returns the servicer.

    Call ``await servicer.close()`` during graceful shutdown (devices get ``goodbye``).
    Merge ``DEVICE_SERVER_OPTIONS`` into the server's options so device keepalive pings are
    accepted.
    """
    servicer = DeviceServiceServicer(engine, config)
    # As the generated add_DeviceServiceServicer_to_server, but responses may be pre-encoded
    # bytes (see wire.py): the session encodes each message once, where it is made.
    handlers = {"Connect": grpc.stream_stream_rpc_method_handler(
        servicer.Connect, request_deserializer=pb.ConnectRequest.FromString,
        response_serializer=wire.passthrough(pb.ConnectResponse.SerializeToString))}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        DEVICE_SERVICE, handlers),))
    server.add_registered_method_handlers(DEVICE_SERVICE, handlers)
    return servicer
