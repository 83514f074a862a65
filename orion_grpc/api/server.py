"""The server bootstrap: configuration, the grpc.aio server and graceful shutdown.

``ServerConfig`` is built in ONE place (``ServerConfig.from_sources``) from command-line flags,
then ``ORION_*`` environment variables, then defaults. ``OrionServer`` hosts the Orchestrator,
Manager, Synchronizer and Event services over one ``OrionEngine``, plus the DeviceService when
``orion_grpc.api.device_service`` is installed, gRPC health (overall ``""`` and per service)
and server reflection v1 + v1alpha.

Tracing (OpenTelemetry) is off unless ``OTEL_TRACES_EXPORTER`` asks for it (``serve`` reads
the ``OTEL_*`` variables through ``server_from_env``; see ``orion_grpc.observability.tracing``
and docs/operations.md). When off, no interceptor and no engine hooks are installed.

Shutdown (SIGINT/SIGTERM under ``serve``; ``OrionServer.stop`` otherwise): health goes
NOT_SERVING, devices are told goodbye, watch streams end with UNAVAILABLE and a resume
token, the engine cancels what still runs, then the server stops with ``grace`` seconds for
in-flight calls.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import inspect
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from ..core import EngineConfig, FakeDevice, OrionEngine
from ..core.recovery import restore
from ..gen.orion.v1 import (
    event_service_pb2,
    manager_service_pb2,
    manager_service_pb2_grpc,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    synchronizer_service_pb2,
    synchronizer_service_pb2_grpc,
)
from ..observability.hooks import chain_hooks
from ..observability.logs import EventLogger
from ..observability.metrics import OrionMetrics
from ..observability.prometheus import MetricsEndpoint
from ..observability.tracing import Tracing
from ..store.sqlite import SYNC_MODES, open_store
from ..transport import read_pem
from .auth import Authenticator, SecurityConfigError, Tokens
from .event_log import EventLog
from .event_service import EventServicer, add_event_service
from .guard import GuardInterceptor
from .limits import Limits, StreamSlots
from .manager_service import ManagerServicer
from .orchestrator_service import OrchestratorServicer
from .reflection import enable_reflection
from .state import ApiState
from .support import IdempotencyCache
from .synchronizer_service import SynchronizerServicer

try:  # DeviceService is a separate piece (device link); the server works without it
    from . import device_service as _device_service
    from .device_service import add_device_service
except ImportError:  # pragma: no cover - depends on what is installed
    _device_service = None  # type: ignore[assignment]
    add_device_service = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_STORE = "orion-data/orion.db"  # orion serve's store, relative to where it runs

SERVICE_NAMES = [
    orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,
    manager_service_pb2.DESCRIPTOR.services_by_name["ManagerService"].full_name,
    synchronizer_service_pb2.DESCRIPTOR.services_by_name["SynchronizerService"].full_name,
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
]
DEVICE_SERVICE_NAME = "orion.v1.DeviceService"
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _opt(help: str, **kw: Any) -> Any:
    return field(metadata={"help": help}, **kw)


@dataclass(frozen=True)
class ServerConfig:
    """Everything that configures a server. Flag ``--foo-bar`` = env ``ORION_FOO_BAR``."""

    host: str = _opt("address to listen on", default="127.0.0.1")
    port: int = _opt("port to listen on (0 = pick a free port)", default=50051)
    max_receive_message_bytes: int = _opt("largest request message accepted",
                                          default=16 * MiB)
    max_send_message_bytes: int = _opt("largest response message sent", default=16 * MiB)
    keepalive_time: float = _opt("seconds between server keepalive pings on idle connections",
                                 default=60.0)
    keepalive_timeout: float = _opt("seconds to wait for a keepalive ping ack", default=20.0)
    keepalive_min_ping_interval: float = _opt(
        "shortest interval (seconds) at which clients and devices may ping", default=10.0)
    heartbeat_interval: float = _opt("seconds between device heartbeats (sent to devices)",
                                     default=10.0)
    lease_ttl: float = _opt("seconds a device lease lives without a heartbeat (sent to devices)",
                            default=30.0)
    modification_timeout: float = _opt(
        "seconds the scheduler waits for a planner's edit after each finished star",
        default=600.0)
    grace: float = _opt("seconds in-flight calls get to finish on shutdown", default=5.0)
    bookmark_interval: float = _opt("seconds between bookmarks on idle WatchEvents streams",
                                    default=30.0)
    event_retention: int = _opt("events kept for WatchEvents resumption", default=50_000)
    watch_max_lag: int = _opt("events a watcher may fall behind before it is cut off "
                              "(0 = event_retention)", default=0)
    max_concurrent_tasks: int = _opt("cap on running stars per orion (0 = no cap)", default=0)
    retry_backoff_base: float = _opt("seconds before a star's first retry (doubles per retry)",
                                     default=0.5)
    device_grace_period: float = _opt(
        "seconds ready stars wait for their offline device before moving", default=10.0)
    store: str = _opt(
        "where accepted orions, their stars' states, the event history and request ids are "
        "persisted: a SQLite file, ':memory:' (SQLite in this process only) or 'none' (no "
        f"store); 'orion serve' defaults to {DEFAULT_STORE}, an embedded OrionServer to none",
        default="")
    store_sync: str = _opt("SQLite synchronous mode: 'full' (fsync per group commit; "
                           "survives power loss) or 'normal' (survives a killed process only)",
                           default="full")
    reconnect_grace: float = _opt(
        "seconds a device's running stars stay leased to it after a server restart, waiting "
        "for it to reconnect, before they are retried by the normal rules", default=60.0)
    disconnect_grace: float = _opt(
        "seconds a device whose stream ended keeps its running stars, waiting for it to "
        "reconnect, before it is lost and they are retried (0 = lost at once)", default=0.0)
    # Limits (docs/operations.md "Limits"); a request beyond one is refused, changing nothing.
    max_stars: int = _opt("most stars one orion may have", default=10_000)
    max_lines: int = _opt("most lines (dependencies) one orion may have", default=50_000)
    max_task_data_bytes: int = _opt("largest task_data of one star (bytes on the wire)",
                                    default=1 * MiB)
    max_streams_per_client: int = _opt(
        "most streams (WatchEvents, device Connect, reflection) one client may hold open; a "
        "client is its credential, else its IP address", default=100)
    # TLS and authentication (docs/operations.md "TLS and authentication"). Tokens are kept
    # out of repr(): a config may be logged.
    tls_cert: str = _opt("PEM certificate (chain) of the server: with --tls-key the server "
                         "speaks TLS only", default="")
    tls_key: str = _opt("PEM private key of --tls-cert", default="")
    tls_client_ca: str = _opt(
        "PEM CA certificate(s): every client and device must present a certificate signed by "
        "one (mutual TLS); a device's certificate names its device id (its CN)", default="")
    tokens_file: str = _opt("YAML/JSON file of bearer tokens (role client or device, the "
                            "device_id of a device token); any token turns authentication on",
                            default="")
    client_tokens: str = _opt("comma-separated client tokens (prefer the environment or "
                              "--tokens-file: flags show in ps)", default="", repr=False)
    device_tokens: str = _opt("comma-separated DEVICE_ID=TOKEN pairs (prefer the environment "
                              "or --tokens-file)", default="", repr=False)
    fake_devices: int = _opt("FOR DEMOS AND TESTS ONLY: attach this many in-process simulated "
                             "devices (linux/windows/android)", default=0)
    fake_latency: float = _opt("seconds each simulated device takes per star", default=0.2)
    log_level: str = _opt("logging level", default="INFO")
    log_format: str = _opt("log lines on stderr: auto (JSON lines unless stderr is a terminal), "
                           "json or text", default="auto")
    metrics_port: int | None = _opt("serve Prometheus metrics at http://METRICS_HOST:PORT/metrics "
                                    "(unset: off; 0 = a free port)", default=None)
    metrics_host: str = _opt("address of the metrics endpoint", default="127.0.0.1")

    # ------------------------------------------------------------------ building
    @classmethod
    def env_name(cls, name: str) -> str:
        return f"ORION_{name.upper()}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field (default None, so unset flags fall back to env / defaults)."""
        for f in dataclasses.fields(cls):
            kind = _field_type(f)
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                                type=kind, metavar=f.name.split("_")[-1].upper(),
                                help=f"{f.metadata.get('help', '')} [env {cls.env_name(f.name)}"
                                     f", default {'unset' if f.default is None else f.default}]")

    @classmethod
    def from_sources(cls, args: argparse.Namespace | Mapping[str, Any] | None = None,
                     env: Mapping[str, str] | None = None,
                     defaults: Mapping[str, Any] | None = None) -> ServerConfig:
        """Flags win over ``ORION_*`` environment variables, which win over ``defaults`` (what
        a command changes, e.g. ``orion serve``'s store), which win over the field defaults."""
        env = os.environ if env is None else env
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        values: dict[str, Any] = dict(defaults or {})
        for f in dataclasses.fields(cls):
            kind = _field_type(f)
            if given.get(f.name) is not None:
                values[f.name] = kind(given[f.name])
            elif env.get(cls.env_name(f.name), "").strip() or (
                    cls.env_name(f.name) in env and f.default is not None):
                raw = env[cls.env_name(f.name)]
                try:
                    values[f.name] = kind(raw)
                except ValueError as exc:
                    raise ValueError(f"{cls.env_name(f.name)}={raw!r}: expected "
                                     f"{kind.__name__}") from exc
        return cls(**values).validated()

    def validated(self) -> ServerConfig:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 0..65535")
        for name in ("heartbeat_interval", "lease_ttl", "modification_timeout",
                     "bookmark_interval", "keepalive_time", "keepalive_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.event_retention < 1:
            problems.append("event_retention must be at least 1")
        if self.max_receive_message_bytes < 1024 or self.max_send_message_bytes < 1024:
            problems.append("message size limits must be at least 1024 bytes")
        if self.log_format not in ("auto", "json", "text"):
            problems.append(f"log_format {self.log_format!r} is not auto, json or text")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            problems.append(f"metrics_port {self.metrics_port} is not in 0..65535")
        for name in ("max_stars", "max_lines", "max_task_data_bytes", "max_streams_per_client"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            problems.append("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.fake_devices < 0:
            problems.append("fake_devices must not be negative")
        if self.store_sync not in SYNC_MODES:
            problems.append(f"store_sync must be one of {', '.join(SYNC_MODES)}")
        if self.reconnect_grace < 0 or self.disconnect_grace < 0:
            problems.append("reconnect_grace and disconnect_grace must not be negative")
        if self.lease_ttl <= self.heartbeat_interval:
            problems.append(f"lease_ttl ({self.lease_ttl:g}) must exceed heartbeat_interval "
                            f"({self.heartbeat_interval:g}), or every device would be lost")
        if problems:
            raise ValueError("invalid server configuration: " + "; ".join(problems))
        return self

    # ------------------------------------------------------------------ derived
    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else \
            self.host
        return f"{host}:{self.port}"

    def grpc_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms",
             int(self.keepalive_min_ping_interval * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.so_reuseport", 0),
        ]

    def server_options(self) -> list[tuple[str, Any]]:
        """grpc_options() merged with what the DeviceService needs for device keepalives."""
        merged = dict(self.grpc_options())
        for key, value in getattr(_device_service, "DEVICE_SERVER_OPTIONS", ()):
            if key == "grpc.http2.min_recv_ping_interval_without_data_ms" and key in merged:
                merged[key] = min(merged[key], value)
            else:
                merged[key] = value
        return list(merged.items())

    def device_link_config(self) -> Any:
        """The DeviceService's own config (heartbeat interval and lease TTL sent to devices)."""
        cls = getattr(_device_service, "DeviceLinkConfig", None)
        if cls is None:
            return self
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: getattr(self, name)
                      for name in ("heartbeat_interval", "lease_ttl", "disconnect_grace")
                      if name in names})

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials from the PEM files (None: plaintext); SecurityConfigError if a file
        cannot be read."""
        if not self.tls_cert:
            return None
        key = read_pem(self.tls_key, "--tls-key", SecurityConfigError)
        cert = read_pem(self.tls_cert, "--tls-cert", SecurityConfigError)
        ca = read_pem(self.tls_client_ca, "--tls-client-ca", SecurityConfigError) \
            if self.tls_client_ca else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                           require_client_auth=ca is not None)

    def authenticator(self) -> Authenticator:
        return Authenticator(Tokens.load(self.tokens_file, self.client_tokens,
                                         self.device_tokens),
                             device_certificates=bool(self.tls_client_ca))

    def exposure_warnings(self, authenticator: Authenticator | None = None) -> list[str]:
        """What is missing when the server listens beyond this machine (loopback: nothing)."""
        host = self.host.strip("[]")
        if host in ("localhost", "::1") or host.startswith("127."):
            return []
        auth = authenticator if authenticator is not None else self.authenticator()
        missing = [what for what, present in (("TLS", bool(self.tls_cert)),
                                              ("tokens", auth.required)) if not present]
        if not missing:
            return []
        exposure = {"TLS": "everything on the wire, tokens included, can be read and changed",
                    "tokens": "anyone who reaches the port can submit orions, edit or cancel "
                              "them and connect as any device"}
        return [f"listening on {self.address} without {' and without '.join(missing)}: "
                + "; ".join(exposure[m] for m in missing) + ". Use --tls-cert/--tls-key and "
                "--tokens-file (docs/operations.md, 'TLS and authentication'), or listen on "
                "127.0.0.1"]

    def limits(self) -> Limits:
        return Limits(max_stars=self.max_stars, max_lines=self.max_lines,
                      max_task_data_bytes=self.max_task_data_bytes,
                      max_streams_per_client=self.max_streams_per_client)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(max_concurrent_tasks=self.max_concurrent_tasks or None,
                            retry_backoff_base=self.retry_backoff_base,
                            device_grace_period=self.device_grace_period,
                            modification_timeout=self.modification_timeout,
                            heartbeat_interval=self.heartbeat_interval)


def _field_type(f: dataclasses.Field[Any]) -> type:
    return {"int": int, "float": float, "str": str, "int | None": int}[str(f.type)]


# The simulated fleet of --fake-devices: (type, capabilities), cycled.
FAKE_FLEET = [("linux", ["python", "docker"]), ("windows", ["msbuild", "office"]),
              ("android", ["adb", "camera"])]


class OrionServer:
    """One gRPC server over one engine. ``await start()`` returns the bound port.

    :param tracing: trace RPCs, orions and stars with it (a span per RPC via a server
        interceptor, engine hooks for the rest); None (the default) installs neither. The
        caller owns it (``tracing.shutdown()``); ``server_from_env`` builds one from ``OTEL_*``.
    :param metrics: measure the engine with it (default: a new ``OrionMetrics`` when
        ``config.metrics_port`` is set, else none). ``config.metrics_port`` also serves them
        over HTTP (``metrics_endpoint``).
    """

    def __init__(self, config: ServerConfig | None = None, engine: OrionEngine | None = None,
                 *, tracing: Tracing | None = None, metrics: OrionMetrics | None = None) -> None:
        self.config = config or ServerConfig()
        self.tracing = tracing
        self.metrics = metrics
        self._owns_metrics = False
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.interceptors: list[grpc.aio.ServerInterceptor] = []
        self.stream_slots: StreamSlots | None = None
        self.exposure_warnings: list[str] = []
        self._engine = engine
        self._server: grpc.aio.Server | None = None
        self._state: ApiState | None = None
        self.health: HealthServicer | None = None
        self.device_service: Any = None
        self.fake_devices: list[FakeDevice] = []
        self.port: int | None = None
        self._stopping: asyncio.Task[None] | None = None

    @property
    def engine(self) -> OrionEngine:
        if self._engine is None:
            raise RuntimeError("the server has not been started")
        return self._engine

    @property
    def state(self) -> ApiState:
        if self._state is None:
            raise RuntimeError("the server has not been started")
        return self._state

    @property
    def events(self) -> EventLog:
        return self.state.events

    @property
    def target(self) -> str:
        """``host:port`` a client on this machine can dial."""
        host = self.config.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def start(self) -> int:
        config = self.config
        # Security first: a bad tokens file or certificate stops the start before anything
        # (a store, a port) is opened.
        authenticator = config.authenticator()
        credentials = config.server_credentials()
        self.exposure_warnings = config.exposure_warnings(authenticator)
        if self._engine is None:
            store = open_store(config.store, sync=config.store_sync) \
                if config.store not in ("", "none") else None
            self._engine = OrionEngine(config.engine_config(), store=store)
        engine = self._engine
        engine.orchestrator.set_modification_synchronizer(engine.synchronizer)
        journal = engine.journal
        # Observers first: the runs restored below must be traced and measured too.
        if self.metrics is None and config.metrics_port is not None:
            self.metrics, self._owns_metrics = OrionMetrics(), True
        metrics_hooks = None if self.metrics is None else \
            self.metrics.attach(engine, lambda: events.subscriber_count,
                                lambda: getattr(self.device_service, "stream_count", 0))
        if self.metrics is not None and journal is not None:
            journal.commit_timer = lambda seconds, m=self.metrics: m.observe_store("commit",
                                                                                   seconds)
        spans = None
        self.interceptors = []  # tracing first (outermost), so refused calls are traced too
        if self.tracing is not None:
            self.interceptors.append(self.tracing.server_interceptor())
            spans = self.tracing.hooks()
        engine.orchestrator.set_tracer_hooks(chain_hooks(spans, metrics_hooks))
        event_logger = EventLogger(trace_id_of=spans.trace_id if spans is not None else None)
        engine.bus.subscribe(event_logger, event_logger.event_types())
        stored = journal.store.load(config.event_retention) if journal is not None else None
        runs = restore(engine, stored, hold=config.reconnect_grace) if stored else []
        events = EventLog(config.event_retention, config.watch_max_lag or None,
                          stored.meta.get("epoch") if stored else None, journal=journal,
                          history=stored.events if stored else ())
        events.attach(engine.bus)
        limits = config.limits()
        self._state = state = ApiState(engine, events, IdempotencyCache(
            journal=journal, records=stored.requests if stored else ()), limits)
        for run in runs:
            state.runs.resume(run, config.reconnect_grace)
        if journal is not None:
            await journal.barrier()  # the new boot is durable before any lease is issued
            logger.info("store %s: %d orions restored, %d runs resumed, events from %d",
                        journal.store.describe(), len(engine.manager._orions), len(runs),
                        events.latest_sequence + 1)

        self.stream_slots = StreamSlots(limits.max_streams_per_client)
        self.interceptors.append(GuardInterceptor(self.stream_slots, authenticator))
        server = grpc.aio.server(interceptors=self.interceptors,
                                 options=config.server_options())
        orchestrator_service_pb2_grpc.add_OrchestratorServiceServicer_to_server(
            OrchestratorServicer(state), server)
        manager_service_pb2_grpc.add_ManagerServiceServicer_to_server(ManagerServicer(state),
                                                                      server)
        synchronizer_service_pb2_grpc.add_SynchronizerServiceServicer_to_server(
            SynchronizerServicer(state), server)
        add_event_service(server, EventServicer(events, config.bookmark_interval))
        names = list(SERVICE_NAMES)
        if add_device_service is not None:
            self.device_service = add_device_service(server, engine, config.device_link_config())
            names.append(DEVICE_SERVICE_NAME)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(server, [*names, HEALTH_SERVICE_NAME])

        self.port = server.add_secure_port(config.address, credentials) if credentials \
            else server.add_insecure_port(config.address)
        if not self.port:
            raise RuntimeError(f"could not listen on {config.address}")
        self._server = server
        await server.start()
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._attach_fake_devices()
        if self.metrics is not None and config.metrics_port is not None:
            self.metrics_endpoint = MetricsEndpoint(self.metrics.render, config.metrics_host,
                                                    config.metrics_port)
            await self.metrics_endpoint.start()
            logger.info("metrics on %s", self.metrics_endpoint.url)
        logger.info("listening on %s:%s (services: %s; %s, %s)", config.host, self.port,
                    ", ".join(names), "mutual TLS" if config.tls_client_ca else
                    "TLS" if credentials else "plaintext",
                    "tokens required" if authenticator.required else "no authentication")
        for warning in self.exposure_warnings:
            logger.warning("%s", warning)
        return self.port

    async def _attach_fake_devices(self) -> None:
        for i in range(self.config.fake_devices):
            kind, caps = FAKE_FLEET[i % len(FAKE_FLEET)]
            device = FakeDevice(
                f"fake-{kind}-{i + 1}", kind, caps, capacity=2, latency=self.config.fake_latency,
                handler=lambda lease: {"status": "ok", "device": lease.device_id,
                                       "task": lease.task_id})
            self.fake_devices.append(await device.connect(self.engine.devices))

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (idempotent; concurrent callers wait for the same stop)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        grace = self.config.grace if grace is None else grace
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self._engine is not None:
            # With a store, runs stop where they are and nothing the shutdown does (devices
            # told goodbye, their leases failing) is persisted: a restart resumes every orion.
            self._engine.suspend()
        if self._state is not None:
            self._state.events.close("server shutting down")
        # Devices get goodbye. Their running work is cancelled first unless a restart will
        # resume it (a store that outlives this process): then they finish and replay.
        await self._call_device_service("close", cancel_running=not self._resumable())
        if self._engine is not None:
            await self._engine.close()
        if self._state is not None:
            await self._state.runs.close()
        if self._server is not None:
            await self._server.stop(grace)
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.stop()
        if self.metrics is not None:
            if self._owns_metrics:
                self.metrics.shutdown()
            else:
                self.metrics.detach()
        logger.info("server stopped")

    def _resumable(self) -> bool:
        """Will a restarted server resume this one's orions (a store outliving the process)?"""
        journal = self._engine.journal if self._engine is not None else None
        return journal is not None and journal.store.durable

    async def _call_device_service(self, name: str, **kwargs: Any) -> None:
        method = getattr(self.device_service, name, None)
        if method is None:
            return
        try:
            outcome = method(**kwargs)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("device service %s failed", name)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def server_from_env(config: ServerConfig, env: Mapping[str, str] | None = None) -> OrionServer:
    """The server ``orion serve`` runs: ``config`` plus tracing as the ``OTEL_*`` variables say
    (off by default). Raises ``TracingConfigError`` (a ValueError) for a bad tracing setup."""
    return OrionServer(config, tracing=Tracing.from_env("orion-server", env))


def tune_gc() -> None:
    """Garbage-collector settings for a long-running server process (``orion serve`` only; an
    embedded OrionServer leaves its host's settings alone): what start-up built (modules,
    the restored store) is frozen — never scanned again — and the youngest generation is
    collected every 20,000 allocations instead of 700, as every star allocates short-lived
    objects by the dozen. In profiles the collector was 5-15% of the server's CPU."""
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(20_000, second, third)


async def serve(config: ServerConfig) -> None:
    """Run a server until SIGINT/SIGTERM; the first line printed is ``listening on H:P``."""
    server = server_from_env(config)
    if server.tracing is not None:
        server.tracing.set_global()
    try:
        await _serve(server, config)
    finally:
        if server.tracing is not None:
            server.tracing.shutdown()  # flush the spans still batched


async def _serve(server: OrionServer, config: ServerConfig) -> None:
    port = await server.start()
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            logger.warning("%s: already shutting down (grace %gs)", sig.name, config.grace)
        else:
            logger.info("%s: shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    for warning in server.exposure_warnings:  # loud: on stderr whatever the log format
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    # Only now say we listen: whoever reads this line may signal us at once.
    print(f"listening on {config.host}:{port}", flush=True)
    if server.metrics_endpoint is not None:
        print(f"metrics on {server.metrics_endpoint.url}", flush=True)
    try:
        await stop.wait()
        await server.stop()  # handlers stay: a second signal does not cut the shutdown short
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            # Shutdown has begun: a late repeat of the signal must not kill the process
            # (with the default action) while it finishes stopping and flushing.
            signal.signal(sig, signal.SIG_IGN)
        await server.stop()
    print("server stopped", flush=True)
