"""TracerHooks: what the orchestrator tells a tracer, and what it sends with each lease."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from conftest import fleet

from orion_grpc.core import (
    Lease,
    LeaseOutcome,
    OrionState,
    TaskOrion,
    TaskOrionOrchestrator,
    TaskStar,
    TaskStarLine,
    TracerHooks,
)

RUN_TIMEOUT = 10.0


class Recording:
    """TracerHooks that record every call; each dispatch hands out a numbered context."""

    def __init__(self, fail_in: str | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_in = fail_in
        self.dispatched = asyncio.Event()

    def _maybe_fail(self, name: str) -> None:
        if name == self.fail_in:
            raise RuntimeError(f"{name} is broken")

    def on_orion_start(self, orion: TaskOrion) -> None:
        self.calls.append(("start", orion.orion_id))
        self._maybe_fail("start")

    def on_dispatch(self, orion: TaskOrion, task: TaskStar, attempt: int) -> dict[str, str]:
        self.calls.append(("dispatch", task.task_id, attempt, task.target_device_id))
        self.dispatched.set()
        self._maybe_fail("dispatch")
        return {"traceparent": f"ctx-{task.task_id}-{attempt}"}

    def on_attempt_end(self, orion: TaskOrion, task: TaskStar, lease: Lease,
                       outcome: LeaseOutcome) -> None:
        self.calls.append(("end", task.task_id, lease.attempt, outcome.success, outcome.reason))
        self._maybe_fail("end")

    def on_orion_end(self, orion: TaskOrion, state: OrionState) -> None:
        self.calls.append(("orion_end", state))
        self._maybe_fail("orion_end")


def chain(*ids: str, **kw: Any) -> TaskOrion:
    orion = TaskOrion(name="chain")
    for task_id in ids:
        orion.add_task(TaskStar(task_id, description=f"do {task_id}", target_device_id="d1", **kw))
    for a, b in itertools.pairwise(ids):
        orion.add_dependency(TaskStarLine(a, b))
    return orion


async def run(orch: TaskOrionOrchestrator, orion: TaskOrion) -> dict[str, Any]:
    return await asyncio.wait_for(orch.orchestrate_orion(orion), RUN_TIMEOUT)


def test_recording_satisfies_the_protocol() -> None:
    hooks: TracerHooks = Recording()  # mypy checks the shape; at run time it is duck typed
    assert hooks is not None


async def test_without_hooks_leases_carry_no_trace_context(orchestrator, dm) -> None:
    seen: list[dict[str, str]] = []
    await fleet(dm, "d1", handler=lambda lease: seen.append(dict(lease.trace_context)))
    assert orchestrator.tracer_hooks is None
    assert (await run(orchestrator, chain("a", "b")))["status"] == "completed"
    assert seen == [{}, {}]


async def test_hooks_see_the_run_and_their_context_travels_with_each_lease(orchestrator, dm):
    contexts: dict[str, dict[str, str]] = {}
    await fleet(dm, "d1", handler=lambda lease: contexts.setdefault(
        f"{lease.task_id}/{lease.attempt}", dict(lease.trace_context)),
        fail_attempts={"b": 1})
    hooks = Recording()
    orchestrator.set_tracer_hooks(hooks)
    orion = chain("a", "b", retry_count=1)

    assert (await run(orchestrator, orion))["status"] == "completed"
    assert hooks.calls == [
        ("start", orion.orion_id),
        ("dispatch", "a", 0, "d1"), ("end", "a", 0, True, None),
        ("dispatch", "b", 0, "d1"), ("end", "b", 0, False, "task_error"),
        ("dispatch", "b", 1, "d1"), ("end", "b", 1, True, None),
        ("orion_end", OrionState.COMPLETED),
    ]
    assert contexts == {"a/0": {"traceparent": "ctx-a-0"}, "b/1": {"traceparent": "ctx-b-1"}}


async def test_cancelling_an_orion_ends_its_running_attempts_before_the_orion(orchestrator, dm):
    await fleet(dm, "d1", hang_task_ids={"a"})
    hooks = Recording()
    orchestrator.set_tracer_hooks(hooks)
    orion = chain("a", "b")
    running = asyncio.create_task(run(orchestrator, orion))
    await asyncio.wait_for(hooks.dispatched.wait(), RUN_TIMEOUT)  # "a" is out, and hangs

    assert await orchestrator.cancel_orion(orion.orion_id, "stop it")
    assert (await running)["status"] == "cancelled"
    assert hooks.calls[-2:] == [("end", "a", 0, False, "cancelled"),
                                ("orion_end", OrionState.CANCELLED)]


async def test_a_failing_tracer_is_logged_and_never_breaks_the_run(orchestrator, dm, caplog):
    await fleet(dm, "d1")
    for broken in ("start", "dispatch", "end", "orion_end"):
        hooks = Recording(fail_in=broken)
        orchestrator.set_tracer_hooks(hooks)
        with caplog.at_level(logging.ERROR, logger="orion_grpc.core.orchestrator"):
            assert (await run(orchestrator, chain("a", "b")))["status"] == "completed"
        assert f"{broken} is broken" in caplog.text
        assert hooks.calls[-1] == ("orion_end", OrionState.COMPLETED)
        caplog.clear()
