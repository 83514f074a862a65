"""Device daemons as real processes (``python -m orion_grpc.device``) against a real server.

The server (an ``OrionEngine`` behind ``DeviceService``) runs in the test's event loop on a
free loopback port; the daemons are subprocesses (``e2e_support.Daemon``), killed or stopped
like in production. ``test_fleet.py`` has the server as a process too.
Waits are on engine events / sessions / process exit, with timeouts — never sleeps.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import Daemon

from orion_grpc.api.device_service import DEVICE_SERVER_OPTIONS, DeviceLinkConfig, add_device_service
from orion_grpc.core import (
    EngineConfig,
    Event,
    EventType,
    IEventObserver,
    OrionEngine,
    TaskExecutionError,
    TaskOrion,
    TaskStar,
    TaskStarLine,
)
from orion_grpc.device import DeviceAgent

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

WAIT = 15.0


class Events(IEventObserver):
    """Engine events, awaitable by type and fields."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []

    async def on_event(self, event: Event) -> None:
        self.events.append(event)
        for predicate, fut in list(self._waiters):
            if not fut.done() and predicate(event):
                fut.set_result(event)

    @staticmethod
    def _match(event: Event, event_type: EventType, fields: dict[str, Any]) -> bool:
        return event.event_type is event_type and all(
            (getattr(event, k) if hasattr(event, k) else event.data.get(k)) == v
            for k, v in fields.items())

    def of(self, event_type: EventType, **fields: Any) -> list[Event]:
        return [e for e in self.events if self._match(e, event_type, fields)]

    async def wait_for(self, event_type: EventType, **fields: Any) -> Event:
        found = self.of(event_type, **fields)
        if found:
            return found[0]
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        entry = (lambda e: self._match(e, event_type, fields), fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, WAIT)
        finally:
            self._waiters.remove(entry)


class Cluster:
    def __init__(self, engine: OrionEngine, servicer: Any, port: int, tmp: Path) -> None:
        self.engine = engine
        self.servicer = servicer
        self.target = f"127.0.0.1:{port}"
        self.tmp = tmp
        self.events = Events()
        engine.bus.subscribe(self.events)
        self.daemons: list[Daemon] = []
        self.agents: list[DeviceAgent] = []

    async def daemon(self, device_id: str, *args: str, wait: bool = True) -> Daemon:
        daemon = await Daemon.start(self.target, device_id, "--backoff-max", "0.2",
                                    "--log-level", "INFO", *args)
        self.daemons.append(daemon)
        if wait:
            await self.connected(device_id)
        return daemon

    async def connected(self, device_id: str) -> None:
        await self.servicer.wait_for_session(device_id, timeout=WAIT)

    async def close(self) -> None:
        for daemon in self.daemons:
            await daemon.close()
        await asyncio.gather(*(a.stop(timeout=0.5) for a in self.agents), return_exceptions=True)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    engine = OrionEngine(EngineConfig(retry_backoff_base=0.0, device_grace_period=0.05))
    server = grpc.aio.server(options=list(DEVICE_SERVER_OPTIONS))
    servicer = add_device_service(server, engine, DeviceLinkConfig(heartbeat_interval=0.2,
                                                                   lease_ttl=3.0))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    c = Cluster(engine, servicer, port, tmp_path)
    try:
        yield c
    finally:
        await c.close()
        await servicer.close(timeout=1.0)
        await server.stop(0)
        await engine.close()


def sleep_star(task_id: str, seconds: float, **kw: Any) -> TaskStar:
    return TaskStar(task_id, description=f"sleep {seconds}s",
                    task_data={"executor": "sleep", "seconds": seconds}, **kw)


async def test_an_orion_runs_on_daemon_processes_and_an_in_process_agent(cluster):
    await asyncio.gather(cluster.daemon("proc-a", "--capacity", "2", "--capabilities", "python"),
                         cluster.daemon("proc-b", "--capabilities", "python"))
    agent = DeviceAgent(cluster.target, "inproc", "linux", ["python"], capacity=1)
    cluster.agents.append(agent)
    agent.start()
    await agent.wait_connected(WAIT)

    orion = TaskOrion(name="mixed fleet")
    for i in range(8):
        orion.add_task(sleep_star(f"s{i}", 0.1, required_capabilities=["python"]))
    orion.add_dependency(TaskStarLine("s0", "s7"))
    result = await asyncio.wait_for(cluster.engine.orchestrator.orchestrate_orion(
        orion, assignment_strategy="load_balance"), WAIT)

    assert result["status"] == "completed", result["errors"]
    used = {r["device_id"] for r in result["results"].values()}
    assert used == {"proc-a", "proc-b", "inproc"}
    assert all(r["slept"] == 0.1 for r in result["results"].values())
    # No attempt was refused or lost: every device stayed within its capacity.
    assert not cluster.events.of(EventType.TASK_RETRYING)
    info = cluster.engine.devices.get_device_system_info("proc-a")
    assert info["cpu_count"] >= 1 and info["hostname"] and info["platform"]

    # SIGTERM drains and exits 0; the server sees the devices leave.
    assert await asyncio.gather(*(d.terminate() for d in cluster.daemons)) == [0, 0]
    await cluster.events.wait_for(EventType.DEVICE_DISCONNECTED, device_id="proc-a")
    await cluster.events.wait_for(EventType.DEVICE_DISCONNECTED, device_id="proc-b")


async def test_a_daemon_killed_mid_star_fails_the_attempt_and_another_device_finishes_it(cluster):
    victim, _ = await asyncio.gather(cluster.daemon("victim"), cluster.daemon("survivor"))
    orion = TaskOrion(name="kill")
    orion.add_task(sleep_star("job", 1.0, retry_count=2))
    run = asyncio.create_task(cluster.engine.orchestrator.orchestrate_orion(
        orion, device_assignments={"job": "victim"}))

    # Progress from the victim proves the star is executing there; then pull the plug.
    await cluster.events.wait_for(EventType.TASK_PROGRESS, task_id="job", device_id="victim")
    victim.kill()

    retry = await cluster.events.wait_for(EventType.TASK_RETRYING, task_id="job")
    assert retry.data["reason"] == "device_disconnection"
    assert retry.data["failed_device_id"] == "victim"
    result = await asyncio.wait_for(run, WAIT)
    assert result["status"] == "completed", result["errors"]
    assert result["results"]["job"]["device_id"] == "survivor"
    assert orion.get_task("job").current_retry >= 1
    assert await victim.exit_code() == -signal.SIGKILL


async def test_shell_executor_is_off_by_default_and_runs_commands_with_allow_shell(cluster):
    await asyncio.gather(cluster.daemon("plain"), cluster.daemon("shelly", "--allow-shell"))
    run = cluster.engine.orchestrator.execute_single_task

    def shell(task_id: str, device: str, command: str, **kw: Any) -> TaskStar:
        return TaskStar(task_id, description="run a command", target_device_id=device,
                        task_data={"executor": "shell", "command": command}, **kw)

    with pytest.raises(TaskExecutionError) as refused:
        await run(shell("nope", "plain", "echo should not run"))
    assert refused.value.reason == "rejected" and "--allow-shell" in str(refused.value)

    ok = await run(shell("ok", "shelly", "echo hello; echo warning >&2"))
    assert ok == {"exit_code": 0, "stdout": "hello\n", "stderr": "warning\n"}

    with pytest.raises(TaskExecutionError) as failed:
        await run(shell("bad", "shelly", "echo oops >&2; exit 3"))
    assert failed.value.reason == "task_error"
    assert "exited with code 3" in str(failed.value) and "oops" in str(failed.value)

    with pytest.raises(TaskExecutionError) as slow:
        await run(shell("slow", "shelly", "sleep 30", timeout=0.5))
    assert slow.value.reason == "timeout"


async def test_a_second_daemon_with_the_same_id_supersedes_the_first(cluster):
    first = await cluster.daemon("twin")
    old = cluster.servicer.sessions["twin"].session_id
    await cluster.daemon("twin", wait=False)
    await cluster.servicer.wait_for_session("twin", not_session=old, timeout=WAIT)

    assert await first.exit_code() == 3
    assert "another session for this device id took over" in first.stderr()
    assert cluster.engine.devices.is_online("twin")
