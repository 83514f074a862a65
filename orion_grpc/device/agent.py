"""DeviceAgent: the device daemon as a library.

One agent = one device: it opens ``DeviceService.Connect``, says ``hello``, heartbeats at
the interval the server asks for, runs assignments with pluggable executors (never more at
once than its capacity), streams progress, returns results and keeps each one until the
server acknowledges it, replaying unacknowledged results in the next ``hello`` after a
reconnect. It reconnects with exponential backoff and full jitter, honours ``cancel`` and
``goodbye``, and drains gracefully on ``stop()``. docs/protocol.md has the protocol.

    agent = DeviceAgent("127.0.0.1:50051", "build-01", "linux", ["python"], capacity=2)
    await agent.run()          # until agent.stop() (or a fatal error)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from ..api import wire
from ..core import log_context
from ..gen.orion.v1 import device_service_pb2 as pb
from ..gen.orion.v1 import task_star_pb2
from ..pbjson import MAX_SAFE_INT, from_struct, set_value
from ..transport import token_interceptors
from .executors import Assignment, Executor, ExecutorError, default_executors

logger = logging.getLogger(__name__)

DAEMON_VERSION = "0.1.0"
CONNECT_METHOD = "/orion.v1.DeviceService/Connect"
MAX_BATCH_MESSAGES = 256  # messages per ConnectRequest.batch
# Field numbers (proto/orion/v1/device_service.proto) of what the daemon frames by hand:
# ConnectRequest.ack / .result / .batch, DeviceMessageBatch.messages, AssignmentAck.lease_id.
_ACK, _RESULT, _BATCH, _BATCH_MESSAGES, _ACK_LEASE_ID = 3, 6, 8, 1, 1

# Keepalive pings let a device notice a dead server (there is no server -> device heartbeat).
# Servers accept them while heartbeats flow; see DEVICE_SERVER_OPTIONS in the server.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)

# Statuses that a retry cannot fix: the server refused this daemon's hello or protocol.
FATAL_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                         grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED,
                         grpc.StatusCode.PERMISSION_DENIED})


class DeviceAgentError(RuntimeError):
    """The agent stopped for a reason reconnecting cannot fix (``reason`` says which)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def system_info() -> dict[str, Any]:
    """What ``hello.system_info`` reports: platform, os version, cpu count, memory, hostname."""
    info: dict[str, Any] = {
        "platform": platform.system().lower() or "unknown",
        "os_version": platform.release(),
        "os_description": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "hostname": socket.gethostname(),
        "python_version": platform.python_version(),
    }
    with contextlib.suppress(AttributeError, ValueError, OSError):
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return info


def default_device_type() -> str:
    """This machine's device type name (as in ``orion.v1.DeviceType``)."""
    system = platform.system().lower()
    return {"darwin": "macos", "windows": "windows"}.get(system, "linux")


def _device_type_enum(name: str) -> int:
    key = f"DEVICE_TYPE_{name.strip().upper()}"
    try:
        return task_star_pb2.DeviceType.Value(key)
    except ValueError:
        raise ValueError(f"unknown device type {name!r}; one of: " + ", ".join(
            n.removeprefix("DEVICE_TYPE_").lower() for n in task_star_pb2.DeviceType.keys()
            if n != "DEVICE_TYPE_UNSPECIFIED")) from None


def _to_value(result: Any) -> struct_pb2.Value:
    """A JSON value as ``google.protobuf.Value`` (TypeError/ValueError if it is not JSON)."""
    msg = struct_pb2.Value()
    set_value(msg, json.loads(json.dumps(result, allow_nan=False)))
    return msg


class _NotPlain(Exception):
    """A value ``_set_plain`` leaves to the JSON round trip of ``_to_value``."""


_PLAIN_DEPTH = 32  # deeper values (or cycles) take the JSON round trip


def _set_plain(msg: struct_pb2.Value, value: Any, depth: int) -> None:
    """``msg`` = ``value`` when ``value`` is made of exactly dict (str keys), list, str, int,
    finite float, bool and None; ``_NotPlain`` for anything else (tuples, other key types,
    subclasses, NaN, big ints, ...), which the JSON round trip converts or refuses."""
    kind = type(value)
    if kind is str:
        msg.string_value = value
    elif kind is dict:
        if depth >= _PLAIN_DEPTH:
            raise _NotPlain
        struct = msg.struct_value
        struct.SetInParent()
        fields = struct.fields
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain
            _set_plain(fields[key], item, depth + 1)
    elif value is None:
        msg.null_value = struct_pb2.NULL_VALUE
    elif kind is bool:
        msg.bool_value = value
    elif kind is int and -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        msg.number_value = value
    elif kind is float and math.isfinite(value):
        msg.number_value = value
    elif kind is list:
        if depth >= _PLAIN_DEPTH:
            raise _NotPlain
        values = msg.list_value
        values.SetInParent()
        add = values.values.add
        for item in value:
            _set_plain(add(), item, depth + 1)
    else:
        raise _NotPlain


def _set_json(result: pb.TaskResult, value: Any) -> None:
    """``result.result`` = the JSON value ``value`` (TypeError/ValueError if it is not JSON):
    plain values field by field, anything else through ``json`` as it always was."""
    try:
        _set_plain(result.result, value, 0)
    except (_NotPlain, TypeError, ValueError):  # (e.g. a lone surrogate: refused below)
        result.ClearField("result")
        result.result.CopyFrom(_to_value(value))


def _ack(lease_id: str) -> bytes:
    """The encoded ``ConnectRequest(ack=AssignmentAck(lease_id=...))``."""
    lease = lease_id.encode()
    if len(lease) < 126:  # (both lengths fit in one byte)
        return bytes((_ACK << 3 | 2, len(lease) + 2, _ACK_LEASE_ID << 3 | 2, len(lease))) + lease
    return wire.field(_ACK, wire.field(_ACK_LEASE_ID, lease))


class _StarView(Mapping[str, Any]):
    """``Assignment.star``: the assignment's TaskStar in its JSON mapping, decoded when an
    executor first looks (most never do; json_format costs ~100 µs per star)."""

    def __init__(self, message: Any) -> None:
        self._message = message
        self._decoded: dict[str, Any] | None = None

    def _dict(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = json_format.MessageToDict(self._message,
                                                      preserving_proto_field_name=True)
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())


def _seconds(duration: Any) -> float:
    return duration.ToNanoseconds() / 1e9  # type: ignore[no-any-return]


class _Session:
    """Client-side state of one Connect stream.

    The outbound queue holds ``ConnectRequest`` messages or their encoding (the hot ones,
    acks and results, are encoded once where they are made); ``requests`` writes what queued
    up meanwhile as one ``batch`` once the server accepts batches, framed at the wire level
    (``api/wire.py``): no intermediate messages, no copies.
    """

    def __init__(self) -> None:
        self.outbound: deque[pb.ConnectRequest | bytes | None] = deque()
        self._wake = asyncio.Event()  # set when the outbound queue gets something
        self.batches = False  # the server's welcome said it accepts batches
        self.welcome: pb.ServerWelcome | None = None
        self.goodbye: pb.ServerGoodbye | None = None
        self.reader: asyncio.Task[None] | None = None
        self.heartbeat: asyncio.Task[None] | None = None
        self.forced = asyncio.Event()  # reconnect() asked to end this session
        self.abandon = False

    def send(self, msg: pb.ConnectRequest | bytes) -> None:
        """Queue ``msg`` (a ``ConnectRequest`` or its encoding); never blocks."""
        self.outbound.append(msg)
        self._wake.set()

    def close_requests(self) -> None:
        self.outbound.append(None)
        self._wake.set()

    async def requests(self) -> Any:
        """The stream's messages; what queued up meanwhile goes as one batch when the server
        accepts batches (several results finished in one loop turn: one write)."""
        outbound, wake = self.outbound, self._wake
        while True:
            while not outbound:
                wake.clear()
                await wake.wait()
            if self.batches:
                # One more loop turn before writing: the assignments that queued this ack
                # also started their executors, whose results (instant for quick ones) then
                # go in the same write.
                await asyncio.sleep(0)
            msg = outbound.popleft()
            if msg is None:
                return
            if not self.batches or not outbound:
                yield msg
                continue
            group = [msg]
            ended = False
            while outbound and len(group) < MAX_BATCH_MESSAGES:
                more = outbound.popleft()
                if more is None:
                    ended = True
                    break
                group.append(more)
            if len(group) == 1:
                yield msg
            else:
                yield wire.field(_BATCH, b"".join([
                    wire.field(_BATCH_MESSAGES, m if isinstance(m, bytes) else
                               m.SerializeToString()) for m in group]))
            if ended:
                return


class DeviceAgent:
    """A device daemon: connects, registers, executes assignments, reconnects.

    :param target: the server, ``host:port``.
    :param device_id: unique id of this device (a new session for the same id supersedes the
        old one: an agent told ``goodbye: superseded`` stops with ``DeviceAgentError``).
    :param device_type: ``linux``, ``windows``, ``macos``, ``android``, ``ios``, ``web``, ``api``.
    :param capabilities: matched against stars' ``required_capabilities``.
    :param capacity: the most assignments run at once (the server never sends more).
    :param executors: name -> executor; default ``echo`` and ``sleep``. A star picks one with
        ``task_data.executor``; otherwise ``default_executor`` runs it.
    :param send_progress: stream executors' progress reports to the server.
    :param backoff_initial / backoff_max: reconnect delay bounds (seconds); the delay after
        the n-th consecutive failure is uniform in [0, min(max, initial * 2**(n-1))].
    :param credentials: TLS channel credentials (``ChannelSecurity.credentials()``: the
        server's CA, and this device's certificate for mutual TLS); None: plaintext.
    :param token: this device's bearer token, sent with its stream (servers with
        authentication accept it only for the device id it names).
    :param tracer: an OpenTelemetry tracer: each assignment then runs in a ``device.execute``
        span, child of the star's span whose context the assignment carries (``orion device``
        passes one when ``OTEL_TRACES_EXPORTER`` asks for tracing). None: no spans at all.
    """

    def __init__(self, target: str, device_id: str, device_type: str | None = None,
                 capabilities: Iterable[str] = (), capacity: int = 1,
                 executors: Mapping[str, Executor] | None = None, *,
                 default_executor: str | None = None, platform_description: str | None = None,
                 system_info_extra: Mapping[str, Any] | None = None, send_progress: bool = True,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 channel_options: Sequence[tuple[str, Any]] | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 tracer: Any = None, token: str | None = None) -> None:
        if not device_id.strip():
            raise ValueError("device_id must be a non-empty string")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.target = target
        self.device_id = device_id.strip()
        self.device_type = (device_type or default_device_type()).lower()
        self._device_type_enum = _device_type_enum(self.device_type)
        self.capabilities = list(capabilities)
        self.capacity = capacity
        self.executors: dict[str, Executor] = dict(
            executors if executors is not None else default_executors())
        if not self.executors:
            raise ValueError("a device needs at least one executor")
        self.default_executor = default_executor or ("echo" if "echo" in self.executors
                                                     else next(iter(self.executors)))
        if self.default_executor not in self.executors:
            raise ValueError(f"default executor {self.default_executor!r} is not one of "
                             f"{sorted(self.executors)}")
        self.platform_description = platform_description or platform.platform()
        self.system_info = {**system_info(), **dict(system_info_extra or {})}
        self.send_progress = send_progress
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.channel_options = list(channel_options if channel_options is not None
                                    else DEFAULT_CHANNEL_OPTIONS)
        self.credentials = credentials  # TLS (ChannelSecurity.credentials()); None: plaintext
        self.token = token  # bearer token of this device (docs/operations.md)
        self.tracer = tracer  # opentelemetry.trace.Tracer | None

        self._running: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, pb.TaskResult] = {}  # results until the server acks them
        self._session: _Session | None = None
        self._abandoned: list[tuple[_Session, Any, asyncio.Task[None]]] = []
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()
        self._draining = False
        self._stopping = False
        self._run_task: asyncio.Task[None] | None = None
        self._welcomed_last = False

        # Observability (tests and the CLI read these).
        self.session_id = ""
        self.heartbeat_interval = 0.0
        self.lease_ttl = 0.0
        self.clock_offset = 0.0  # seconds the server's wall clock is ahead of this device's
        self.session_attempts = 0  # streams opened (welcomed or not)
        self.sessions_opened = 0  # streams welcomed
        self.max_running = 0
        self.completed = 0
        self.last_goodbye: str | None = None
        self.last_error = ""  # why the last stream failed, if it did
        self.result_acks: deque[tuple[str, bool, str]] = deque(maxlen=1000)  # the latest

        # Fault injection, for tests of the protocol's recovery paths.
        self.pause_heartbeats = False  # stay connected but stop heartbeating
        self.hold_results = False  # keep results as unacknowledged instead of sending them
        self.drop_result_acks = 0  # ignore the next N result_acks (as if they were lost)

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def running_lease_ids(self) -> list[str]:
        return list(self._running)

    @property
    def unacknowledged_results(self) -> list[pb.TaskResult]:
        return list(self._pending.values())

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait (event driven) until ``predicate()``; False on timeout."""
        async def waiter() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(waiter(), timeout)
            return True
        except TimeoutError:
            return False

    async def wait_connected(self, timeout: float | None = None) -> str:
        """Wait for a welcomed session; returns its session id."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        return self.session_id

    async def wait_for(self, predicate: Callable[[DeviceAgent], bool],
                       timeout: float | None = None) -> None:
        """Wait until ``predicate(agent)`` holds (re-checked on every state change)."""
        if not await self._wait_until(lambda: predicate(self), timeout):
            raise TimeoutError(f"device {self.device_id}: condition not met in {timeout}s")

    # ------------------------------------------------------------------ lifecycle
    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task of the last ``start()`` (done once the agent stopped)."""
        return self._run_task

    def start(self) -> asyncio.Task[None]:
        """Run the agent in a background task (see ``run``)."""
        if self._run_task is None or self._run_task.done():
            self._run_task = asyncio.create_task(self.run(), name=f"device-agent-{self.device_id}")
        return self._run_task

    async def __aenter__(self) -> DeviceAgent:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(timeout=5.0)

    async def run(self) -> None:
        """Connect and serve until ``stop()``; reconnects with backoff + jitter.

        Raises ``DeviceAgentError`` when the server refuses the device (bad hello, protocol
        error) or another session took over this device id.
        """
        self._stopping = False
        tokens = log_context.bind(device_id=self.device_id)
        try:
            await self._run()
        finally:
            log_context.unbind(tokens)

    async def _run(self) -> None:
        options = self._channel_options()
        interceptors = token_interceptors(self.token) if self.token else None
        if self.credentials is not None:
            channel = grpc.aio.secure_channel(self.target, self.credentials, options=options,
                                              interceptors=interceptors)
        else:
            channel = grpc.aio.insecure_channel(self.target, options=options,
                                                interceptors=interceptors)
        # DeviceService.Connect whose requests may also be pre-encoded bytes (see _Session).
        connect = channel.stream_stream(
            CONNECT_METHOD,
            request_serializer=wire.passthrough(pb.ConnectRequest.SerializeToString),
            response_deserializer=pb.ConnectResponse.FromString)
        failures = 0
        try:
            async with channel:
                while not self._stopping:
                    reconnect_after = await self._one_session(connect)
                    if self._stopping:
                        break
                    failures = 1 if self._welcomed_last else failures + 1
                    delay = reconnect_after if reconnect_after is not None else \
                        random.uniform(0, min(self.backoff_max,
                                              self.backoff_initial * 2 ** (failures - 1)))
                    # The first failure in a row is worth a warning; the retries are not.
                    logger.log(logging.WARNING if failures == 1 and self.last_error else
                               logging.INFO, "device %s: %sreconnecting in %.2fs (attempt %d)",
                               self.device_id, f"{self.last_error}; " if self.last_error else "",
                               delay, failures)
                    await self._wait_until(lambda: self._stopping, delay)
        finally:
            self._connected.clear()
            for task in list(self._running.values()):
                task.cancel()
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)
            for session, call, reader in self._abandoned:
                # End its request stream too: gRPC's task feeding it would otherwise wait
                # on it forever and be destroyed pending ("Task was destroyed but it is
                # pending", then "aclose(): asynchronous generator is already running").
                session.close_requests()
                reader.cancel()
                call.cancel()
            self._abandoned.clear()
            self._notify()

    def _channel_options(self) -> list[tuple[str, Any]]:
        """``channel_options`` plus a reconnect backoff for the channel itself that matches
        the agent's own. Without it gRPC's default (1 s, growing to 120 s) decides when the
        connection is really retried: after a long outage a daemon came back up to two
        minutes after the server did, whatever ``backoff_max`` said."""
        options = list(self.channel_options)
        given = {name for name, _ in options}
        for name, seconds in (("grpc.initial_reconnect_backoff_ms", self.backoff_initial),
                              ("grpc.max_reconnect_backoff_ms", self.backoff_max)):
            if name not in given:
                options.append((name, max(1, round(seconds * 1000))))
        return options

    async def stop(self, timeout: float | None = 10.0) -> None:
        """Graceful stop: drain, let running assignments finish and their results be acked
        (up to ``timeout`` seconds), close the session, then cancel whatever is left."""
        task = self._run_task
        if task is not None and not task.done():
            await self.drain("shutdown")
            # Done when nothing runs and every result is acked (or can't be: disconnected).
            await self._wait_until(lambda: not self._running
                                   and (not self._pending or not self.connected), timeout)
        self._stopping = True
        self._notify()
        session = self._session
        if session is not None:
            session.close_requests()  # half-close: the server ends the stream
        if task is not None and not task.done():
            # asyncio.wait never raises the task's outcome, so only a cancellation of the
            # caller itself propagates from here.
            if not (await asyncio.wait([task], timeout=2.0))[0]:
                task.cancel()
                await asyncio.wait([task])
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved: the agent's own end (e.g. DeviceAgentError) is fine

    async def drain(self, reason: str = "drain") -> None:
        """Ask for no new assignments (running ones finish)."""
        self._draining = True
        if self._session is not None:
            self._session.send(pb.ConnectRequest(drain=pb.DeviceDrain(reason=reason)))

    async def reconnect(self, *, abandon: bool = False) -> None:
        """End the current session and connect again (for tests and operators).

        With ``abandon`` the old stream is left open, unread, as after a network partition
        the server has not noticed: the new session then supersedes it on the server.
        """
        session = self._session
        if session is None:
            return
        session.abandon = abandon
        session.forced.set()

    # ------------------------------------------------------------------ one session
    def _hello(self) -> pb.DeviceHello:
        hello = pb.DeviceHello(
            device_id=self.device_id, device_type=self._device_type_enum,  # type: ignore[arg-type]
            platform=self.platform_description, capabilities=self.capabilities,
            capacity=self.capacity, running_lease_ids=list(self._running),
            unacknowledged_results=list(self._pending.values()), daemon_version=DAEMON_VERSION,
            accepts_batches=True)
        hello.system_info.update(json.loads(json.dumps(self.system_info, default=str)))
        return hello

    async def _one_session(self, connect: Any) -> float | None:
        """Run one Connect stream to its end; returns the server's reconnect_after, if any."""
        self._welcomed_last = False
        self.last_error = ""
        self.session_attempts += 1
        session = _Session()
        # Composing hello and publishing the session is atomic (no await in between): a result
        # finished later is queued behind hello, never lost and never in both.
        session.send(pb.ConnectRequest(hello=self._hello()))
        self._session = session
        call = connect(session.requests())
        reader = session.reader = asyncio.create_task(self._read(session, call))
        forced = asyncio.create_task(session.forced.wait())
        try:
            try:
                # Not "await reader": cancelling a task blocked in call.read() cancels the RPC,
                # and an abandoned session must leave its stream open.
                await asyncio.wait([reader, forced], return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    reader.result()  # raises the stream's error, if any
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL_CODES:
                    self._stopping = True
                    raise DeviceAgentError(f"device {self.device_id}: the server refused the "
                                           f"session: {exc.code().name}: {exc.details()}",
                                           exc.code().name.lower()) from None
                self.last_error = f"{exc.code().name}: {exc.details()}"
        finally:
            forced.cancel()
            if self._session is session:
                self._session = None
            self._connected.clear()
            if session.heartbeat is not None:
                session.heartbeat.cancel()
            if session.abandon:  # as after a network partition: open, silent, unread
                self._abandoned.append((session, call, reader))
            else:
                session.close_requests()
                reader.cancel()
                call.cancel()
            self._notify()
        goodbye = session.goodbye
        if goodbye is not None:
            self.last_goodbye = goodbye.reason
            if goodbye.reason == "superseded":
                self._stopping = True
                raise DeviceAgentError(f"device {self.device_id}: another session for this "
                                       "device id took over", "superseded")
            if goodbye.HasField("reconnect_after"):
                return _seconds(goodbye.reconnect_after)
        return None

    async def _read(self, session: _Session, call: Any) -> None:
        async for msg in call:
            if session.abandon:
                continue  # a dead connection: nothing gets through
            if msg.WhichOneof("message") == "batch":
                for inner in msg.batch.messages:
                    self._on_message(session, inner)
            else:
                self._on_message(session, msg)

    def _on_message(self, session: _Session, msg: pb.ConnectResponse) -> None:
        kind = msg.WhichOneof("message")
        if kind == "welcome":
                self._on_welcome(session, msg.welcome)
        elif kind == "assignment":
            self._on_assignment(session, msg.assignment)
        elif kind == "cancel":
            self._on_cancel(msg.cancel)
        elif kind == "result_ack":
            self._on_result_ack(msg.result_ack)
        elif kind == "goodbye":
            session.goodbye = msg.goodbye
            logger.info("device %s: server said goodbye (%s)", self.device_id,
                        msg.goodbye.reason)

    def _on_welcome(self, session: _Session, welcome: pb.ServerWelcome) -> None:
        session.welcome = welcome
        session.batches = welcome.accepts_batches
        self.session_id = welcome.session_id
        if welcome.HasField("server_time"):
            # How far the server's wall clock is ahead of ours (off by the one-way latency):
            # deadlines the server sends are converted into our clock with it.
            self.clock_offset = welcome.server_time.ToNanoseconds() / 1e9 - time.time()
        self.heartbeat_interval = _seconds(welcome.heartbeat_interval) or 10.0
        self.lease_ttl = _seconds(welcome.lease_ttl)
        self.sessions_opened += 1
        self._welcomed_last = True
        session.heartbeat = asyncio.create_task(self._heartbeats(session, self.heartbeat_interval))
        if self._draining and not self._stopping:
            session.send(pb.ConnectRequest(drain=pb.DeviceDrain(reason="drain")))
        logger.info("device %s connected to %s (session %s, heartbeat %.3gs, lease ttl %.3gs)",
                    self.device_id, self.target, self.session_id, self.heartbeat_interval,
                    self.lease_ttl)
        self._connected.set()
        self._notify()

    async def _heartbeats(self, session: _Session, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.pause_heartbeats:
                continue
            beat = pb.DeviceHeartbeat(running_lease_ids=list(self._running))
            beat.sent_at.GetCurrentTime()
            session.send(pb.ConnectRequest(heartbeat=beat))

    # ------------------------------------------------------------------ assignments
    def _reject(self, session: _Session, lease_id: str, reason: str) -> None:
        logger.info("device %s: rejecting lease %s: %s", self.device_id, lease_id, reason)
        session.send(pb.ConnectRequest(reject=pb.AssignmentReject(lease_id=lease_id,
                                                                  reason=reason)))

    def _on_assignment(self, session: _Session, msg: pb.TaskAssignment) -> None:
        lease_id = msg.lease_id
        if lease_id in self._running or lease_id in self._pending:
            session.send(_ack(lease_id))
            return  # delivered twice: already on it
        if self._draining:
            return self._reject(session, lease_id, "draining")
        if len(self._running) >= self.capacity:
            return self._reject(session, lease_id, f"capacity: already running "
                                                   f"{len(self._running)}/{self.capacity}")
        task_data = from_struct(msg.task_data) if msg.HasField("task_data") else {}
        name = task_data.get("executor") or self.default_executor
        executor = self.executors.get(name) if isinstance(name, str) else None
        if executor is None:
            hint = " (the daemon runs it only with --allow-shell)" if name == "shell" else ""
            return self._reject(session, lease_id, f"unsupported: executor {name!r} is not "
                                f"enabled on device {self.device_id}{hint}; enabled: "
                                f"{', '.join(sorted(self.executors))}")
        assignment = Assignment(
            lease_id=lease_id, task_id=msg.task_id, attempt=msg.attempt,
            task_text=msg.task_text, task_data=task_data, orion_id=msg.orion_id,
            timeout=_seconds(msg.timeout) if msg.HasField("timeout") else None,
            deadline=datetime.fromtimestamp(
                msg.deadline.ToNanoseconds() / 1e9 - self.clock_offset, UTC)
            if msg.HasField("deadline") else None,
            trace_context=dict(msg.trace_context) if msg.trace_context else {},
            device_id=self.device_id,
            star=_StarView(msg.task) if msg.HasField("task") else {},
            _progress=self._progress_reporter(lease_id, msg.task_id, msg.attempt))
        session.send(_ack(lease_id))
        self._running[lease_id] = asyncio.create_task(
            self._execute(assignment, executor), name=f"lease-{lease_id}")
        self.max_running = max(self.max_running, len(self._running))
        self._notify()

    def _progress_reporter(self, lease_id: str, task_id: str, attempt: int
                           ) -> Callable[[float, str, Mapping[str, Any] | None], None]:
        def report(progress: float, message: str, data: Mapping[str, Any] | None) -> None:
            session = self._session
            if not self.send_progress or session is None or lease_id not in self._running:
                return
            msg = pb.TaskProgress(lease_id=lease_id, task_id=task_id, attempt=attempt,
                                  progress=min(1.0, max(0.0, progress))
                                  if math.isfinite(progress) else 0.0, message=message)
            if data:
                with contextlib.suppress(TypeError, ValueError):
                    msg.data.update(json.loads(json.dumps(dict(data), default=str)))
            session.send(pb.ConnectRequest(progress=msg))
        return report

    async def _execute(self, assignment: Assignment, executor: Executor) -> None:
        # This task's own context: every log line of the executor names the star.
        log_context.bind(orion_id=assignment.orion_id or None, star_id=assignment.task_id,
                         device_id=self.device_id)
        started = time.time_ns()
        result = pb.TaskResult(lease_id=assignment.lease_id, task_id=assignment.task_id,
                               attempt=assignment.attempt)
        try:
            if self.tracer is None and assignment.timeout is None:
                value = await executor(assignment)  # (nothing to wrap it in)
            else:
                async with contextlib.nullcontext() if self.tracer is None else \
                        _span(assignment, self.tracer):
                    async with asyncio.timeout(assignment.timeout):
                        value = await executor(assignment)
            try:
                _set_json(result, value)
                result.success = True
            except (TypeError, ValueError) as exc:
                result.error = f"the executor's result is not JSON: {exc}"
        except TimeoutError:
            result.error = f"timed out after {assignment.timeout:g}s on device {self.device_id}"
        except ExecutorError as exc:
            result.error = str(exc) or type(exc).__name__
            if exc.result is not None:
                with contextlib.suppress(TypeError, ValueError):
                    _set_json(result, exc.result)
        except Exception as exc:
            logger.info("device %s: lease %s failed: %r", self.device_id,
                        assignment.lease_id, exc)
            result.error = f"{type(exc).__name__}: {exc}"
        except BaseException:  # cancelled (lease cancel / shutdown): no result
            self._running.pop(assignment.lease_id, None)
            self._notify()
            raise
        # (seconds/nanos set directly: the Timestamp helpers go through datetime; each
        # submessage looked up once)
        stamp = result.started_at
        stamp.seconds, stamp.nanos = divmod(started, 1_000_000_000)
        stamp = result.finished_at
        stamp.seconds, stamp.nanos = divmod(time.time_ns(), 1_000_000_000)
        self._running.pop(assignment.lease_id, None)
        self.completed += 1
        self._pending[assignment.lease_id] = result
        session = self._session
        if session is not None and not self.hold_results:
            session.send(wire.field(_RESULT, result.SerializeToString()))
        self._notify()

    def _on_cancel(self, msg: pb.LeaseCancel) -> None:
        task = self._running.get(msg.lease_id)
        if task is not None:
            logger.info("device %s: lease %s cancelled by the server (%s)", self.device_id,
                        msg.lease_id, msg.reason)
            task.cancel()

    def _on_result_ack(self, msg: pb.ResultAck) -> None:
        if self.drop_result_acks > 0:
            self.drop_result_acks -= 1
            self._notify()
            return
        self.result_acks.append((msg.lease_id, msg.accepted, msg.reason))
        if not msg.accepted:
            logger.info("device %s: result for lease %s not accepted (%s)", self.device_id,
                        msg.lease_id, msg.reason)
        self._pending.pop(msg.lease_id, None)
        self._notify()


class _span(contextlib.AbstractAsyncContextManager[None]):
    """The ``device.execute`` span of an assignment (current while the executor runs), child of
    the star's span whose W3C context the assignment carries."""

    def __init__(self, assignment: Assignment, tracer: Any) -> None:
        self._assignment = assignment
        self._tracer = tracer
        self._span: Any = None
        self._current: Any = None

    async def __aenter__(self) -> None:
        from opentelemetry import propagate, trace

        a = self._assignment
        parent = propagate.extract(dict(a.trace_context)) if a.trace_context else None
        self._span = self._tracer.start_span(
            "device.execute", context=parent, kind=trace.SpanKind.SERVER, attributes={
                "device.id": a.device_id, "star.id": a.task_id, "orion.id": a.orion_id,
                "lease.id": a.lease_id, "star.attempt": a.attempt})
        self._current = trace.use_span(self._span, end_on_exit=False, record_exception=False,
                                       set_status_on_exception=False)
        self._current.__enter__()

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self._span
        if exc is None:
            span.set_attribute("star.outcome", "completed")
        elif isinstance(exc, asyncio.CancelledError):
            span.set_attribute("star.outcome", "cancelled")  # by the server, or shutdown
        else:
            timed_out = isinstance(exc, TimeoutError)
            span.set_attributes({"star.outcome": "failed",
                                 "star.reason": "timeout" if timed_out else "task_error"})
            if not isinstance(exc, TimeoutError | ExecutorError):  # a bug: keep the traceback
                span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, (str(exc) or type(exc).__name__)[:500]))
        self._current.__exit__(kind, exc, tb)
        span.end()
