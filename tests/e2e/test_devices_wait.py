"""``orion devices --wait N``: scripts start a server and daemons in the background, then wait
for the fleet (docs do this too) — before the server is even up, woken by device events."""

from __future__ import annotations

import socket

from e2e_support import Child, Daemon, ServerChild, ServerProcess, run_cli_async


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_waits_for_the_server_to_start_and_the_devices_to_connect() -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    waiting = await Child.cli("devices", "--wait", "2", "--server", target, "--timeout", "60")
    server = await ServerChild.start("--port", str(port))  # the port the waiter dials
    daemons: list[Daemon] = []
    try:
        for device_id in ("dev-a", "dev-b"):
            daemons.append(await Daemon.start(target, device_id))
        assert await waiting.exit_code(60) == 0, waiting.stderr()
        assert "dev-a" in waiting.stdout() and "dev-b" in waiting.stdout()
    finally:
        for child in (*daemons, waiting, server):
            await child.close()


async def test_gives_up_after_the_timeout_and_says_why() -> None:
    server = ServerProcess("--fake-devices", "1")
    try:
        done = await run_cli_async("devices", "--wait", "2", "--timeout", "1", "--server",
                                   server.target)
    finally:
        server.kill()
    assert done.returncode == 2
    assert f"fewer than 2 devices connected to {server.target} within 1s" in done.stderr
