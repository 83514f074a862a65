"""Run ``orion serve``, device daemons and other ``orion`` commands as real processes for e2e
tests."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def orion_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orion_grpc.cli", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), **extra)
    return env


def store_args(args: tuple[str, ...]) -> tuple[str, ...]:
    """``orion serve`` keeps its state in ./orion-data by default: a test server keeps
    nothing (``--store :memory:``) unless the test passes a ``--store`` of its own."""
    if any(a == "--store" or a.startswith("--store=") for a in args):
        return ()
    return ("--store", ":memory:")


class ServerProcess:
    """``orion serve --port 0 …`` in a subprocess; ready once it prints its first line."""

    def __init__(self, *args: str, ready_timeout: float = 20.0) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            orion_command("serve", "--port", "0", "--log-level", "WARNING", *store_args(args),
                          *args),
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


# ---------------------------------------------------------------------- device daemons
WAIT = 15.0  # upper bound of any single wait (never reached when things work)


class Child:
    """A process whose stdout and stderr are read as they come and kept: ``wait_for_line``
    waits for a line to appear (no polling); ``stdout()`` / ``stderr()`` so far."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._waiters: list[tuple[str, str, asyncio.Future[str]]] = []
        self._readers = [asyncio.create_task(self._read(stream_name, stream))
                         for stream_name, stream in (("stdout", proc.stdout),
                                                     ("stderr", proc.stderr))]

    @staticmethod
    async def _spawn(argv: list[str], env: dict[str, str] | None = None, *,
                     stdin: int = asyncio.subprocess.DEVNULL) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT, env={**child_env(), **(env or {})})

    @classmethod
    async def cli(cls, *args: str) -> Child:
        """``orion ARGS``, running alongside the test."""
        return Child(await cls._spawn(orion_command(*args)), f"orion {args[0]}")

    async def _read(self, name: str, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines[name].append(line)
            for waiter in list(self._waiters):
                if waiter[0] == name and waiter[1] in line and not waiter[2].done():
                    waiter[2].set_result(line)

    def mark(self, stream: str = "stderr") -> int:
        """How many lines ``stream`` has so far: ``wait_for_line(..., since=mark)`` then
        waits for a line printed after this point."""
        return len(self.lines[stream])

    async def wait_for_line(self, text: str, stream: str = "stderr",
                            timeout: float = WAIT, *, since: int = 0) -> str:
        """The first line of ``stream`` containing ``text`` (seen already, or to come),
        ignoring the first ``since`` lines."""
        for line in self.lines[stream][since:]:
            if text in line:
                return line
        waiter = (stream, text, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter[2], timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {stream} line with {text!r} within "
                                 f"{timeout:g}s; stdout:\n{self.stdout()}\nstderr:\n"
                                 f"{self.stderr()}") from None
        finally:
            self._waiters.remove(waiter)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    async def terminate(self) -> int:
        """SIGTERM and the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return await self.exit_code()

    async def exit_code(self, timeout: float = WAIT) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._readers)  # every line read
        return code

    def stdout(self) -> str:
        return "\n".join(self.lines["stdout"])

    def stderr(self) -> str:
        return "\n".join(self.lines["stderr"])

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.kill()
        await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


class ServerChild(Child):
    """``orion serve --port 0 …`` as a ``Child`` (its log lines readable as they come);
    ``await ServerChild.start(...)`` returns once it listens."""

    target = ""

    @classmethod
    async def start(cls, *args: str, log_level: str = "WARNING",
                    env: dict[str, str] | None = None) -> ServerChild:
        server = cls(await cls._spawn(orion_command("serve", "--port", "0", "--log-level",
                                                    log_level, *store_args(args), *args), env),
                     "orion serve")
        try:
            line = await server.wait_for_line("listening on ", "stdout", timeout=30)
        except AssertionError:
            await server.close()
            raise
        server.target = "127.0.0.1:" + line.rsplit(":", 1)[1].strip()
        return server


class Daemon(Child):
    """One device daemon, ``python -m orion_grpc.device``, in its own process (``module``
    runs another entry point with the same arguments, e.g. a wrapper that skews its clock)."""

    def __init__(self, proc: asyncio.subprocess.Process, device_id: str) -> None:
        super().__init__(proc, f"device {device_id}")
        self.device_id = device_id

    @classmethod
    async def start(cls, target: str, device_id: str, *args: str,
                    env: dict[str, str] | None = None,
                    module: str = "orion_grpc.device") -> Daemon:
        return cls(await cls._spawn([sys.executable, "-m", module, "--server",
                                     target, "--id", device_id, *args], env), device_id)

    async def connected(self, timeout: float = WAIT, *, since: int = 0) -> str:
        """Its ``device ID connected to …`` line (the first session, or the first one after
        stdout line ``since``)."""
        return await self.wait_for_line(f"device {self.device_id} connected", "stdout", timeout,
                                        since=since)


async def run_cli_async(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``run_cli`` without blocking the event loop (for commands that run alongside a test)."""
    proc = await asyncio.create_subprocess_exec(
        *orion_command(*args), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=child_env())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"orion {' '.join(args)} did not finish within {timeout:g}s:\n"
                             f"{out.decode()}\n{err.decode()}") from None
    return subprocess.CompletedProcess(list(args), proc.returncode or 0,
                                       out.decode(errors="replace"), err.decode(errors="replace"))


# ---------------------------------------------------------------------- a fleet
# Devices heartbeat every 0.2 s and are lost after 1.5 s of silence; retries start at once.
SERVER_FLAGS = ("--heartbeat-interval", "0.2", "--lease-ttl", "1.5", "--retry-backoff-base",
                "0", "--device-grace-period", "0", "--grace", "2")
# PYTHONPATH for daemons that load executors from the test directories (--plugin).
PLUGINS = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "e2e"),
                                          str(ROOT / "tests" / "faults")])}


class Fleet:
    """Device daemons (processes) around one server (anything with a ``target``)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.target: str = server.target
        self.daemons: list[Daemon] = []

    async def daemon(self, device_id: str, *args: str, device_type: str = "linux",
                     capabilities: str = "", env: dict[str, str] | None = None,
                     target: str | None = None, module: str = "orion_grpc.device",
                     wait: bool = True) -> Daemon:
        """Start a daemon (through ``target`` if given, e.g. a proxy) and wait until it is
        connected."""
        daemon = await Daemon.start(target or self.target, device_id, "--type", device_type,
                                    "--capabilities", capabilities, "--backoff-max", "0.2",
                                    *args, env=env, module=module)
        self.daemons.append(daemon)
        if wait:
            await daemon.connected()
        return daemon

    def client(self, target: str | None = None) -> Any:
        from orion_grpc.client import OrionClient

        return OrionClient(target or self.target, timeout=10, run_timeout=30)

    async def cli(self, *args: str) -> Child:
        return await Child.cli(*args, "--server", self.target)

    async def close(self) -> None:
        await asyncio.gather(*(d.close() for d in self.daemons))


# ---------------------------------------------------------------------- a server's events
class EventFeed:
    """A server's event feed (WatchEvents from the oldest retained event), read in the
    background. ``await feed.wait_for("TASK_RETRYING", task_id="job")`` returns the first
    matching event, seen already or to come; fields are Event attributes (``task_id``,
    ``device_id``, ``orion_id``) or keys of ``Event.data``."""

    def __init__(self, client: Any, **watch: Any) -> None:
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self._waiters: list[tuple[Callable[[Any], bool], asyncio.Future[Any]]] = []
        self._task = asyncio.create_task(self._run(client, watch))

    async def _run(self, client: Any, watch: dict[str, Any]) -> None:
        try:
            async for event in client.watch_events(include_history=True, **watch):
                self.events.append(event)
                for predicate, fut in list(self._waiters):
                    if not fut.done() and predicate(event):
                        fut.set_result(event)
        except Exception as exc:  # the stream ended with a status: tests may expect it
            self.error = exc
            for _, fut in self._waiters:
                if not fut.done():
                    fut.set_exception(exc)

    @staticmethod
    def _matcher(kind: str, fields: dict[str, Any]) -> Callable[[Any], bool]:
        from google.protobuf import json_format

        from orion_grpc.gen.orion.v1 import event_pb2

        wanted = event_pb2.EventType.Value(f"EVENT_TYPE_{kind}")

        def match(event: Any) -> bool:
            if event.type != wanted:
                return False
            data = json_format.MessageToDict(event.data) if fields else {}
            return all((getattr(event, k) if k in ("task_id", "device_id", "orion_id")
                        else data.get(k)) == v for k, v in fields.items())
        return match

    def of(self, kind: str, **fields: Any) -> list[Any]:
        match = self._matcher(kind, fields)
        return [e for e in self.events if match(e)]

    async def wait_for(self, kind: str, timeout: float = WAIT, **fields: Any) -> Any:
        return await self.wait_for_count(kind, 1, timeout, **fields)

    async def wait_for_count(self, kind: str, count: int, timeout: float = WAIT,
                             **fields: Any) -> Any:
        """The ``count``-th matching event (seen already, or to come)."""
        match = self._matcher(kind, fields)
        found = [e for e in self.events if match(e)]
        if len(found) >= count:
            return found[count - 1]
        if self.error is not None:
            raise self.error
        missing = [count - len(found)]

        def counting(event: Any) -> bool:
            if match(event):
                missing[0] -= 1
            return missing[0] <= 0

        entry = (counting, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(entry[1], timeout)
        except TimeoutError:
            raise AssertionError(f"no {kind} event #{count} with {fields} within {timeout:g}s; "
                                 "got: " + ", ".join(f"{e.type}/{e.task_id or e.device_id}"
                                                     for e in self.events[-20:])) from None
        finally:
            self._waiters.remove(entry)

    async def ended(self, timeout: float = WAIT) -> BaseException | None:
        """Wait for the stream to end; returns the error it ended with."""
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.error

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
