"""Build a TaskOrion from a plain description (JSON / dict), reporting every problem at once.

This is the gate for orions that come from outside (files, the wire): one O(V+E) pass
collects every violation — duplicate ids, dangling or self-referencing edges, cycles (naming
the stars on them), unknown enum values, bad numbers, conditions that do not parse — and
raises a single InvalidArgumentError with one Violation per problem. Nothing is built unless
everything is valid.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from .conditions import ConditionError, compile_condition
from .enums import DependencyType, DeviceType, TaskPriority, parse_enum
from .errors import InvalidArgumentError, Violation
from .task_orion import TaskOrion
from .task_star import TaskStar
from .task_star_line import TaskStarLine

TASK_KEYS = {"task_id", "name", "description", "tips", "target_device_id", "device_type",
             "priority", "timeout", "retry_count", "task_data", "expected_output_type",
             "required_capabilities"}
# What a star of a whole-orion spec may carry: its definition and (snapshots) its state.
_SPEC_TASK_KEYS = frozenset(TASK_KEYS | {
    "status", "result", "error", "current_retry", "task_description", "created_at",
    "updated_at", "execution_start_time", "execution_end_time", "execution_duration",
    "dependencies", "dependents"})
LINE_KEYS = {"line_id", "from_task_id", "to_task_id", "dependency_type",
             "condition_description", "condition", "metadata"}


# Ids end up in resource names, log lines and terminal output: bounded, and without control
# characters (a newline in an id would forge log lines; an escape sequence would drive the
# terminal of whoever runs `orion watch`).
MAX_ID_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an id (orion, star, line or device), or None if it can."""
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long; ids are at most {MAX_ID_LENGTH} characters"
    bad = _CONTROL.search(value)
    if bad is not None:
        return (f"contains the control character {bad.group()!r} at position {bad.start()}; "
                "ids must be printable text")
    return None


def check_id(value: Any, field: str, problems: list[Violation]) -> None:
    """Add a violation if ``value`` is a string that cannot be an id (emptiness and type are
    checked where they matter: some ids are optional)."""
    if isinstance(value, str):
        problem = id_problem(value)
        if problem is not None:
            problems.append(Violation(field, problem, "INVALID_ID"))


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return value
    return [value]


def check_task_fields(data: dict[str, Any], where: str, problems: list[Violation]) -> None:
    """Field-level checks shared by whole-orion validation and single-star edits."""
    def bad(field: str, msg: str, reason: str = "INVALID_FIELD") -> None:
        problems.append(Violation(f"{where}.{field}", msg, reason))

    if "device_type" in data and data["device_type"] not in (None, "") and \
            parse_enum(DeviceType, data["device_type"]) is None:
        bad("device_type", f"unknown device type {data['device_type']!r}; expected one of "
            f"{[d.value for d in DeviceType]}", "UNKNOWN_ENUM_VALUE")
    if "priority" in data and data["priority"] is not None and \
            parse_enum(TaskPriority, data["priority"]) is None:
        bad("priority", f"unknown priority {data['priority']!r}; expected 1-4 or "
            f"{[p.name for p in TaskPriority]}", "UNKNOWN_ENUM_VALUE")
    timeout = data.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        bad("timeout", "must be a positive number of seconds")
    retries = data.get("retry_count", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        bad("retry_count", "must be a non-negative integer")
    for key in ("tips", "required_capabilities"):
        val = data.get(key)
        if val is not None and (not isinstance(val, list) or
                                not all(isinstance(x, str) for x in val)):
            bad(key, "must be a list of strings")
    if data.get("task_data") is not None and not isinstance(data["task_data"], dict):
        bad("task_data", "must be an object")
    for key in ("name", "description", "target_device_id", "expected_output_type"):
        if data.get(key) is not None and not isinstance(data[key], str):
            bad(key, "must be a string")
    check_id(data.get("task_id"), f"{where}.task_id", problems)
    if data.get("target_device_id"):
        check_id(data["target_device_id"], f"{where}.target_device_id", problems)


def validate_spec(spec: dict[str, Any]) -> list[Violation]:
    """Every problem with ``spec`` (empty list = valid)."""
    problems: list[Violation] = []
    for key in ("orion_id", "name"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            problems.append(Violation(key, "must be a string", "INVALID_FIELD"))
    check_id(spec.get("orion_id"), "orion_id", problems)
    if spec.get("metadata") is not None and not isinstance(spec["metadata"], dict):
        problems.append(Violation("metadata", "must be an object", "INVALID_FIELD"))
    tasks = _items(spec.get("tasks"))
    ids: dict[str, int] = {}
    for i, t in enumerate(tasks):
        where = f"tasks[{i}]"
        if not isinstance(t, dict):
            problems.append(Violation(where, "must be an object", "INVALID_FIELD"))
            continue
        if not _SPEC_TASK_KEYS.issuperset(t):
            unknown = sorted(set(t) - _SPEC_TASK_KEYS)
            problems.append(Violation(where, f"unknown field(s) {unknown}", "UNKNOWN_FIELD"))
        tid = t.get("task_id")
        if not isinstance(tid, str) or not tid:
            problems.append(Violation(f"{where}.task_id", "must be a non-empty string",
                                      "MISSING_FIELD"))
        elif tid in ids:
            problems.append(Violation(f"{where}.task_id",
                                      f"Task with ID {tid} already exists", "DUPLICATE_TASK_ID"))
        else:
            ids[tid] = i
        check_task_fields(t, where, problems)
    out: dict[str, list[str]] = {tid: [] for tid in ids}
    indeg: dict[str, int] = dict.fromkeys(ids, 0)
    line_ids: set[str] = set()
    for i, d in enumerate(_items(spec.get("dependencies"))):
        where = f"dependencies[{i}]"
        if not isinstance(d, dict):
            problems.append(Violation(where, "must be an object", "INVALID_FIELD"))
            continue
        src, dst = d.get("from_task_id"), d.get("to_task_id")
        lid = d.get("line_id")
        if lid is not None:
            if not isinstance(lid, str):
                problems.append(Violation(f"{where}.line_id", "must be a string",
                                          "INVALID_FIELD"))
            else:
                check_id(lid, f"{where}.line_id", problems)
                if lid in line_ids:
                    problems.append(Violation(f"{where}.line_id", f"Dependency with ID {lid} "
                                              "already exists", "DUPLICATE_LINE_ID"))
                line_ids.add(lid)
        ok = True
        for key, end, which in (("from_task_id", src, "source"), ("to_task_id", dst, "target")):
            if not isinstance(end, str) or not end:
                problems.append(Violation(f"{where}.{key}", f"must name the {which} star "
                                          "(its task_id)", "MISSING_FIELD"))
                ok = False
            elif end not in ids:
                problems.append(Violation(f"{where}.{key}", f"Dependency references "
                                          f"non-existent {which} task {end}",
                                          "DANGLING_DEPENDENCY"))
                ok = False
        if ok and src == dst:
            problems.append(Violation(where, f"Adding dependency {src} -> {dst} would create a "
                                      "cycle", "SELF_LOOP"))
            ok = False
        if "dependency_type" in d and parse_enum(DependencyType, d["dependency_type"]) is None:
            problems.append(Violation(f"{where}.dependency_type",
                                      f"unknown dependency type {d['dependency_type']!r}; "
                                      f"expected one of {[t.value for t in DependencyType]}",
                                      "UNKNOWN_ENUM_VALUE"))
        for key in ("condition", "condition_description"):
            if d.get(key) is not None and not isinstance(d[key], str):
                problems.append(Violation(f"{where}.{key}", "must be a string", "INVALID_FIELD"))
        if d.get("metadata") is not None and not isinstance(d["metadata"], dict):
            problems.append(Violation(f"{where}.metadata", "must be an object", "INVALID_FIELD"))
        if isinstance(d.get("condition"), str) and d["condition"]:
            try:
                compile_condition(d["condition"])
            except ConditionError as exc:
                problems.append(Violation(f"{where}.condition", str(exc), "INVALID_CONDITION"))
        if ok:
            out[src].append(dst)
            indeg[dst] += 1
    # Kahn: whatever cannot be ordered sits on or behind a cycle.
    queue = deque(t for t, n in indeg.items() if n == 0)
    seen = 0
    while queue:
        node = queue.popleft()
        seen += 1
        for nxt in out[node]:
            indeg[nxt] -= 1
            if indeg[nxt] == 0:
                queue.append(nxt)
    if seen != len(ids):
        stuck = sorted(t for t, n in indeg.items() if n > 0)
        problems.append(Violation("dependencies", f"DAG contains cycles (stars involved: "
                                  f"{stuck[:20]}{' …' if len(stuck) > 20 else ''})",
                                  "CYCLE"))
    return problems


def orion_from_spec(spec: dict[str, Any], *, validated: bool = False) -> TaskOrion:
    """Validate then build. Raises InvalidArgumentError listing every problem.

    ``validated=True``: the caller has just run ``validate_spec`` on this very spec (and
    refused it if it had problems); skip the second pass.
    """
    if not isinstance(spec, dict):
        raise InvalidArgumentError("an orion must be a JSON object", "INVALID_ORION")
    problems = [] if validated else validate_spec(spec)
    if problems:
        raise InvalidArgumentError(
            f"Invalid orion: {len(problems)} problem(s): "
            + "; ".join(f"{v.field}: {v.description}" for v in problems[:10])
            + (" …" if len(problems) > 10 else ""), "INVALID_ORION", problems)
    orion = TaskOrion(orion_id=spec.get("orion_id"), name=spec.get("name"),
                      metadata=spec.get("metadata") or {})
    for t in _items(spec.get("tasks")):
        orion.add_task(TaskStar.from_dict(t))
    for d in _items(spec.get("dependencies")):
        orion.add_dependency(TaskStarLine.from_dict(d))
    return orion
