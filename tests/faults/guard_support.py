"""Harness for the bad-input and limit tests: a real ``grpc.aio`` server on loopback, driven
with the generated (synchronous) stubs, and a record of what it accepted.

- ``ServerThread``: an ``OrionServer`` on its own event loop in a background thread, so
  synchronous tests (hypothesis drives synchronous functions) call it over real gRPC.
- ``Stubs``: one channel, the five services' generated stubs.
- ``World``: the orions the server accepted and what they looked like; ``assert_untouched()``
  after every bad call proves that the call changed nothing.
- ``live_env(server)``: the server with a fake device and a running orion, accepted in a
  ``World`` (the bad-input tests' starting point).
- ``rejection(call)``: the status, ErrorInfo and BadRequest of a call that must fail.
- ``Pki``: a throw-away CA and the certificates of a TLS test (made with ``cryptography``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from orion_grpc.api.server import OrionServer, ServerConfig
from orion_grpc.core import FakeDevice
from orion_grpc.gen.orion.v1 import (
    device_service_pb2_grpc,
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    manager_service_pb2,
    manager_service_pb2_grpc,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    orion_pb2,
    synchronizer_service_pb2_grpc,
    task_star_pb2,
)

T = TypeVar("T")
WAIT = 20.0  # upper bound of any single wait (never reached when things work)
TEST_CONFIG: dict[str, Any] = {"port": 0, "grace": 0.5, "retry_backoff_base": 0.0,
                               "device_grace_period": 0.0}


class ServerThread:
    """``OrionServer(ServerConfig(**config))`` on an event loop of its own (a daemon thread).
    ``run(coro)`` runs a coroutine on that loop (e.g. to attach in-process devices)."""

    def __init__(self, **config: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="orion-server",
                                        daemon=True)
        self._thread.start()
        self.server: OrionServer = self.run(self._start({**TEST_CONFIG, **config}))

    async def _start(self, config: dict[str, Any]) -> OrionServer:
        server = OrionServer(ServerConfig(**config))  # grpc.aio objects belong to this loop
        await server.start()
        return server

    @property
    def target(self) -> str:
        return self.server.target

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def attach(self, *devices: FakeDevice) -> None:
        async def connect() -> None:
            for device in devices:
                await device.connect(self.server.engine.devices)
        self.run(connect())

    def stop(self) -> None:
        try:
            self.run(self.server.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(WAIT)
            self.loop.close()


class Stubs:
    """The generated stubs of every service, over one channel (``with Stubs(target) as s``)."""

    def __init__(self, target: str, options: list[tuple[str, Any]] | None = None) -> None:
        self.channel = grpc.insecure_channel(target, options=options or [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self.orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(self.channel)
        self.manager = manager_service_pb2_grpc.ManagerServiceStub(self.channel)
        self.synchronizer = synchronizer_service_pb2_grpc.SynchronizerServiceStub(self.channel)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)
        self.devices = device_service_pb2_grpc.DeviceServiceStub(self.channel)

    def raw(self, method: str) -> Callable[..., Any]:
        """A unary method that sends the given bytes as they are (for malformed requests)."""
        return self.channel.unary_unary(method, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)

    def __enter__(self) -> Stubs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()


# ---------------------------------------------------------------------- failed calls
@dataclass
class Rejection:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)  # (field, reason)

    @property
    def violation_reasons(self) -> set[str]:
        return {reason for _, reason in self.violations}


def decode(error: grpc.RpcError) -> Rejection:
    """Status code, message, ErrorInfo and BadRequest of a failed call."""
    result = Rejection(error.code(), error.details() or "")  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "orion.v1"
            result.reason, result.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            result.violations = [(v.field, v.reason) for v in bad.field_violations]
    return result


def rejection(call: Callable[[], Any]) -> Rejection:
    """Run ``call``, which must fail; what it failed with."""
    try:
        call()
    except grpc.RpcError as error:
        return decode(error)
    raise AssertionError("the call succeeded but should have been refused")


# ---------------------------------------------------------------------- what was accepted
def comparable(orion: orion_pb2.TaskOrion) -> bytes:
    return orion.SerializeToString(deterministic=True)


class World:
    """The orions a server has accepted, as they looked when they settled."""

    def __init__(self, stubs: Stubs) -> None:
        self.stubs = stubs
        self.snapshots: dict[str, bytes] = {}

    def fetch(self, orion_id: str) -> orion_pb2.TaskOrion:
        return self.stubs.manager.GetOrion(  # type: ignore[no-any-return]
            manager_service_pb2.GetOrionRequest(orion_id=orion_id), timeout=WAIT).orion

    def accept(self, orion_id: str) -> None:
        """Remember ``orion_id`` as it is now (call once it no longer changes by itself)."""
        self.snapshots[orion_id] = comparable(self.fetch(orion_id))

    def listed_ids(self) -> set[str]:
        ids, token = set(), ""
        while True:
            page = self.stubs.manager.ListOrions(
                manager_service_pb2.ListOrionsRequest(page_size=1000, page_token=token),
                timeout=WAIT)
            ids.update(s.orion_id for s in page.orions)
            token = page.next_page_token
            if not token:
                return ids

    def assert_untouched(self) -> None:
        """No orion appeared or vanished, and every accepted one is exactly as it was."""
        assert self.listed_ids() == set(self.snapshots)
        for orion_id, before in self.snapshots.items():
            assert comparable(self.fetch(orion_id)) == before, f"orion {orion_id} changed"


def simple_orion(orion_id: str, *task_ids: str, chain: bool = True) -> orion_pb2.TaskOrion:
    orion = orion_pb2.TaskOrion(orion_id=orion_id)
    for task_id in task_ids:
        orion.tasks.add(task_id=task_id, description=f"do {task_id}",
                        device_type=task_star_pb2.DEVICE_TYPE_LINUX)
    if chain:
        for a, b in itertools.pairwise(task_ids):
            orion.dependencies.add(from_task_id=a, to_task_id=b)
    return orion


def watch_until(stubs: Stubs, orion_id: str, wanted: set[tuple[int, str]]) -> None:
    """Read the orion's events (history first) until every (event type, task id) in
    ``wanted`` was seen."""
    call = stubs.events.WatchEvents(event_service_pb2.WatchEventsRequest(
        orion_id=orion_id, include_history=True), timeout=WAIT)
    missing = set(wanted)
    try:
        for response in call:
            missing.discard((response.event.type, response.event.task_id))
            if not missing:
                return
    finally:
        call.cancel()
    raise AssertionError(f"events never seen: {missing}")


@dataclass
class Env:
    server: ServerThread
    stubs: Stubs
    world: World


@contextlib.contextmanager
def live_env(server: ServerThread) -> Iterator[Env]:
    """``server`` with a fake device and one orion left running ("live": star "done"
    completed, "hang" running forever, "later" waiting for it), accepted in the world; the
    server stops on exit."""
    stubs = Stubs(server.target)
    try:
        server.attach(FakeDevice("dev-1", "linux", capacity=8, hang_task_ids={"hang"}))
        world = World(stubs)
        live = simple_orion("live", "done", "hang", "later", chain=False)
        live.dependencies.add(line_id="hang-later", from_task_id="hang", to_task_id="later")
        stubs.orchestrator.SubmitOrion(orchestrator_service_pb2.SubmitOrionRequest(
            orion=live, assignment_strategy=orion_pb2.ASSIGNMENT_STRATEGY_CAPABILITY_MATCH),
            timeout=WAIT)
        watch_until(stubs, "live", {(event_type("TASK_COMPLETED"), "done"),
                                    (event_type("TASK_STARTED"), "hang")})
        world.accept("live")
        yield Env(server, stubs, world)
    finally:
        stubs.__exit__()
        server.stop()


def event_type(name: str) -> int:
    return event_pb2.EventType.Value(f"EVENT_TYPE_{name}")


def open_streams(stubs: Stubs, count: int) -> Iterator[Any]:
    """``count`` WatchEvents streams, each confirmed open (its headers arrived)."""
    for _ in range(count):
        call = stubs.events.WatchEvents(event_service_pb2.WatchEventsRequest())
        call.initial_metadata()  # the server sends headers once the stream is subscribed
        yield call


# ---------------------------------------------------------------------- certificates
@dataclass
class Pki:
    """A throw-away CA and certificates signed by it, as PEM files in ``directory``."""

    directory: Path

    def __post_init__(self) -> None:
        self._ca_key, self._ca_cert = _self_signed("Orion test CA")
        self.ca = self._write("ca.pem", self._ca_cert)

    def _write(self, name: str, cert: Any, key: Any = None) -> str:
        from cryptography.hazmat.primitives import serialization

        path = self.directory / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            path.with_suffix(".key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        return str(path)

    def issue(self, name: str, common_name: str, *, server: bool = False) -> tuple[str, str]:
        """(certificate, key) files for ``common_name``; a server certificate names
        127.0.0.1 and localhost."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                           self._ca_cert.subject, key.public_key())
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        path = self._write(f"{name}.pem", cert, key)
        return path, str(Path(path).with_suffix(".key"))


def _builder(subject: Any, issuer: Any, public_key: Any) -> Any:
    import datetime

    from cryptography import x509

    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _self_signed(common_name: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert
