"""What fault tests need beyond tests/e2e/e2e_support.py: the network-breaking proxy as a
process, and the event-stream checks every fault test ends with."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from e2e_support import Child, EventFeed, Fleet, ServerChild

from orion_grpc.core import TaskOrion, TaskStar, TaskStarLine

HERE = Path(__file__).resolve().parent

# Daemon flags: run stars with fault_executors.work (needs env=e2e_support.PLUGINS).
WORK = ("--plugin", "work=fault_executors:work", "--executor", "work")


def chain(orion_id: str, *stars: str, seconds: float, **kw: Any) -> TaskOrion:
    """Stars that each work ``seconds``, one after the other (``kw`` applies to every star)."""
    orion = TaskOrion(orion_id=orion_id)
    for star in stars:
        orion.add_task(TaskStar(star, description=f"work {seconds}s",
                                task_data={"seconds": seconds}, **kw))
    for before, after in itertools.pairwise(stars):
        orion.add_dependency(TaskStarLine(before, after))
    return orion


class Proxy(Child):
    """``net_proxy.py`` in its own process: ``await proxy.command("cut")`` and the like."""

    target = ""

    @classmethod
    async def start(cls, upstream: str) -> Proxy:
        proxy = cls(await cls._spawn([sys.executable, str(HERE / "net_proxy.py"), upstream],
                                     stdin=asyncio.subprocess.PIPE), "net_proxy")
        line = await proxy.wait_for_line("proxy: listening on ", "stdout")
        proxy.target = line.rsplit(" ", 1)[1]
        return proxy

    async def command(self, cmd: str) -> str:
        """Send ``cmd`` (blackhole, cut, reset, restore); returns its acknowledgement."""
        assert self.proc.stdin is not None
        since = self.mark("stdout")
        self.proc.stdin.write(f"{cmd}\n".encode())
        await self.proc.stdin.drain()
        return await self.wait_for_line(f"proxy: {cmd} done", "stdout", since=since)

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        await super().close()


def completions(feed: EventFeed, orion_id: str) -> Counter[str]:
    """How many TASK_COMPLETED events each star of ``orion_id`` got."""
    return Counter(e.task_id for e in feed.of("TASK_COMPLETED", orion_id=orion_id))


def assert_each_star_completed_once(feed: EventFeed, orion_id: str, star_ids: Any) -> None:
    counts = completions(feed, orion_id)
    assert counts == Counter({star: 1 for star in star_ids}), counts


class FaultFleet(Fleet):
    """A Fleet whose server is a ``ServerChild``, with proxies to put between it and
    daemons or clients; ``close()`` stops all of them."""

    def __init__(self, server: ServerChild) -> None:
        super().__init__(server)
        self.server: ServerChild = server
        self.proxies: list[Proxy] = []

    async def proxy(self) -> Proxy:
        """A new proxy in front of the server."""
        p = await Proxy.start(self.target)
        self.proxies.append(p)
        return p

    async def close(self) -> None:
        await super().close()
        await asyncio.gather(*(p.close() for p in self.proxies))
        await self.server.close()


@contextlib.asynccontextmanager
async def running_fleet(*server_flags: str) -> AsyncIterator[FaultFleet]:
    """An ``orion serve`` process started with ``server_flags``, as a FaultFleet."""
    fleet = FaultFleet(await ServerChild.start(*server_flags))
    try:
        yield fleet
    finally:
        await fleet.close()
