"""Fixtures for the device link tests: a real grpc.aio server on loopback, real agents.

- ``harness``: an ``OrionEngine`` behind ``DeviceService`` on a free loopback port, with
  ``harness.agent(...)`` (in-process ``DeviceAgent``s, stopped at teardown),
  ``harness.raw(...)`` (a hand-driven protocol client) and ``harness.events`` (every engine
  event, awaitable).

Nothing here sleeps to wait for a condition: waits are on events / futures with timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from orion_grpc.api.device_service import (
    DEVICE_SERVER_OPTIONS,
    DeviceLinkConfig,
    DeviceServiceServicer,
    add_device_service,
)
from orion_grpc.core import EngineConfig, Event, EventType, OrionEngine
from orion_grpc.core.events import EventRecorder
from orion_grpc.device import DeviceAgent
from orion_grpc.gen.orion.v1 import device_service_pb2 as pb
from orion_grpc.gen.orion.v1 import device_service_pb2_grpc as pb_grpc

# Heartbeats every 0.1 s; a device is lost after 1 s of silence (10 missed heartbeats, so a
# busy CI machine does not lose devices by accident).
LINK = DeviceLinkConfig(heartbeat_interval=0.1, lease_ttl=1.0, goodbye_timeout=0.5)
WAIT = 10.0  # upper bound of any single wait (never reached when things work)


class EventLog(EventRecorder):
    """Every engine event in publish order; ``wait_for`` matches attributes / data fields."""

    def of(self, event_type: EventType, **fields: Any) -> list[Event]:
        return [e for e in self.events if e.event_type is event_type and _matches(e, fields)]

    async def wait_for(self, event_type: EventType, timeout: float = WAIT,  # type: ignore[override]
                       **fields: Any) -> Event:
        """The first event of ``event_type`` whose attributes / data match ``fields``."""
        return await super().wait_for(
            lambda e: e.event_type is event_type and _matches(e, fields), timeout)


def _matches(event: Event, fields: dict[str, Any]) -> bool:
    for key, want in fields.items():
        have = getattr(event, key) if hasattr(event, key) else event.data.get(key)
        if have != want:
            return False
    return True


class RawDevice:
    """A hand-driven device session: the test writes requests and reads responses."""

    def __init__(self, channel: grpc.aio.Channel, heartbeat: float | None = 0.1) -> None:
        self._queue: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self.call = pb_grpc.DeviceServiceStub(channel).Connect(self._requests())
        self._heartbeat = heartbeat
        self._beats: asyncio.Task[None] | None = None

    async def _requests(self) -> AsyncIterator[pb.ConnectRequest]:
        while (msg := await self._queue.get()) is not None:
            yield msg

    def send(self, **message: Any) -> None:
        """``send(result=pb.TaskResult(...))`` etc."""
        self._queue.put_nowait(pb.ConnectRequest(**message))

    async def recv(self, timeout: float = WAIT) -> pb.ConnectResponse:
        msg = await asyncio.wait_for(self.call.read(), timeout)
        assert msg is not grpc.aio.EOF, "the server ended the stream"
        return msg  # type: ignore[no-any-return]

    async def expect(self, kind: str, timeout: float = WAIT) -> Any:
        """The next message, which must be of ``kind`` (welcome, assignment, result_ack, ...)."""
        msg = await self.recv(timeout)
        assert msg.WhichOneof("message") == kind, f"expected {kind}, got {msg}"
        return getattr(msg, kind)

    async def hello(self, device_id: str, **fields: Any) -> pb.ServerWelcome:
        fields.setdefault("device_type", 3)  # linux
        self.send(hello=pb.DeviceHello(device_id=device_id, **fields))
        welcome = await self.expect("welcome")
        if self._heartbeat:
            self._beats = asyncio.create_task(self._beat(self._heartbeat))
        return welcome

    async def _beat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.send(heartbeat=pb.DeviceHeartbeat())

    def stop_heartbeats(self) -> None:
        if self._beats is not None:
            self._beats.cancel()

    async def ended(self, timeout: float = WAIT) -> None:
        """Wait until the server has ended the stream (reading and dropping what's left)."""
        async def drain() -> None:
            while await self.call.read() is not grpc.aio.EOF:
                pass
        await asyncio.wait_for(drain(), timeout)

    def close(self) -> None:
        self.stop_heartbeats()
        self._queue.put_nowait(None)

    def cancel(self) -> None:
        self.stop_heartbeats()
        self.call.cancel()


class Harness:
    def __init__(self, engine: OrionEngine, server: grpc.aio.Server,
                 servicer: DeviceServiceServicer, port: int) -> None:
        self.engine = engine
        self.server = server
        self.servicer = servicer
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.events = EventLog()
        engine.bus.subscribe(self.events)
        self.agents: list[DeviceAgent] = []
        self.raws: list[RawDevice] = []
        self._channel: grpc.aio.Channel | None = None

    @property
    def devices(self) -> Any:
        return self.engine.devices

    @property
    def orchestrator(self) -> Any:
        return self.engine.orchestrator

    def agent(self, device_id: str, device_type: str = "linux", capabilities: tuple[str, ...] = (),
              capacity: int = 1, start: bool = True, **kw: Any) -> DeviceAgent:
        kw.setdefault("backoff_initial", 0.05)
        kw.setdefault("backoff_max", 0.2)
        agent = DeviceAgent(self.target, device_id, device_type, capabilities, capacity, **kw)
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    async def connected(self, *agents: DeviceAgent) -> None:
        await asyncio.gather(*(a.wait_connected(WAIT) for a in agents))

    def raw(self, heartbeat: float | None = 0.1) -> RawDevice:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        device = RawDevice(self._channel, heartbeat)
        self.raws.append(device)
        return device

    async def close(self) -> None:
        for raw in self.raws:
            raw.cancel()
        await asyncio.gather(*(a.stop(timeout=0.5) for a in self.agents), return_exceptions=True)
        await self.servicer.close(timeout=1.0)
        if self._channel is not None:
            await self._channel.close()
        await self.server.stop(0)
        await self.engine.close()


async def start_harness(config: DeviceLinkConfig = LINK, **engine_kw: Any) -> Harness:
    engine_kw.setdefault("retry_backoff_base", 0.0)
    engine_kw.setdefault("device_grace_period", 0.05)
    engine = OrionEngine(EngineConfig(**engine_kw))
    server = grpc.aio.server(options=list(DEVICE_SERVER_OPTIONS))
    servicer = add_device_service(server, engine, config)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Harness(engine, server, servicer, port)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await start_harness()
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture
async def harness_factory() -> AsyncIterator[Callable[..., Any]]:
    """``await harness_factory(config=..., **engine_config)`` for tests that need other knobs."""
    made: list[Harness] = []

    async def make(**kw: Any) -> Harness:
        h = await start_harness(**kw)
        made.append(h)
        return h
    try:
        yield make
    finally:
        for h in made:
            await h.close()
