"""docs/devices.md's executor example works as written, through a real server and agent."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from orion_grpc.core import TaskExecutionError, TaskStar
from orion_grpc.device import default_executors

DOC = Path(__file__).resolve().parents[2] / "docs" / "devices.md"


def example_module() -> types.ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    source = next(b for b in blocks if b.startswith("# my_executors.py"))
    module = types.ModuleType("my_executors")
    exec(compile(source, str(DOC), "exec"), module.__dict__)
    return module


def test_the_example_is_about_ten_lines():
    source = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
                  if b.startswith("# my_executors.py"))
    assert len([line for line in source.splitlines() if line.strip()]) <= 10


async def test_the_documented_executor_runs_on_a_device(harness):
    word_count = example_module().word_count
    agent = harness.agent("counter-1", capabilities=("nlp",),
                          executors={**default_executors(), "count": word_count},
                          default_executor="count")
    await harness.connected(agent)
    run = harness.orchestrator.execute_single_task
    star = TaskStar("t", description="count", target_device_id="counter-1",
                    task_data={"text": "three little words"})
    assert await run(star) == {"status": "ok", "words": 3}
    with pytest.raises(TaskExecutionError, match="nothing to count"):
        await run(TaskStar("e", description="count", target_device_id="counter-1"))
