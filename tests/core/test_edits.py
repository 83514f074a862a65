"""Unit tests for orion_grpc.core.edits.apply_edits (atomic edit batches, invariants I1-I3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from orion_grpc.core import (
    AddDependency,
    AddTask,
    DependencyType,
    EditOperation,
    EditOutcome,
    EditRejectedError,
    ErrorCategory,
    RemoveDependency,
    RemoveTask,
    TaskOrion,
    TaskPriority,
    TaskStar,
    TaskStarLine,
    TaskStatus,
    UpdateDependency,
    UpdateTask,
    apply_edits,
)

DT = DependencyType


def line(src: str, dst: str, dep: DT = DT.UNCONDITIONAL, **kwargs: Any) -> TaskStarLine:
    return TaskStarLine(src, dst, dep, line_id=kwargs.pop("line_id", f"{src}->{dst}"), **kwargs)


def build_orion() -> TaskOrion:
    """A running orion with every kind of star.

    done(completed) -> run(running); done -SUCCESS_ONLY-> p1 -> p2 -COMPLETION_ONLY-> p3;
    run -> p3; failed(failed) -COMPLETION_ONLY-> p4 -CONDITIONAL(result.x > 1)-> p5.
    Ready: p1, p4. Waiting: p2, p3, p5.
    """
    orion = TaskOrion(orion_id="edit", name="Edit me")
    for tid in ("done", "failed", "run", "p1", "p2", "p3", "p4", "p5"):
        orion.add_task(TaskStar(task_id=tid, description=f"do {tid}", target_device_id="dev-a"))
    for ln in (line("done", "run"), line("done", "p1", DT.SUCCESS_ONLY), line("p1", "p2"),
               line("p2", "p3", DT.COMPLETION_ONLY), line("run", "p3"),
               line("failed", "p4", DT.COMPLETION_ONLY),
               line("p4", "p5", DT.CONDITIONAL, condition="result.x > 1")):
        orion.add_dependency(ln)
    orion.start_execution()
    orion.finish_task("done", True, {"score": 0.9})
    orion.finish_task("failed", False, error="broken")
    orion.start_task("run")
    return orion


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("updated_at",)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def snapshot(orion: TaskOrion) -> dict[str, Any]:
    """Everything observable about an orion, minus updated_at timestamps."""
    return {
        "dict": _strip(orion.to_dict()),
        "task_order": list(orion.tasks),
        "statuses": {tid: t.status.value for tid, t in orion.tasks.items()},
        "ready": [t.task_id for t in orion.get_ready_tasks()],
        "unresolved": {tid: t._unresolved for tid, t in orion.tasks.items()},
        "counts": orion.status_counts(),
        # (edge iteration order may change when an edge is unlinked and put back)
        "edges_in": {tid: sorted(d.line_id for d in orion.get_task_dependencies(tid))
                     for tid in orion.tasks},
        "edges_out": {tid: sorted(d.line_id for d in orion.get_task_dependents(tid))
                      for tid in orion.tasks},
        "state": orion.state,
    }


def valid_prefix(orion: TaskOrion) -> list[EditOperation]:
    """Nine operations that are each fine on build_orion() (covers every inverse)."""
    return [
        AddTask(TaskStar(task_id="new1", description="new")),
        AddDependency(line("p1", "new1", DT.SUCCESS_ONLY)),
        AddDependency(line("done", "new1")),  # prerequisite already finished: decided at commit
        UpdateTask("p2", {"name": "renamed", "priority": TaskPriority.HIGH,
                          "task_data": {"z": 1}, "tips": ["t"], "target_device_id": "dev-b"}),
        UpdateDependency("p2->p3", {"dependency_type": "success_only",
                                    "condition_description": "only if p2 works"}),
        RemoveDependency("done->p1"),
        RemoveTask("p5"),
        RemoveDependency("p1->p2"),  # p2 becomes ready
        UpdateDependency("failed->p4", {"dependency_type": DT.SUCCESS_ONLY}),  # would cancel p4
    ]


BadOp = Callable[[], EditOperation]

REJECTIONS: list[tuple[str, BadOp, str, ErrorCategory, str, str]] = [
    # id, bad op, rule, category, reason, message of the cause
    ("I1-reassign-running", lambda: UpdateTask("run", {"target_device_id": "dev-b"}),
     "I1", ErrorCategory.FAILED_PRECONDITION, "TASK_RUNNING", "Cannot modify running task run"),
    ("I2-cycle", lambda: AddDependency(line("new1", "p1")),
     "I2", ErrorCategory.FAILED_PRECONDITION, "DEPENDENCY_CYCLE",
     "Adding dependency new1 -> p1 would create a cycle"),
    ("I2-self-loop", lambda: AddDependency(line("p3", "p3")),
     "I2", ErrorCategory.FAILED_PRECONDITION, "DEPENDENCY_CYCLE",
     "Adding dependency p3 -> p3 would create a cycle"),
    ("I3-modify-running", lambda: UpdateTask("run", {"name": "x"}),
     "I3", ErrorCategory.FAILED_PRECONDITION, "TASK_RUNNING", "Cannot modify running task run"),
    ("I3-remove-running", lambda: RemoveTask("run"),
     "I3", ErrorCategory.FAILED_PRECONDITION, "TASK_RUNNING", "Cannot remove running task run"),
    ("I3-modify-finished", lambda: UpdateTask("done", {"name": "x"}),
     "I3", ErrorCategory.FAILED_PRECONDITION, "TASK_NOT_MODIFIABLE",
     "Cannot modify task done in status completed: only pending or waiting_dependency tasks "
     "can be changed"),
    ("I3-remove-finished", lambda: RemoveTask("failed"),
     "I3", ErrorCategory.FAILED_PRECONDITION, "TASK_NOT_MODIFIABLE",
     "Cannot remove task failed in status failed: only pending or waiting_dependency tasks "
     "can be changed"),
    ("I3-edge-into-finished", lambda: AddDependency(line("p1", "done")),
     "I3", ErrorCategory.FAILED_PRECONDITION, "TASK_NOT_MODIFIABLE",
     "Cannot add a dependency to task done in status completed: only pending or "
     "waiting_dependency tasks can be changed"),
    ("I3-remove-edge-into-running", lambda: RemoveDependency("done->run"),
     "I3", ErrorCategory.FAILED_PRECONDITION, "TASK_RUNNING",
     "Cannot remove a dependency of running task run"),
    ("I3-update-edge-into-running",
     lambda: UpdateDependency("done->run", {"dependency_type": "success_only"}),
     "I3", ErrorCategory.FAILED_PRECONDITION, "TASK_RUNNING",
     "Cannot modify a dependency of running task run"),
    ("NOT_FOUND-remove-task", lambda: RemoveTask("ghost"),
     "NOT_FOUND", ErrorCategory.NOT_FOUND, "TASK_NOT_FOUND", "Task ghost not found"),
    ("NOT_FOUND-removed-earlier-in-batch", lambda: RemoveTask("p5"),
     "NOT_FOUND", ErrorCategory.NOT_FOUND, "TASK_NOT_FOUND", "Task p5 not found"),
    ("NOT_FOUND-update-task", lambda: UpdateTask("ghost", {"name": "x"}),
     "NOT_FOUND", ErrorCategory.NOT_FOUND, "TASK_NOT_FOUND", "Task ghost not found"),
    ("NOT_FOUND-remove-dep", lambda: RemoveDependency("ghost"),
     "NOT_FOUND", ErrorCategory.NOT_FOUND, "DEPENDENCY_NOT_FOUND", "Dependency ghost not found"),
    ("NOT_FOUND-update-dep", lambda: UpdateDependency("ghost", {"dependency_type": "success_only"}),
     "NOT_FOUND", ErrorCategory.NOT_FOUND, "DEPENDENCY_NOT_FOUND", "Dependency ghost not found"),
    ("NOT_FOUND-dep-source", lambda: AddDependency(line("ghost", "p3")),
     "NOT_FOUND", ErrorCategory.NOT_FOUND, "TASK_NOT_FOUND", "Source task ghost not found"),
    ("NOT_FOUND-dep-target", lambda: AddDependency(line("p3", "ghost")),
     "NOT_FOUND", ErrorCategory.NOT_FOUND, "TASK_NOT_FOUND", "Target task ghost not found"),
    ("ALREADY_EXISTS-task", lambda: AddTask(TaskStar(task_id="p1")),
     "ALREADY_EXISTS", ErrorCategory.ALREADY_EXISTS, "TASK_ALREADY_EXISTS",
     "Task with ID p1 already exists"),
    ("ALREADY_EXISTS-task-added-in-batch", lambda: AddTask(TaskStar(task_id="new1")),
     "ALREADY_EXISTS", ErrorCategory.ALREADY_EXISTS, "TASK_ALREADY_EXISTS",
     "Task with ID new1 already exists"),
    ("ALREADY_EXISTS-dependency", lambda: AddDependency(line("p1", "p3", line_id="run->p3")),
     "ALREADY_EXISTS", ErrorCategory.ALREADY_EXISTS, "DEPENDENCY_ALREADY_EXISTS",
     "Dependency with ID run->p3 already exists"),
    ("INVALID-unknown-task-field", lambda: UpdateTask("p3", {"name": "n", "bogus": 1}),
     "INVALID", ErrorCategory.INVALID_ARGUMENT, "UNKNOWN_FIELD",
     "Unknown task field(s) ['bogus']; editable fields: name, description, tips, "
     "target_device_id, device_type, priority, timeout, retry_count, task_data, "
     "expected_output_type, required_capabilities"),
    ("INVALID-unknown-dep-field", lambda: UpdateDependency("run->p3", {"nope": 1}),
     "INVALID", ErrorCategory.INVALID_ARGUMENT, "UNKNOWN_FIELD",
     "Unknown dependency field(s) ['nope']; editable fields: dependency_type, condition, "
     "condition_description, metadata"),
]


@pytest.mark.parametrize(("bad_op", "rule", "category", "reason", "cause"),
                         [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_rejected_batch_changes_nothing(bad_op: BadOp, rule: str, category: ErrorCategory,
                                        reason: str, cause: str) -> None:
    orion = build_orion()
    before = snapshot(orion)
    edits = [*valid_prefix(orion), bad_op()]
    index = len(edits) - 1
    with pytest.raises(EditRejectedError) as info:
        apply_edits(orion, edits)
    err = info.value
    assert err.edit_index == index
    assert err.rule == rule
    assert err.category is category
    assert err.reason == reason
    assert err.cause.message == cause
    assert str(err) == f"Edit {index} rejected ({rule}): {cause}"
    assert err.metadata["edit_index"] == str(index)
    assert err.metadata["rule"] == rule
    assert err.violations[0].field == f"edits[{index}]"
    assert isinstance(err, ValueError)
    assert snapshot(orion) == before
    assert orion._deferred is None


def test_bad_condition_expression_rejected_atomically() -> None:
    orion = build_orion()
    before = snapshot(orion)
    edits = [*valid_prefix(orion),
             UpdateDependency("run->p3", {"condition_description": "changed",
                                          "dependency_type": "conditional",
                                          "condition": "result.score >"})]
    with pytest.raises(EditRejectedError) as info:
        apply_edits(orion, edits)
    err = info.value
    assert err.edit_index == 9
    assert err.rule == "INVALID"
    assert err.category is ErrorCategory.INVALID_ARGUMENT
    assert err.reason == "INVALID_EDIT"
    assert snapshot(orion) == before
    dep = orion.get_dependency("run->p3")
    assert dep.condition_description == ""
    assert dep.dependency_type is DT.UNCONDITIONAL
    assert dep.condition is None


def test_bad_field_value_in_update_task_rejected_atomically() -> None:
    orion = build_orion()
    before = snapshot(orion)
    # "tips" must be iterable: setting it fails after "name" was already set.
    edits = [AddTask(TaskStar(task_id="x")), UpdateTask("p3", {"name": "changed", "tips": 5})]
    with pytest.raises(EditRejectedError) as info:
        apply_edits(orion, edits)
    assert info.value.edit_index == 1
    assert info.value.rule == "INVALID"
    assert snapshot(orion) == before
    assert orion.get_task("p3").name == "task_p3"


def test_rollback_restores_task_order_after_removing_a_middle_star() -> None:
    orion = build_orion()
    before = snapshot(orion)
    with pytest.raises(EditRejectedError) as info:
        apply_edits(orion, [RemoveTask("p2"), RemoveTask("p1"), RemoveTask("run")])
    assert info.value.edit_index == 2
    assert list(orion.tasks) == ["done", "failed", "run", "p1", "p2", "p3", "p4", "p5"]
    assert snapshot(orion) == before
    # the restored stars still schedule correctly
    assert [t.task_id for t in orion.mark_task_completed("p1", True)] == ["p2"]


def test_rollback_restores_updated_at_too() -> None:
    """A refused batch leaves no trace: a client comparing snapshots (or updated_at) must
    not see a change that never happened."""
    orion = build_orion()
    before = orion.to_dict()
    with pytest.raises(EditRejectedError):
        apply_edits(orion, [UpdateTask("p2", {"description": "x"}), AddTask(TaskStar("n")),
                            AddDependency(line("n", "p3")), RemoveDependency("p1->p2"),
                            UpdateDependency("p4->p5", {"condition": "result.x > 2"}),
                            RemoveTask("run")])
    assert orion.to_dict() == before


def test_rollback_does_not_re_evaluate_condition_callables() -> None:
    orion = build_orion()
    calls: list[object] = []
    orion.add_task(TaskStar(task_id="q"))
    orion.add_dependency(line("done", "q", DT.CONDITIONAL,
                              condition_evaluator=lambda r: calls.append(r) or True))
    assert calls == [{"score": 0.9}]
    before = snapshot(orion)
    with pytest.raises(EditRejectedError):
        apply_edits(orion, [RemoveDependency("done->q"),
                            UpdateTask("q", {"name": "x"}), RemoveTask("ghost")])
    assert calls == [{"score": 0.9}]
    assert snapshot(orion) == before


def test_update_dependency_metadata_in_failed_batch_rolled_back() -> None:
    orion = build_orion()
    before = snapshot(orion)
    with pytest.raises(EditRejectedError):
        apply_edits(orion, [UpdateDependency("p1->p2", {"metadata": {"a": 1}}),
                            RemoveTask("ghost")])
    assert orion.get_dependency("p1->p2").metadata == {}
    assert snapshot(orion) == before


def test_first_op_failing_reports_index_zero() -> None:
    orion = build_orion()
    before = snapshot(orion)
    with pytest.raises(EditRejectedError) as info:
        apply_edits(orion, [RemoveTask("ghost"), AddTask(TaskStar(task_id="never"))])
    assert info.value.edit_index == 0
    assert orion.get_task("never") is None
    assert snapshot(orion) == before


def test_rejected_batch_with_deferred_cancellation_cancels_nothing() -> None:
    orion = build_orion()
    before = snapshot(orion)
    with pytest.raises(EditRejectedError):
        apply_edits(orion, [AddDependency(line("failed", "p1", DT.SUCCESS_ONLY)),
                            RemoveTask("ghost")])
    assert orion.get_task("p1").status is TaskStatus.PENDING
    assert snapshot(orion) == before


def test_valid_prefix_alone_commits() -> None:
    orion = build_orion()
    outcome = apply_edits(orion, valid_prefix(orion))
    assert outcome.applied == 9
    # failed -SUCCESS_ONLY-> p4 can never be satisfied: p4 cancelled at commit
    assert outcome.cancelled_task_ids == ["p4"]
    assert orion.get_task("p5") is None
    assert orion.get_task("new1").status is TaskStatus.WAITING_DEPENDENCY  # waits for p1
    p2 = orion.get_task("p2")
    assert (p2.name, p2.priority, p2.task_data, p2.tips, p2.target_device_id) == (
        "renamed", TaskPriority.HIGH, {"z": 1}, ["t"], "dev-b")
    assert orion.get_dependency("p2->p3").dependency_type is DT.SUCCESS_ONLY
    assert orion.get_dependency("done->p1") is None
    assert orion.get_dependency("done->new1").is_satisfied()
    assert [t.task_id for t in orion.get_ready_tasks()] == ["p2", "p1"]  # p2 is HIGH now
    assert not orion.has_cycle()


# --------------------------------------------------------------------------- successful batches
def test_add_task_and_edges() -> None:
    orion = build_orion()
    x = TaskStar(task_id="x", description="x")
    outcome = apply_edits(orion, [AddTask(x), AddDependency(line("p1", "x")),
                                  AddDependency(line("x", "p3", DT.SUCCESS_ONLY))])
    assert outcome == EditOutcome(3, [])
    assert orion.get_task("x") is x
    assert x.status is TaskStatus.WAITING_DEPENDENCY
    assert [d.line_id for d in orion.get_task_dependencies("p3")] == ["p2->p3", "run->p3", "x->p3"]
    newly = orion.mark_task_completed("p1", True)
    assert {t.task_id for t in newly} == {"p2", "x"}


def test_remove_task() -> None:
    orion = build_orion()
    outcome = apply_edits(orion, [RemoveTask("p2")])
    assert outcome == EditOutcome(1, [])
    assert orion.get_task("p2") is None
    assert orion.get_dependency("p1->p2") is None and orion.get_dependency("p2->p3") is None
    assert orion.get_task("p3").status is TaskStatus.WAITING_DEPENDENCY  # still waits for run
    orion.mark_task_completed("run", True)
    assert orion.get_task("p3").status is TaskStatus.PENDING


def test_update_task_fields() -> None:
    orion = build_orion()
    apply_edits(orion, [UpdateTask("p3", {
        "name": "N", "description": "D", "tips": ["a"], "target_device_id": "dev-z",
        "device_type": "linux", "priority": 4, "timeout": 9.0, "retry_count": 2,
        "task_data": {"k": "v"}, "expected_output_type": "json",
        "required_capabilities": ["gpu"]})])
    t = orion.get_task("p3")
    assert t.to_request_string() == "Task Description: D\nTips for Completion:\n - a"
    assert (t.name, t.target_device_id, t.device_type.value, t.priority, t.timeout,
            t.retry_count, t.task_data, t.expected_output_type, t.required_capabilities) == (
        "N", "dev-z", "linux", TaskPriority.CRITICAL, 9.0, 2, {"k": "v"}, "json", ["gpu"])
    assert t.status is TaskStatus.WAITING_DEPENDENCY


def test_update_dependency_type_cancels_at_commit() -> None:
    orion = build_orion()
    outcome = apply_edits(orion, [UpdateDependency("failed->p4", {"dependency_type": "success_only"})])
    # p4 can never run; p5's conditional edge on a cancelled p4 cannot hold either.
    assert outcome.cancelled_task_ids == ["p4", "p5"]
    assert orion.get_task("p4").status is TaskStatus.CANCELLED
    assert "failed" in str(orion.get_task("p4").error)
    assert orion.get_task("p5").status is TaskStatus.CANCELLED


def test_update_dependency_condition_then_satisfied() -> None:
    orion = build_orion()
    apply_edits(orion, [UpdateDependency("p4->p5", {"condition": "result.x < 1",
                                                    "metadata": {"why": "planner"}})])
    dep = orion.get_dependency("p4->p5")
    assert dep.condition == "result.x < 1"
    assert dep.metadata == {"why": "planner"}
    newly = orion.mark_task_completed("p4", True, {"x": 0})
    assert [t.task_id for t in newly] == ["p5"]


def test_remove_dependency_makes_star_ready() -> None:
    orion = build_orion()
    assert orion.get_task("p2").status is TaskStatus.WAITING_DEPENDENCY
    outcome = apply_edits(orion, [RemoveDependency("p1->p2")])
    assert outcome == EditOutcome(1, [])
    assert orion.get_task("p2").status is TaskStatus.PENDING
    assert [t.task_id for t in orion.get_ready_tasks()] == ["p1", "p2", "p4"]


def test_add_dependency_from_failed_prerequisite_success_only_cancels_at_commit() -> None:
    orion = build_orion()
    # The cancellation is deferred: a later op in the same batch may still edit p1.
    outcome = apply_edits(orion, [AddDependency(line("failed", "p1", DT.SUCCESS_ONLY)),
                                  UpdateTask("p1", {"description": "still editable"})])
    assert outcome.applied == 2
    assert outcome.cancelled_task_ids == ["p1"]
    p1 = orion.get_task("p1")
    assert p1.status is TaskStatus.CANCELLED
    assert p1.description == "still editable"
    assert str(p1.error) == ("Dependency failed -> p1 (success_only) can never be satisfied: "
                             "prerequisite failed failed")
    # p1 -> p2 is UNCONDITIONAL: the cancelled prerequisite releases p2
    assert orion.get_task("p2").status is TaskStatus.PENDING


def test_add_dependency_from_completed_prerequisite_is_satisfied_at_commit() -> None:
    orion = build_orion()
    outcome = apply_edits(orion, [AddDependency(line("done", "p4", DT.CONDITIONAL,
                                                    condition="result.score > 0.5"))])
    assert outcome.cancelled_task_ids == []
    assert orion.get_task("p4").status is TaskStatus.PENDING
    assert orion.get_dependency("done->p4").is_satisfied()


def test_empty_batch() -> None:
    orion = build_orion()
    before = snapshot(orion)
    assert apply_edits(orion, []) == EditOutcome(0, [])
    assert snapshot(orion) == before


def test_unknown_operation_type() -> None:
    orion = build_orion()
    with pytest.raises(EditRejectedError) as info:
        apply_edits(orion, [object()])  # type: ignore[list-item]
    assert info.value.reason == "UNKNOWN_EDIT"
    assert info.value.rule == "INVALID"


def test_update_task_with_invalid_values_is_rejected_and_rolled_back() -> None:
    from orion_grpc import EditRejectedError, TaskOrion, TaskStar, UpdateTask, apply_edits

    orion = TaskOrion("vals")
    orion.add_task(TaskStar("a", description="a", timeout=5.0))
    with pytest.raises(EditRejectedError) as info:
        apply_edits(orion, [UpdateTask("a", {"name": "renamed"}),
                            UpdateTask("a", {"timeout": -5, "retry_count": "x"})])
    assert info.value.edit_index == 1
    assert {v.field for v in info.value.cause.violations} == {"tasks[a].timeout",
                                                            "tasks[a].retry_count"}
    assert orion.get_task("a").name == "task_a" and orion.get_task("a").timeout == 5.0
