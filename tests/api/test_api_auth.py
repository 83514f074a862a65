"""Token authentication and roles on a real server in this process (plaintext loopback; TLS
and mutual TLS between real processes: tests/faults/test_auth.py)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from orion_grpc.api.auth import (
    CLIENT,
    DEVICE,
    Authenticator,
    Principal,
    SecurityConfigError,
    Tokens,
    bearer_token,
    method_role,
)
from orion_grpc.api.server import OrionServer, ServerConfig
from orion_grpc.client import OrionClient
from orion_grpc.client.client import RpcError
from orion_grpc.core import TaskOrion, TaskStar
from orion_grpc.device import DeviceAgent
from orion_grpc.gen.orion.v1 import (
    device_service_pb2,
    device_service_pb2_grpc,
    event_service_pb2,
    event_service_pb2_grpc,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
)
from orion_grpc.transport import ChannelSecurity, add_arguments

MakeServer = Callable[..., Awaitable[OrionServer]]  # the conftest fixture's type
CLIENT_TOKEN = "client-token-0123456789"
OTHER_CLIENT_TOKEN = "client-token-abcdefghij"
DEVICE_TOKEN = "device-token-0123456789"
WAIT = 10.0


# ---------------------------------------------------------------------- the token table
def test_a_tokens_file_names_roles_and_devices(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"""
tokens:
  - token: {CLIENT_TOKEN}
    role: client
    name: ci
  - sha256: {hashlib.sha256(DEVICE_TOKEN.encode()).hexdigest()}
    role: device
    device_id: build-01
""")
    tokens = Tokens.load(str(path), client_tokens=OTHER_CLIENT_TOKEN,
                         device_tokens=f"pixel-8={'p' * 20}")
    assert len(tokens) == 4
    assert tokens.lookup(CLIENT_TOKEN) == Principal(CLIENT, "ci")
    assert tokens.lookup(DEVICE_TOKEN) == Principal(DEVICE, "build-01", "build-01")
    assert tokens.lookup(OTHER_CLIENT_TOKEN) == Principal(CLIENT, "client-token-1")
    assert tokens.lookup("p" * 20) == Principal(DEVICE, "pixel-8", "pixel-8")
    assert tokens.lookup(CLIENT_TOKEN + "x") is None and tokens.lookup("") is None
    json_path = tmp_path / "tokens.json"
    json_path.write_text(json.dumps({"tokens": [{"token": CLIENT_TOKEN, "role": "client"}]}))
    assert Tokens.load(str(json_path)).lookup(CLIENT_TOKEN) == Principal(CLIENT, "client-0")


@pytest.mark.parametrize(("entry", "problem"), [
    ({"token": "short", "role": "client"}, "at least 16 characters"),
    ({"token": CLIENT_TOKEN, "role": "admin"}, "role must be 'client' or 'device'"),
    ({"token": DEVICE_TOKEN, "role": "device"}, "needs the device_id"),
    ({"token": CLIENT_TOKEN, "role": "client", "device_id": "d"}, "a client token has no"),
    ({"role": "client"}, "either 'token' or 'sha256'"),
    ({"sha256": "abc", "role": "client"}, "64 hex digits"),
    ({"token": CLIENT_TOKEN, "role": "client", "extra": 1}, "unknown key(s) ['extra']"),
    ({"token": DEVICE_TOKEN, "role": "device", "device_id": "a\nb"}, "control character"),
])
def test_a_bad_tokens_file_says_what_is_wrong_but_never_the_token(
        tmp_path: Path, entry: dict[str, Any], problem: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [entry]}))
    with pytest.raises(SecurityConfigError) as info:
        Tokens.load(str(path))
    assert problem in str(info.value) and "tokens[0]" in str(info.value)
    if "token" in entry:
        assert entry["token"] not in str(info.value)


def test_other_token_sources_are_checked_too(tmp_path: Path) -> None:
    with pytest.raises(SecurityConfigError, match="no-such-file"):
        Tokens.load(str(tmp_path / "no-such-file"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SecurityConfigError, match="'tokens' list"):
        Tokens.load(str(tmp_path / "list.yaml"))
    with pytest.raises(SecurityConfigError, match="given twice"):
        Tokens.load(client_tokens=f"{CLIENT_TOKEN},{CLIENT_TOKEN}")
    with pytest.raises(SecurityConfigError, match="DEVICE_ID=TOKEN"):
        Tokens.load(device_tokens=DEVICE_TOKEN)
    with pytest.raises(SecurityConfigError, match="at least 16"):
        Tokens.load(device_tokens="d=short")


def test_bearer_token_and_method_roles() -> None:
    assert bearer_token([("authorization", f"Bearer {CLIENT_TOKEN}")]) == CLIENT_TOKEN
    assert bearer_token([("x-other", "1")]) is None
    with pytest.raises(Exception, match="Bearer <token>"):
        bearer_token([("authorization", "Basic dXNlcjpwYXNz")])
    assert method_role("/grpc.health.v1.Health/Check") is None
    assert method_role("/orion.v1.DeviceService/Connect") == DEVICE
    assert method_role("/orion.v1.ManagerService/ListOrions") == CLIENT
    assert method_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") == CLIENT


def test_without_tokens_nothing_is_required_but_certificates_still_bind_devices() -> None:
    open_server = Authenticator(device_certificates=True)
    assert not open_server.required
    assert open_server.authenticate("/orion.v1.ManagerService/ListOrions", [], {}) is None
    cert = {"x509_common_name": [b"build-01"]}
    assert open_server.authenticate("/orion.v1.DeviceService/Connect", [], cert) == \
        Principal(DEVICE, "build-01", "build-01")
    assert open_server.authenticate("/orion.v1.ManagerService/ListOrions", [], cert) is None


# ---------------------------------------------------------------------- configuration
def test_tokens_stay_out_of_the_config_repr_and_warnings_name_what_is_missing() -> None:
    config = ServerConfig(client_tokens=CLIENT_TOKEN, device_tokens=f"d={DEVICE_TOKEN}")
    assert CLIENT_TOKEN not in repr(config) and DEVICE_TOKEN not in repr(config)
    assert config.exposure_warnings() == []  # loopback
    (exposed,) = ServerConfig(host="0.0.0.0").exposure_warnings()
    assert "without TLS and without tokens" in exposed and "--tokens-file" in exposed
    (plain,) = ServerConfig(host="10.1.2.3", client_tokens=CLIENT_TOKEN).exposure_warnings()
    assert "without TLS:" in plain
    assert ServerConfig(host="::1").exposure_warnings() == []
    with pytest.raises(ValueError, match="go together"):
        ServerConfig(tls_cert="server.pem").validated()
    with pytest.raises(ValueError, match="needs --tls-cert"):
        ServerConfig(tls_client_ca="ca.pem").validated()


def test_channel_security_from_flags_and_environment() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--ca", "ca.pem"])
    security = ChannelSecurity.from_args(args, {"ORION_TOKEN": CLIENT_TOKEN,
                                                "ORION_CA": "other.pem"})
    assert (security.ca, security.token, security.secure) == ("ca.pem", CLIENT_TOKEN, True)
    assert CLIENT_TOKEN not in repr(security)
    device = ChannelSecurity.from_args(parser.parse_args(["--token", DEVICE_TOKEN]), {},
                                       token_env="ORION_DEVICE_TOKEN")
    assert device.token == DEVICE_TOKEN and not device.secure
    with pytest.raises(ValueError, match="--cert and --key"):
        ChannelSecurity(cert="c.pem")
    with pytest.raises(ValueError, match="--ca missing.pem"):
        ChannelSecurity(ca="missing.pem").credentials()


# ---------------------------------------------------------------------- over gRPC
def refused(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, str]:
    status = rpc_status.from_call(error)
    reason = ""
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return error.code(), reason, error.details() or ""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def guarded(make_server: MakeServer) -> OrionServer:
    return await make_server(client_tokens=CLIENT_TOKEN,
                             device_tokens=f"dev-1={DEVICE_TOKEN}")


async def list_devices(channel: grpc.aio.Channel, token: str | None) -> Any:
    stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
    return await stub.GetAvailableDevices(
        orchestrator_service_pb2.OrchestratorServiceGetAvailableDevicesRequest(),
        metadata=bearer(token) if token else None, timeout=WAIT)


async def hello(channel: grpc.aio.Channel, device_id: str, token: str | None) -> Any:
    """Open a device stream, say hello, return the first answer."""
    call = device_service_pb2_grpc.DeviceServiceStub(channel).Connect(
        metadata=bearer(token) if token else None, timeout=WAIT)
    await call.write(device_service_pb2.ConnectRequest(hello=device_service_pb2.DeviceHello(
        device_id=device_id, capacity=1)))
    try:
        return await call.read()
    finally:
        call.cancel()


@pytest.mark.parametrize(("token", "code", "reason", "hint"), [
    (None, grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS", "needs client credentials"),
    ("not-a-known-token-xyz", grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN",
     "not valid on this server"),
    (DEVICE_TOKEN, grpc.StatusCode.PERMISSION_DENIED, "WRONG_ROLE",
     "device credentials (dev-1) cannot call"),
])
async def test_client_rpcs_need_a_client_token(guarded: OrionServer, token: str | None,
                                               code: grpc.StatusCode, reason: str,
                                               hint: str) -> None:
    async with grpc.aio.insecure_channel(guarded.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await list_devices(channel, token)
        got = refused(info.value)
        assert got[:2] == (code, reason) and hint in got[2]
        assert token is None or token not in got[2]
        assert await list_devices(channel, CLIENT_TOKEN) is not None


@pytest.mark.parametrize(("device_id", "token", "code", "reason", "hint"), [
    ("dev-1", None, grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS",
     "ORION_DEVICE_TOKEN"),
    ("dev-1", CLIENT_TOKEN, grpc.StatusCode.PERMISSION_DENIED, "WRONG_ROLE",
     "client credentials (client-token-1) cannot call orion.v1.DeviceService/Connect"),
    ("dev-2", DEVICE_TOKEN, grpc.StatusCode.PERMISSION_DENIED, "DEVICE_ID_MISMATCH",
     "name device dev-1; they cannot connect as device dev-2"),
])
async def test_device_streams_need_the_token_of_that_device(
        guarded: OrionServer, device_id: str, token: str | None, code: grpc.StatusCode,
        reason: str, hint: str) -> None:
    async with grpc.aio.insecure_channel(guarded.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await hello(channel, device_id, token)
        got = refused(info.value)
        assert got[:2] == (code, reason) and hint in got[2], got
        welcome = await hello(channel, "dev-1", DEVICE_TOKEN)
        assert welcome.WhichOneof("message") == "welcome"
    assert "dev-2" not in guarded.engine.devices.get_all_devices()


async def test_health_is_open_and_reflection_is_for_clients(guarded: OrionServer) -> None:
    async with grpc.aio.insecure_channel(guarded.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in reflection.ServerReflectionInfo(iter([request]), timeout=WAIT):
                pass
        assert refused(info.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED,
                                           "MISSING_CREDENTIALS")
        answers = [a async for a in reflection.ServerReflectionInfo(
            iter([request]), metadata=bearer(CLIENT_TOKEN), timeout=WAIT)]
        assert "orion.v1.DeviceService" in {s.name for s in
                                            answers[0].list_services_response.service}


async def test_a_malformed_authorization_header_is_refused(guarded: OrionServer) -> None:
    async with grpc.aio.insecure_channel(guarded.target) as channel:
        stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetAvailableDevices(
                orchestrator_service_pb2.OrchestratorServiceGetAvailableDevicesRequest(),
                metadata=(("authorization", CLIENT_TOKEN),), timeout=WAIT)
    assert refused(info.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


async def test_the_client_and_the_daemon_carry_their_tokens(guarded: OrionServer) -> None:
    agent = DeviceAgent(guarded.target, "dev-1", "linux", token=DEVICE_TOKEN,
                        backoff_initial=0.05)
    agent.start()
    try:
        await agent.wait_connected(WAIT)
        orion = TaskOrion(orion_id="with-tokens")
        orion.add_task(TaskStar("a", description="echo", target_device_id="dev-1"))
        async with OrionClient(guarded.target, timeout=WAIT, token=CLIENT_TOKEN) as client:
            assert (await client.orchestrate_orion(orion))["status"] == "completed"
            events = [e async for e in _first(client.watch_events("with-tokens",
                                                                  include_history=True), 1)]
            assert events[0].orion_id == "with-tokens"
        async with OrionClient(guarded.target, timeout=WAIT,
                               security=ChannelSecurity()) as anonymous:
            with pytest.raises(RpcError) as info:
                await anonymous.get_available_devices()
            assert info.value.reason == "MISSING_CREDENTIALS"
    finally:
        await agent.stop(timeout=2.0)


async def _first(events: Any, count: int) -> Any:
    async for event in events:
        yield event
        count -= 1
        if count == 0:
            return


async def test_stream_slots_are_counted_per_credential(make_server: MakeServer) -> None:
    server = await make_server(client_tokens=f"{CLIENT_TOKEN},{OTHER_CLIENT_TOKEN}",
                               max_streams_per_client=1)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        first = stub.WatchEvents(event_service_pb2.WatchEventsRequest(),
                                 metadata=bearer(CLIENT_TOKEN))
        await first.wait_for_connection()
        other = stub.WatchEvents(event_service_pb2.WatchEventsRequest(),
                                 metadata=bearer(OTHER_CLIENT_TOKEN))
        await other.wait_for_connection()  # another client: a slot of its own
        again = stub.WatchEvents(event_service_pb2.WatchEventsRequest(),
                                 metadata=bearer(CLIENT_TOKEN))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(again.read(), WAIT)
        assert refused(info.value)[1] == "TOO_MANY_STREAMS"
        assert "client:client-token-1" in info.value.details()
        for call in (first, other):
            call.cancel()


def test_the_demo_fleet_ignores_the_callers_tls_and_token_settings(monkeypatch: Any) -> None:
    """`orion demo` runs its own plaintext loopback fleet: a shell set up for a real
    server (ORION_CA, ORION_TOKEN, ORION_TOKENS_FILE …) must not leak into it."""
    from orion_grpc.demo import _plain_env
    from orion_grpc.transport import SECURITY_ENV

    for name in SECURITY_ENV:
        monkeypatch.setenv(name, "set-for-a-real-server")
    monkeypatch.setenv("ORION_LOG_LEVEL", "DEBUG")
    env = _plain_env()
    assert not SECURITY_ENV & set(env) and env["ORION_LOG_LEVEL"] == "DEBUG"
    names = {f.name for f in dataclasses.fields(ServerConfig)}
    server_security = {ServerConfig.env_name(n) for n in names
                       if n.startswith(("tls_", "tokens_")) or n.endswith("_tokens")}
    assert server_security <= SECURITY_ENV  # a new server setting must be listed too
