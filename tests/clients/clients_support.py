"""Helpers of the client tests (tests/clients): build the TypeScript and Go clients the way
their READMEs say, and run them next to a real ``orion serve`` process and Python daemons.

A missing toolchain FAILS the tests, so CI can never pass without running them;
``ORION_SKIP_CLIENT_TESTS=1`` skips them explicitly on a machine without Node or Go.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# e2e_support (processes: the server, Python daemons, a child's output) lives in tests/e2e.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import ROOT, Child, Daemon, ServerProcess

from orion_grpc.client import OrionClient

TS_DIR = ROOT / "clients" / "typescript"
GO_DIR = ROOT / "clients" / "go"
GO_DEBIAN_PATH = "/usr/share/gocode"  # Debian's Go library sources (golang-*-dev)
BUILD_TIMEOUT = 600.0

# Devices heartbeat every 0.2 s and are lost after 1.5 s of silence; retries start at once.
SERVER_FLAGS = ("--heartbeat-interval", "0.2", "--lease-ttl", "1.5", "--retry-backoff-base",
                "0", "--device-grace-period", "0", "--grace", "2")


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    message = (f"{', '.join(missing)} not found: the client tests need Node.js/npm and Go "
               "(.ci/run installs them; see clients/*/README.md)")
    if os.environ.get("ORION_SKIP_CLIENT_TESTS") == "1":
        pytest.skip(f"ORION_SKIP_CLIENT_TESTS=1: {message}")
    pytest.fail(f"{message}; set ORION_SKIP_CLIENT_TESTS=1 to skip them on purpose")


def run_build(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}) in {cwd}:\n{proc.stdout}\n"
                    f"{proc.stderr}")


def go_env() -> dict[str, str]:
    """GOPATH mode: clients/go first (the example and the generated package), then Debian's
    packaged sources (grpc, protobuf). No module proxy is needed or contacted."""
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "GOPROXY": "off",
           "GOPATH": os.pathsep.join([str(GO_DIR), GO_DEBIAN_PATH])}
    if "HOME" not in env and "GOCACHE" not in env:  # go needs a build cache directory
        env["GOCACHE"] = str(Path(tempfile.gettempdir()) / "orion-go-build")
    return env


class TsDaemon(Child):
    """The TypeScript example device daemon (``node dist/bin/device-daemon.js``) as a process."""

    def __init__(self, proc: object, device_id: str) -> None:
        super().__init__(proc, f"ts device {device_id}")  # type: ignore[arg-type]
        self.device_id = device_id

    @classmethod
    async def start(cls, dist: Path, target: str, device_id: str, *args: str,
                    env: dict[str, str] | None = None) -> TsDaemon:
        argv = ["node", str(dist / "bin" / "device-daemon.js"), "--server", target, "--id",
                device_id, "--backoff-max", "0.2", *args]
        return cls(await cls._spawn(argv, env), device_id)

    async def connected(self, timeout: float = 20.0) -> str:
        """Its ``device ID connected to …`` line (the first session)."""
        return await self.wait_for_line(f"device {self.device_id} connected", "stdout", timeout)


class Fleet:
    """A real server process plus device daemons in Python and TypeScript."""

    def __init__(self, server: ServerProcess, dist: Path | None) -> None:
        self.server = server
        self.target = server.target
        self.dist = dist
        self.children: list[Child] = []

    async def ts_device(self, device_id: str, *args: str) -> TsDaemon:
        assert self.dist is not None
        daemon = await TsDaemon.start(self.dist, self.target, device_id, *args)
        self.children.append(daemon)
        await daemon.connected()
        return daemon

    async def py_device(self, device_id: str, *args: str) -> Daemon:
        daemon = await Daemon.start(self.target, device_id, "--backoff-max", "0.2", *args)
        self.children.append(daemon)
        await daemon.connected()
        return daemon

    def client(self) -> OrionClient:
        return OrionClient(self.target, timeout=10, run_timeout=30)

    async def run(self, *argv: str) -> Child:
        """Any command (a client example), running alongside the test."""
        child = Child(await Child._spawn(list(argv)), Path(argv[1] if argv[0] == "node"
                                                           else argv[0]).name)
        self.children.append(child)
        return child
