"""`orion serve` exits 0 however many times it is told to stop."""

from __future__ import annotations

import signal
import subprocess
import sys


def test_repeated_sigterm_during_shutdown_still_exits_cleanly() -> None:
    server = subprocess.Popen([sys.executable, "-m", "orion_grpc.cli", "serve", "--port", "0",
                               "--store", ":memory:"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("listening on ")
        server.send_signal(signal.SIGTERM)
        assert server.stdout.readline().strip() == "server stopped"
        try:  # shutdown is past the asyncio handlers; a repeat must not kill it
            server.send_signal(signal.SIGTERM)
            server.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
