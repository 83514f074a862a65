"""Fixtures for the API tests: a real grpc.aio server on a loopback port, in this process.

- ``make_server(tracing=None, metrics=None, **config)``: start an OrionServer (port 0), stop it at teardown.
- ``server``: one with default test settings; ``channel`` / ``client`` dial it.
- ``api_support.fleet(server, *ids, **kw)``: in-process FakeDevices on the server's engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from orion_grpc.api.server import OrionServer, ServerConfig
from orion_grpc.client import OrionClient
from orion_grpc.observability import OrionMetrics, Tracing

TEST_CONFIG: dict[str, Any] = {"port": 0, "grace": 0.5, "retry_backoff_base": 0.0,
                               "device_grace_period": 0.0, "bookmark_interval": 30.0, "store": ":memory:"}

MakeServer = Callable[..., Awaitable[OrionServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    servers: list[OrionServer] = []

    async def make(tracing: Tracing | None = None, metrics: OrionMetrics | None = None,
                   **overrides: Any) -> OrionServer:
        server = OrionServer(ServerConfig(**{**TEST_CONFIG, **overrides}), tracing=tracing,
                             metrics=metrics)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def server(make_server: MakeServer) -> OrionServer:
    return await make_server()


@pytest.fixture
async def channel(server: OrionServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture
async def client(server: OrionServer) -> AsyncIterator[OrionClient]:
    async with OrionClient(server.target, timeout=10, run_timeout=20) as c:
        yield c
