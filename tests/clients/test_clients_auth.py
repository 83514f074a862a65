"""The TypeScript device daemon, the Go client and the TypeScript one against a server with
TLS and tokens (and one with mutual TLS): real processes, certificates made at test time
(tests/faults' ``Pki``), tokens passed the way the docs say (``ORION_DEVICE_TOKEN`` for the
daemon, ``-token`` / ``ORION_TOKEN`` for the clients). Without its token the Go client is
refused, UNAUTHENTICATED.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from clients_support import Child, TsDaemon
from e2e_support import ServerChild

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from guard_support import Pki  # tests/faults is not a package

pytestmark = [pytest.mark.timeout(300),  # includes the session's first builds
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

CLIENT_TOKEN = "client-token-for-go-tests-01"
DEVICE_TOKEN = "device-token-for-ts-1-tests"
WAIT = 30.0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
async def children() -> AsyncIterator[list[Child]]:
    """Every process a test starts, closed at its end whatever happened."""
    started: list[Child] = []
    yield started
    for child in reversed(started):
        await child.close()


def one_star_file(tmp_path: Path, orion_id: str, device_id: str) -> str:
    path = tmp_path / f"{orion_id}.json"
    path.write_text(json.dumps({"orionId": orion_id, "tasks": [
        {"taskId": "hello", "description": "say hello", "targetDeviceId": device_id,
         "taskData": {"executor": "echo"}}]}))
    return str(path)


async def go_run(children: list[Child], go_submit: Path, *args: str) -> Child:
    child = Child(await Child._spawn([str(go_submit), *args]), "orion-submit")
    children.append(child)
    return child


async def test_ts_device_and_go_client_with_tls_and_tokens(
        pki: Pki, children: list[Child], ts_dist: Path, go_submit: Path, tmp_path: Path):
    cert, key = pki.issue("server", "orion-server", server=True)
    server = await ServerChild.start(
        "--tls-cert", cert, "--tls-key", key,
        env={"ORION_CLIENT_TOKENS": CLIENT_TOKEN, "ORION_DEVICE_TOKENS": f"ts-1={DEVICE_TOKEN}"})
    children.append(server)
    ts = await TsDaemon.start(ts_dist, server.target, "ts-1", "--ca", pki.ca,
                              env={"ORION_DEVICE_TOKEN": DEVICE_TOKEN})
    children.append(ts)
    await ts.connected(WAIT)
    path = one_star_file(tmp_path, "over_tls", "ts-1")

    go = await go_run(children, go_submit, "-server", server.target, "-ca", pki.ca,
                      "-token", CLIENT_TOKEN, path)
    assert await go.exit_code(WAIT) == 0, go.stdout() + go.stderr()
    assert "orion over_tls COMPLETED: 1 stars" in go.stdout()
    result = next(line for line in go.stdout().splitlines() if line.startswith("result hello "))
    assert json.loads(result.split(" ", 2)[2])["device_id"] == "ts-1"

    # The OrionClient wrapper (submit.js), its client token from ORION_TOKEN.
    ts_submit = Child(await Child._spawn(
        ["node", str(ts_dist / "bin" / "submit.js"), "--server", server.target, "--ca", pki.ca,
         one_star_file(tmp_path, "from_ts", "ts-1")], {"ORION_TOKEN": CLIENT_TOKEN}), "submit.js")
    children.append(ts_submit)
    assert await ts_submit.exit_code(WAIT) == 0, ts_submit.stdout() + ts_submit.stderr()
    assert "orion from_ts COMPLETED: 1 stars" in ts_submit.stdout()

    # Without a token: refused before anything is accepted, exit 2, the status named.
    go = await go_run(children, go_submit, "-server", server.target, "-ca", pki.ca,
                      one_star_file(tmp_path, "no_token", "ts-1"))
    assert await go.exit_code(WAIT) == 2
    assert "SubmitOrion: rpc error: code = Unauthenticated" in go.stderr()
    # A client token is not a device token: the TS daemon with it stops (exit 3).
    wrong = await TsDaemon.start(ts_dist, server.target, "ts-2", "--ca", pki.ca,
                                 "--token", CLIENT_TOKEN)
    children.append(wrong)
    assert await wrong.exit_code(WAIT) == 3
    assert "permission" in wrong.stderr().lower(), wrong.stderr()
    # The client's CA must have signed the server's certificate: a plaintext dial fails.
    go = await go_run(children, go_submit, "-server", server.target, "-token", CLIENT_TOKEN,
                      "-timeout", "5s", one_star_file(tmp_path, "plaintext", "ts-1"))
    assert await go.exit_code(WAIT) == 2


async def test_ts_device_and_go_client_with_mutual_tls(
        pki: Pki, children: list[Child], ts_dist: Path, go_submit: Path, tmp_path: Path):
    cert, key = pki.issue("server", "orion-server", server=True)
    device_cert, device_key = pki.issue("ts-1", "ts-1")
    client_cert, client_key = pki.issue("ci", "ci")
    server = await ServerChild.start("--tls-cert", cert, "--tls-key", key,
                                     "--tls-client-ca", pki.ca)
    children.append(server)
    # The certificate names the device: no token needed.
    ts = await TsDaemon.start(ts_dist, server.target, "ts-1", "--ca", pki.ca,
                              "--cert", device_cert, "--key", device_key)
    children.append(ts)
    await ts.connected(WAIT)
    go = await go_run(children, go_submit, "-server", server.target, "-ca", pki.ca,
                      "-cert", client_cert, "-key", client_key,
                      one_star_file(tmp_path, "over_mtls", "ts-1"))
    assert await go.exit_code(WAIT) == 0, go.stdout() + go.stderr()
    assert "orion over_mtls COMPLETED: 1 stars" in go.stdout()
