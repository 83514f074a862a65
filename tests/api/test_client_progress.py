"""The progress view of ``orion watch`` / ``submit --wait`` / ``orion demo`` against a real
loopback server: plain lines off a terminal, a table redrawn in place on one."""

from __future__ import annotations

import asyncio
import io
import re

from api_support import EventWaiter, fleet

from orion_grpc.client.commands import follow_orion
from orion_grpc.core import AddDependency, AddTask, EventType, TaskOrion, TaskStar, TaskStarLine


def diamond(orion_id: str) -> TaskOrion:
    orion = TaskOrion(orion_id=orion_id, name="a diamond")
    for tid, name in [("a", "Start"), ("b", "Left"), ("c", "Right"), ("d", "Join")]:
        orion.add_task(TaskStar(tid, name=name, description=f"do {tid}", target_device_id="d1",
                                retry_count=1))
    orion.add_dependency(TaskStarLine("a", "b", "success_only"))
    orion.add_dependency(TaskStarLine("a", "c", "conditional", condition="result.n > 5"))
    orion.add_dependency(TaskStarLine("b", "d", "completion_only"))
    orion.add_dependency(TaskStarLine("c", "d", "unconditional"))
    return orion


async def test_plain_lines_then_a_summary_with_the_critical_path(server, client):
    await fleet(server, "d1", capacity=2, latency=0.01, fail_attempts={"b": 1})
    out = io.StringIO()
    orion_id = await client.submit_orion(diamond("plain"))
    progress = await asyncio.wait_for(follow_orion(client, orion_id, out=out, live=False,
                                                   results=True), 10)
    text = out.getvalue()
    assert "\x1b[" not in text  # no terminal codes when not on a terminal
    assert "[0/4] task_started    a (Start) on d1" in text
    assert re.search(r"\[\d/4\] task_retrying +b \(Left\) attempt 1 failed on d1 \(task_error: "
                     r"b attempt 0 failed on purpose\); retrying", text), text
    assert "task_cancelled  c (Right)" in text  # result.n is 3: the condition is false
    assert "[4/4] task_completed  d (Join) on d1" in text
    assert re.search(r"ok Left +d1 +completed +2 ", text)  # the second attempt made it
    assert re.search(r"xx Right +d1 +cancelled +- +-", text)
    assert "orion plain: COMPLETED - 3 completed, 1 cancelled, 1 retried attempt" in text
    assert re.search(r"critical path \(\d+\.\d+s\): Start -> Left -> Join", text)
    assert "c skipped: Dependency a -> c (conditional) can never be satisfied" in text
    assert re.search(r"results:\n  a  \{\"n\": 3, \"status\": \"ok\", \"task\": \"a\"\}", text)
    assert progress.result()["status"] == "completed"


async def test_on_a_terminal_the_table_is_redrawn_in_place(server, client):
    await fleet(server, "d1", capacity=2, latency=0.05)
    out = io.StringIO()
    orion_id = await client.submit_orion(diamond("live"))
    await asyncio.wait_for(follow_orion(client, orion_id, out=out, live=True), 10)
    text = out.getvalue()
    assert text.startswith("\x1b[?25l")  # cursor hidden while drawing ...
    assert "\x1b[?25h" in text  # ... and shown again
    frames = text.split("\x1b[J")
    assert len(frames) >= 3
    assert re.search(r"\[#{10,}\.+\] \d/4 stars", text)  # the bar
    assert re.search(r"-> Start +d1 +running", text)  # a frame while "a" ran
    # The last frame is erased (cursor up over it) and the summary prints the final table.
    assert re.search(r"\x1b\[\d+F$", frames[-2]) and "orion live: COMPLETED" in frames[-1]


async def test_stars_added_while_watching_appear_and_a_cancel_ends_the_view(server, client):
    await fleet(server, "d1", capacity=2, hang_task_ids={"a"})
    events = EventWaiter(server)
    orion = TaskOrion(orion_id="grows")
    orion.add_task(TaskStar("a", description="hang", target_device_id="d1"))
    await client.submit_orion(orion)
    out = io.StringIO()
    follow = asyncio.create_task(follow_orion(client, "grows", out=out, live=False))
    await events.wait(EventType.TASK_STARTED, "a")
    await client.edit_orion("grows", [AddTask(TaskStar("late", name="Added later",
                                                       description="x", target_device_id="d1")),
                                      AddDependency(TaskStarLine("a", "late"))])
    await events.wait(EventType.ORION_MODIFIED)
    await client.cancel_orion("grows", "enough")
    progress = await asyncio.wait_for(follow, 10)
    text = out.getvalue()
    assert "orion grows modified" in text
    assert re.search(r"xx Added later +d1 +cancelled", text)
    assert "orion grows: CANCELLED - 2 cancelled" in text
    assert progress.result()["status"] == "cancelled"
