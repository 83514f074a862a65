"""core.spec: whole-orion validation of plain data (files, dicts) against hostile input."""

from __future__ import annotations

from typing import Any

import pytest

from orion_grpc.core import InvalidArgumentError
from orion_grpc.core.spec import MAX_ID_LENGTH, id_problem, orion_from_spec, validate_spec


def reasons(spec: dict[str, Any]) -> dict[str, str]:
    return {v.field: v.reason for v in validate_spec(spec)}


def test_ids_must_be_printable_and_bounded() -> None:
    assert id_problem("build-01 / step 2 é") is None
    assert id_problem("x" * MAX_ID_LENGTH) is None
    assert "at most 256" in (id_problem("x" * (MAX_ID_LENGTH + 1)) or "")
    assert "'\\n' at position 1" in (id_problem("a\nb") or "")
    assert id_problem("esc\x1b[2J") is not None and id_problem("nul\x00") is not None
    assert id_problem("c1\x85") is not None  # C1 controls too


def test_every_id_of_an_orion_is_checked() -> None:
    spec = {"orion_id": "o\r", "tasks": [{"task_id": "a" * 300},
                                         {"task_id": "b", "target_device_id": "dev\x07"}],
            "dependencies": [{"line_id": "l\t", "from_task_id": "b", "to_task_id": "b2"}]}
    assert reasons(spec) == {
        "orion_id": "INVALID_ID", "tasks[0].task_id": "INVALID_ID",
        "tasks[1].target_device_id": "INVALID_ID", "dependencies[0].line_id": "INVALID_ID",
        "dependencies[0].to_task_id": "DANGLING_DEPENDENCY"}


@pytest.mark.parametrize(("spec", "field", "reason"), [
    ({"tasks": [{"task_id": "a"}], "dependencies": [{"from_task_id": {}, "to_task_id": "a"}]},
     "dependencies[0].from_task_id", "MISSING_FIELD"),
    ({"tasks": [{"task_id": "a"}], "dependencies": [{"to_task_id": "a"}]},
     "dependencies[0].from_task_id", "MISSING_FIELD"),
    ({"tasks": [{"task_id": "a"}, {"task_id": "b"}],
      "dependencies": [{"line_id": [], "from_task_id": "a", "to_task_id": "b"}]},
     "dependencies[0].line_id", "INVALID_FIELD"),
    ({"orion_id": 5, "tasks": []}, "orion_id", "INVALID_FIELD"),
    ({"name": ["x"], "tasks": []}, "name", "INVALID_FIELD"),
    ({"metadata": "x", "tasks": []}, "metadata", "INVALID_FIELD"),
    ({"tasks": [{"task_id": "a", "description": []}]}, "tasks[0].description", "INVALID_FIELD"),
    ({"tasks": [{"task_id": "a", "name": 3}]}, "tasks[0].name", "INVALID_FIELD"),
    ({"tasks": [{"task_id": "a"}, {"task_id": "b"}],
      "dependencies": [{"from_task_id": "a", "to_task_id": "b", "condition": 5}]},
     "dependencies[0].condition", "INVALID_FIELD"),
    ({"tasks": [{"task_id": "a"}, {"task_id": "b"}],
      "dependencies": [{"from_task_id": "a", "to_task_id": "b", "metadata": [1]}]},
     "dependencies[0].metadata", "INVALID_FIELD"),
])
def test_values_of_the_wrong_type_are_violations_not_crashes(spec: dict[str, Any], field: str,
                                                             reason: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        orion_from_spec(spec)
    assert {v.field: v.reason for v in info.value.violations}[field] == reason
