"""TLS, mutual TLS and tokens between real processes: ``orion serve`` with certificates made
at test time, ``orion device`` daemons and the ``orion`` CLI as processes, and this test as a
client over real gRPC.

Tokens reach the processes through the environment (ORION_CLIENT_TOKENS,
ORION_DEVICE_TOKENS, ORION_DEVICE_TOKEN, ORION_TOKEN), as the docs recommend."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from e2e_support import ROOT, Daemon, ServerChild, child_env, run_cli_async
from guard_support import Pki, decode

from orion_grpc.client import OrionClient
from orion_grpc.client.client import RpcError
from orion_grpc.core import TaskOrion, TaskStar, UnavailableError
from orion_grpc.gen.orion.v1 import (
    device_service_pb2,
    device_service_pb2_grpc,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
)
from orion_grpc.transport import ChannelSecurity

CLIENT_TOKEN = "client-token-for-tests-0001"
DEVICE_TOKEN = "device-token-for-dev-1-0001"
WAIT = 20.0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def one_star(orion_id: str, device_id: str) -> TaskOrion:
    orion = TaskOrion(orion_id=orion_id)
    orion.add_task(TaskStar("hello", description="say hello", target_device_id=device_id))
    return orion


async def hello_over(channel: grpc.aio.Channel, device_id: str, token: str | None) -> object:
    call = device_service_pb2_grpc.DeviceServiceStub(channel).Connect(
        metadata=(("authorization", f"Bearer {token}"),) if token else None, timeout=WAIT)
    await call.write(device_service_pb2.ConnectRequest(hello=device_service_pb2.DeviceHello(
        device_id=device_id, capacity=1)))
    try:
        return await call.read()
    finally:
        call.cancel()


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[ServerChild]:
    cert, key = pki.issue("server", "orion-server", server=True)
    tokens = pki.directory / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - token: {CLIENT_TOKEN}\n    role: client\n    name: ci\n")
    server = await ServerChild.start(
        "--tls-cert", cert, "--tls-key", key, "--tokens-file", str(tokens),
        env={"ORION_DEVICE_TOKENS": f"dev-1={DEVICE_TOKEN}"})
    yield server
    await server.close()


async def test_tls_and_tokens_between_processes(pki: Pki, tls_server: ServerChild) -> None:
    target = tls_server.target
    client_security = ChannelSecurity(ca=pki.ca, token=CLIENT_TOKEN)
    daemon = await Daemon.start(target, "dev-1", "--ca", pki.ca,
                                env={"ORION_DEVICE_TOKEN": DEVICE_TOKEN})
    impostor = await Daemon.start(target, "dev-2", "--ca", pki.ca,
                                  env={"ORION_DEVICE_TOKEN": DEVICE_TOKEN})
    try:
        # A daemon with its device token completes a star.
        await daemon.connected()
        async with OrionClient(target, timeout=WAIT, security=client_security) as client:
            result = await client.orchestrate_orion(one_star("over-tls", "dev-1"))
            assert result["status"] == "completed", result
            assert result["results"]["hello"]

        # A daemon whose token names another device is refused for good (exit 3).
        assert await impostor.exit_code() == 3
        assert "cannot connect as device dev-2" in impostor.stderr(), impostor.stderr()

        credentials = grpc.ssl_channel_credentials(Path(pki.ca).read_bytes())
        async with grpc.aio.secure_channel(target, credentials) as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            request = orchestrator_service_pb2.OrchestratorServiceGetAvailableDevicesRequest()
            # No token: UNAUTHENTICATED.
            with pytest.raises(grpc.aio.AioRpcError) as none:
                await stub.GetAvailableDevices(request, timeout=WAIT)
            assert (none.value.code(), decode(none.value).reason) == \
                (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")
            # A device token on a client RPC: PERMISSION_DENIED.
            with pytest.raises(grpc.aio.AioRpcError) as device_on_client:
                await stub.GetAvailableDevices(request, timeout=WAIT, metadata=(
                    ("authorization", f"Bearer {DEVICE_TOKEN}"),))
            assert (device_on_client.value.code(), decode(device_on_client.value).reason) == \
                (grpc.StatusCode.PERMISSION_DENIED, "WRONG_ROLE")
            # A client token on the DeviceService: PERMISSION_DENIED.
            with pytest.raises(grpc.aio.AioRpcError) as client_as_device:
                await hello_over(channel, "dev-9", CLIENT_TOKEN)
            assert (client_as_device.value.code(), decode(client_as_device.value).reason) == \
                (grpc.StatusCode.PERMISSION_DENIED, "WRONG_ROLE")
            # No token on the DeviceService: UNAUTHENTICATED.
            with pytest.raises(grpc.aio.AioRpcError) as anonymous_device:
                await hello_over(channel, "dev-9", None)
            assert anonymous_device.value.code() is grpc.StatusCode.UNAUTHENTICATED

        # Plaintext against a TLS server does not get through at all.
        async with OrionClient(target, timeout=5, security=ChannelSecurity(
                token=CLIENT_TOKEN)) as plaintext:
            with pytest.raises(UnavailableError):
                await plaintext.get_available_devices()
    finally:
        await impostor.close()
        await daemon.close()


async def test_the_cli_uses_tls_and_its_token(pki: Pki, tls_server: ServerChild) -> None:
    target = tls_server.target
    without = await run_cli_async("devices", "--server", target, "--ca", pki.ca, "--json")
    assert without.returncode == 2
    assert "UNAUTHENTICATED" in without.stderr and "--token" in without.stderr
    ok = await run_cli_async("devices", "--server", target, "--ca", pki.ca, "--json",
                             "--token", CLIENT_TOKEN)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []
    missing_ca = await run_cli_async("devices", "--server", target, "--ca", "no-such.pem")
    assert missing_ca.returncode == 2 and "--ca no-such.pem" in missing_ca.stderr


async def test_mutual_tls_identifies_devices_by_their_certificate(pki: Pki) -> None:
    cert, key = pki.issue("server", "orion-server", server=True)
    device_cert, device_key = pki.issue("cert-dev", "cert-dev")
    client_cert, client_key = pki.issue("client", "ci")
    server = await ServerChild.start("--tls-cert", cert, "--tls-key", key,
                                     "--tls-client-ca", pki.ca,
                                     env={"ORION_CLIENT_TOKENS": CLIENT_TOKEN})
    daemon = await Daemon.start(server.target, "cert-dev", "--ca", pki.ca,
                                "--cert", device_cert, "--key", device_key)
    thief = await Daemon.start(server.target, "someone-else", "--ca", pki.ca,
                               "--cert", device_cert, "--key", device_key)
    try:
        await daemon.connected()  # no token: the certificate names the device
        security = ChannelSecurity(ca=pki.ca, cert=client_cert, key=client_key,
                                   token=CLIENT_TOKEN)
        async with OrionClient(server.target, timeout=WAIT, security=security) as client:
            result = await client.orchestrate_orion(one_star("over-mtls", "cert-dev"))
            assert result["status"] == "completed", result
        # The certificate of cert-dev cannot act as another device.
        assert await thief.exit_code() == 3
        assert "cannot connect as device someone-else" in thief.stderr(), thief.stderr()
        # A device certificate is no client credential.
        device_only = ChannelSecurity(ca=pki.ca, cert=device_cert, key=device_key)
        async with OrionClient(server.target, timeout=WAIT, security=device_only) as client:
            with pytest.raises(RpcError) as wrong_role:
                await client.get_available_devices()
            assert wrong_role.value.reason == "WRONG_ROLE"
        # Without a client certificate the TLS handshake fails.
        no_cert = ChannelSecurity(ca=pki.ca, token=CLIENT_TOKEN)
        async with OrionClient(server.target, timeout=5, security=no_cert) as client:
            with pytest.raises(UnavailableError):
                await client.get_available_devices()
    finally:
        await thief.close()
        await daemon.close()
        await server.close()


async def test_listening_beyond_loopback_without_protection_is_loud() -> None:
    server = await ServerChild.start("--host", "0.0.0.0", "--store", ":memory:")
    try:
        line = await server.wait_for_line("WARNING: listening on 0.0.0.0:", "stderr")
        assert "without TLS and without tokens" in line
    finally:
        await server.close()
    quiet = await ServerChild.start("--store", ":memory:")  # loopback: nothing to warn about
    try:
        assert "WARNING: listening" not in quiet.stderr()
    finally:
        await quiet.close()


async def test_a_bad_security_setup_stops_the_server_with_a_message(pki: Pki) -> None:
    cert, _ = pki.issue("server", "orion-server", server=True)
    for args, message in [
        (("--tls-cert", cert), "--tls-cert and --tls-key go together"),
        (("--tls-cert", cert, "--tls-key", "missing.key"), "--tls-key missing.key"),
        (("--client-tokens", "short"), "at least 16 characters"),
    ]:
        result = await run_cli_async("serve", "--port", "0", "--store", ":memory:", *args)
        assert result.returncode == 2, result
        assert message in result.stderr, result.stderr


async def test_the_container_health_check_speaks_tls(pki: Pki, tls_server: ServerChild) -> None:
    """`python -m orion_grpc.healthcheck` (the image's HEALTHCHECK) needs no token, and
    connects with TLS when ORION_CA says so."""
    port = tls_server.target.rsplit(":", 1)[1]

    async def health(**env: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orion_grpc.healthcheck", cwd=ROOT,
            env=child_env(ORION_PORT=port, **env), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), WAIT)

    assert await health(ORION_CA=pki.ca) == 0
    assert await health() == 1  # plaintext against a TLS server
