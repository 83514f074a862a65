"""Run ``orion serve`` (and other ``orion`` commands) as real processes for e2e tests."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def orion_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orion_grpc.cli", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), **extra)
    return env


class ServerProcess:
    """``orion serve --port 0 …`` in a subprocess; ready once it prints its first line."""

    def __init__(self, *args: str, ready_timeout: float = 20.0) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            orion_command("serve", "--port", "0", "--log-level", "WARNING", *args),
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT, env=child_env())
        line = self._readline(ready_timeout)
        if not line.startswith("listening on "):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.stderr()}")
        self.address = line.removeprefix("listening on ").strip()
        self.port = int(self.address.rsplit(":", 1)[1])
        self.target = f"127.0.0.1:{self.port}"

    def _readline(self, timeout: float) -> str:
        """One line of stdout, waiting at most ``timeout`` seconds (no polling loop)."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return ""
        return self.proc.stdout.readline()

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> tuple[int, str]:
        """Send ``sig``; returns (exit code, the rest of stdout)."""
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)
        self.log.close()


def run_cli(*args: str, timeout: float = 30.0, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(orion_command(*args), capture_output=True, text=True, cwd=ROOT,
                          env=child_env(), timeout=timeout, input=stdin)
