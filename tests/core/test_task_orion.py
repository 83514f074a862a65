"""Unit tests for orion_grpc.core.task_orion.TaskOrion (DAG rules, resolution, statistics)."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orion_grpc.core import (
    AlreadyExistsError,
    ConditionError,
    DependencyType,
    FailedPreconditionError,
    NotFoundError,
    OrionState,
    TaskOrion,
    TaskPriority,
    TaskStar,
    TaskStarLine,
    TaskStatus,
)
from orion_grpc.core import task_orion as task_orion_module

DT = DependencyType


def make_orion(*ids: str, **kwargs: Any) -> TaskOrion:
    orion = TaskOrion(orion_id=kwargs.pop("orion_id", "o1"), name=kwargs.pop("name", "test"))
    for tid in ids:
        orion.add_task(TaskStar(task_id=tid, description=f"do {tid}"))
    return orion


def link(orion: TaskOrion, src: str, dst: str, dep: DT = DT.UNCONDITIONAL,
         **kwargs: Any) -> TaskStarLine:
    line = TaskStarLine(src, dst, dep, line_id=kwargs.pop("line_id", f"{src}->{dst}"), **kwargs)
    orion.add_dependency(line)
    return line


def statuses(orion: TaskOrion) -> dict[str, str]:
    return {tid: t.status.value for tid, t in orion.tasks.items()}


def ready_ids(orion: TaskOrion) -> list[str]:
    return [t.task_id for t in orion.get_ready_tasks()]


def assert_order_consistent(orion: TaskOrion) -> None:
    """The incremental topological slots respect every edge and are distinct."""
    ords = [t._ord for t in orion.get_all_tasks()]
    assert len(set(ords)) == len(ords)
    for line in orion.get_all_dependencies():
        assert orion.get_task(line.from_task_id)._ord < orion.get_task(line.to_task_id)._ord


# --------------------------------------------------------------------------- basics
def test_default_orion_id_and_name() -> None:
    orion = TaskOrion()
    assert re.fullmatch(r"orion_\d{8}_\d{6}_[0-9a-f]{8}", orion.orion_id)
    assert orion.name == orion.orion_id
    assert orion.state is OrionState.CREATED
    assert orion.task_count == 0 and orion.dependency_count == 0
    assert TaskOrion().orion_id != orion.orion_id


def test_tasks_keep_insertion_order_and_copies() -> None:
    orion = make_orion("c", "a", "b")
    assert list(orion.tasks) == ["c", "a", "b"]
    assert [t.task_id for t in orion.get_all_tasks()] == ["c", "a", "b"]
    orion.tasks.pop("a")
    assert orion.task_count == 3
    assert orion.get_task("a") is not None
    assert orion.get_task("zzz") is None


def test_add_task_duplicate_refused() -> None:
    orion = make_orion("a")
    original = orion.get_task("a")
    with pytest.raises(AlreadyExistsError) as info:
        orion.add_task(TaskStar(task_id="a"))
    assert str(info.value) == "Task with ID a already exists"
    assert isinstance(info.value, ValueError)
    assert info.value.reason == "TASK_ALREADY_EXISTS"
    assert orion.get_task("a") is original
    assert orion.task_count == 1


def test_remove_task_unknown_and_running_and_finished() -> None:
    orion = make_orion("a", "b")
    with pytest.raises(NotFoundError) as info:
        orion.remove_task("nope")
    assert str(info.value) == "Task nope not found"
    assert isinstance(info.value, ValueError)

    orion.start_task("a")
    with pytest.raises(FailedPreconditionError) as info2:
        orion.remove_task("a")
    assert str(info2.value) == "Cannot remove running task a"
    assert info2.value.reason == "TASK_RUNNING"

    orion.finish_task("a", True, "r")
    with pytest.raises(FailedPreconditionError) as info3:
        orion.remove_task("a")
    assert str(info3.value) == ("Cannot remove task a in status completed: only pending or "
                                "waiting_dependency tasks can be changed")
    assert info3.value.reason == "TASK_NOT_MODIFIABLE"
    assert orion.task_count == 2


def test_remove_task_removes_its_edges_and_unblocks_dependents() -> None:
    orion = make_orion("a", "b", "c")
    link(orion, "a", "b")
    link(orion, "b", "c")
    assert ready_ids(orion) == ["a"]
    orion.remove_task("b")
    assert list(orion.tasks) == ["a", "c"]
    assert orion.dependency_count == 0
    assert orion.get_task_dependencies("c") == []
    assert ready_ids(orion) == ["a", "c"]


def test_add_dependency_missing_endpoints() -> None:
    orion = make_orion("a")
    with pytest.raises(NotFoundError) as info:
        orion.add_dependency(TaskStarLine("ghost", "a"))
    assert str(info.value) == "Source task ghost not found"
    with pytest.raises(NotFoundError) as info2:
        orion.add_dependency(TaskStarLine("a", "ghost"))
    assert str(info2.value) == "Target task ghost not found"
    assert orion.dependency_count == 0


def test_add_dependency_duplicate_line_id() -> None:
    orion = make_orion("a", "b", "c")
    link(orion, "a", "b", line_id="L")
    with pytest.raises(AlreadyExistsError, match="^Dependency with ID L already exists$"):
        orion.add_dependency(TaskStarLine("a", "c", line_id="L"))
    assert orion.get_dependency("L").to_task_id == "b"


def test_self_loop_refused() -> None:
    orion = make_orion("a")
    with pytest.raises(FailedPreconditionError) as info:
        orion.add_dependency(TaskStarLine("a", "a"))
    assert str(info.value) == "Adding dependency a -> a would create a cycle"
    assert info.value.reason == "DEPENDENCY_CYCLE"
    assert orion.dependency_count == 0
    assert ready_ids(orion) == ["a"]


def test_cycle_refused_and_nothing_changes() -> None:
    orion = make_orion("a", "b", "c")
    link(orion, "a", "b")
    link(orion, "b", "c")
    before = orion.to_dict()
    with pytest.raises(FailedPreconditionError) as info:
        orion.add_dependency(TaskStarLine("c", "a", line_id="bad"))
    assert str(info.value) == "Adding dependency c -> a would create a cycle"
    assert orion.get_dependency("bad") is None
    assert orion.to_dict()["dependencies"] == before["dependencies"]
    assert statuses(orion) == {"a": "pending", "b": "pending", "c": "pending"}
    assert orion.get_task("a")._unresolved == 0
    assert orion.get_topological_order() == ["a", "b", "c"]


def test_edges_added_in_reverse_topological_order() -> None:
    n = 200
    orion = make_orion(*(f"t{i}" for i in range(n)))
    # Every edge goes from a later-inserted star to an earlier one: each forces a reorder.
    for i in range(n - 1, 0, -1):
        link(orion, f"t{i}", f"t{i - 1}")
        assert_order_consistent(orion)
    assert orion.get_topological_order() == [f"t{i}" for i in range(n - 1, -1, -1)]
    with pytest.raises(FailedPreconditionError,
                       match=r"^Adding dependency t0 -> t199 would create a cycle$"):
        orion.add_dependency(TaskStarLine("t0", f"t{n - 1}"))
    with pytest.raises(FailedPreconditionError, match="would create a cycle"):
        orion.add_dependency(TaskStarLine("t100", "t150"))
    # forward shortcut edges are fine
    link(orion, "t150", "t100")
    assert_order_consistent(orion)
    assert orion.get_longest_path() == (n, [f"t{i}" for i in range(n - 1, -1, -1)])
    assert ready_ids(orion) == [f"t{n - 1}"]


def _check_random_edges(n: int, edges: list[tuple[int, int]]) -> None:
    orion = make_orion(*(f"n{i}" for i in range(n)))
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    for k, (a, b) in enumerate(edges):
        candidate = graph.copy()
        candidate.add_edge(a, b)
        expected_ok = nx.is_directed_acyclic_graph(candidate)
        line = TaskStarLine(f"n{a}", f"n{b}", line_id=f"e{k}")
        if expected_ok:
            orion.add_dependency(line)
            graph.add_edge(a, b)
        else:
            with pytest.raises(FailedPreconditionError,
                               match=f"^Adding dependency n{a} -> n{b} would create a cycle$"):
                orion.add_dependency(line)
            assert orion.get_dependency(f"e{k}") is None
        assert_order_consistent(orion)
    assert not orion.has_cycle()
    accepted = {(int(d.from_task_id[1:]), int(d.to_task_id[1:]))
                for d in orion.get_all_dependencies()}
    assert accepted == set(graph.edges)
    order = orion.get_topological_order()
    pos = {tid: i for i, tid in enumerate(order)}
    for a, b in graph.edges:
        assert pos[f"n{a}"] < pos[f"n{b}"]
    roots = {f"n{v}" for v in graph.nodes if graph.in_degree(v) == 0}
    assert {t.task_id for t in orion.get_ready_tasks()} == roots
    expected_longest = nx.dag_longest_path_length(graph) + 1 if graph.number_of_edges() else 1
    assert orion.get_longest_path()[0] == expected_longest


def test_many_random_edges_match_networkx() -> None:
    rng = random.Random(1234)
    for _ in range(5):
        n = 40
        edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(300)]
        _check_random_edges(n, edges)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(
        st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60))))
def test_cycle_detection_matches_networkx_hypothesis(case: tuple[int, list[tuple[int, int]]]
                                                     ) -> None:
    n, edges = case
    _check_random_edges(n, edges)


def test_lines_of_a_star_keep_insertion_order_through_adds_and_removals() -> None:
    # A star's lines are kept as (), a short list or, past a few dozen, a dict by line id
    # (task_orion.Lines); whatever the form, they must read back in insertion order. A hub
    # with far more lines than the list holds, random removals of lines and stars, against
    # a plain model.
    rng = random.Random(7)
    ids = ["hub", *(f"s{i}" for i in range(60))]
    orion = make_orion(*ids)
    out: dict[str, list[str]] = {tid: [] for tid in ids}
    ins: dict[str, list[str]] = {tid: [] for tid in ids}
    ends: dict[str, tuple[str, str]] = {}
    hub_peak = 0
    for step in range(1500):
        roll = rng.random()
        if roll < 0.65:
            a, b = sorted(rng.sample(range(len(ids)), 2))  # forward only: never a cycle
            src, dst = ids[a], ids[b]
            if rng.random() < 0.7:
                src = "hub" if "hub" in out else src
            if src == dst or any(ends[lid] == (src, dst) for lid in out.get(src, [])):
                continue
            lid = f"{src}->{dst}#{step}"
            link(orion, src, dst, line_id=lid)
            out[src].append(lid)
            ins[dst].append(lid)
            ends[lid] = (src, dst)
        elif roll < 0.97 and ends:
            lid = rng.choice(sorted(ends))
            orion.remove_dependency(lid)
            src, dst = ends.pop(lid)
            out[src].remove(lid)
            ins[dst].remove(lid)
        elif roll >= 0.97 and len(out) > 2:
            tid = rng.choice(sorted(out))
            orion.remove_task(tid)
            for lid in out.pop(tid) + ins.pop(tid):
                src, dst = ends.pop(lid)
                if src != tid:
                    out[src].remove(lid)
                if dst != tid:
                    ins[dst].remove(lid)
            orion.add_task(TaskStar(task_id=tid, description=f"do {tid}"))
            out[tid], ins[tid] = [], []
        hub_peak = max(hub_peak, len(out.get("hub", ())))
        for tid in out:
            assert [ln.line_id for ln in orion.get_task_dependents(tid)] == out[tid]
            assert [ln.line_id for ln in orion.get_task_dependencies(tid)] == ins[tid]
    assert hub_peak > 2 * task_orion_module._HUB  # the dict form was exercised
    assert orion.dependency_count == len(ends)
    assert_order_consistent(orion)
    assert orion.validate_dag() == (True, [])


# --------------------------------------------------------------------------- validate_dag
def test_validate_dag_ok() -> None:
    orion = make_orion("a", "b")
    link(orion, "a", "b")
    assert orion.validate_dag() == (True, [])
    assert orion.has_cycle() is False


def test_validate_dag_reports_every_problem() -> None:
    orion = make_orion("a", "b")
    link(orion, "a", "b")
    # Corrupt the structure behind the API's back: a cycle and dangling edges.
    orion._link(TaskStarLine("b", "a", line_id="back"))
    orion._dependencies["dangling1"] = TaskStarLine("ghost", "a", line_id="dangling1")
    orion._dependencies["dangling2"] = TaskStarLine("a", "phantom", line_id="dangling2")
    ok, errors = orion.validate_dag()
    assert ok is False
    assert errors == [
        "DAG contains cycles",
        "Dependency references non-existent source task ghost",
        "Dependency references non-existent target task phantom",
    ]
    assert orion.has_cycle() is True
    with pytest.raises(ValueError, match="^DAG contains cycles$"):
        orion.get_topological_order()


def test_validate_dag_does_not_trust_a_broken_topological_order() -> None:
    # validate_dag / has_cycle prove acyclicity from the maintained order (_ord) in one pass;
    # an order that does not fit the edges (here corrupted by hand) must not yield a false
    # "cycle", nor hide a real one: Kahn's algorithm decides then.
    orion = make_orion("a", "b", "c")
    link(orion, "a", "b")
    link(orion, "b", "c")
    orion.get_task("a")._ord, orion.get_task("c")._ord = 99, -1
    assert orion.validate_dag() == (True, [])
    assert orion.has_cycle() is False
    orion._link(TaskStarLine("c", "a", line_id="back"))
    assert orion.validate_dag() == (False, ["DAG contains cycles"])
    assert orion.has_cycle() is True


def test_from_dict_rejects_dangling_and_cyclic_structures() -> None:
    orion = make_orion("a", "b")
    link(orion, "a", "b")
    data = orion.to_dict()
    bad_src = json.loads(json.dumps(data))
    bad_src["dependencies"]["a->b"]["from_task_id"] = "ghost"
    with pytest.raises(NotFoundError, match="^Source task ghost not found$"):
        TaskOrion.from_dict(bad_src)
    bad_dst = json.loads(json.dumps(data))
    bad_dst["dependencies"]["a->b"]["to_task_id"] = "ghost"
    with pytest.raises(NotFoundError, match="^Target task ghost not found$"):
        TaskOrion.from_dict(bad_dst)
    cyclic = json.loads(json.dumps(data))
    cyclic["dependencies"]["b->a"] = dict(cyclic["dependencies"]["a->b"], line_id="b->a",
                                          from_task_id="b", to_task_id="a")
    with pytest.raises(FailedPreconditionError, match="would create a cycle"):
        TaskOrion.from_dict(cyclic)


# --------------------------------------------------------------------------- readiness
def test_get_ready_tasks_priority_order_stable() -> None:
    orion = TaskOrion(orion_id="o")
    for tid, prio in [("low", TaskPriority.LOW), ("m1", TaskPriority.MEDIUM),
                      ("crit", TaskPriority.CRITICAL), ("high", TaskPriority.HIGH),
                      ("m2", TaskPriority.MEDIUM), ("blocked", TaskPriority.CRITICAL)]:
        orion.add_task(TaskStar(task_id=tid, priority=prio))
    link(orion, "low", "blocked")
    assert ready_ids(orion) == ["crit", "high", "m1", "m2", "low"]


def test_ready_excludes_running_and_terminal() -> None:
    orion = make_orion("a", "b", "c")
    orion.start_task("a")
    orion.finish_task("b", True, 1)
    assert ready_ids(orion) == ["c"]


def test_mark_task_completed_returns_newly_ready() -> None:
    orion = make_orion("a", "b", "c", "d")
    link(orion, "a", "c")
    link(orion, "b", "c")
    link(orion, "a", "d")
    assert ready_ids(orion) == ["a", "b"]
    newly = orion.mark_task_completed("a", True, {"v": 1})
    assert [t.task_id for t in newly] == ["d"]
    assert orion.get_task("a").result == {"v": 1}
    assert orion.mark_task_completed("b", True) == [orion.get_task("c")]
    assert ready_ids(orion) == ["c", "d"]


def test_start_task_with_pending_dependencies_refused() -> None:
    orion = make_orion("a", "b")
    link(orion, "a", "b")
    with pytest.raises(FailedPreconditionError) as info:
        orion.start_task("b")
    assert str(info.value) == "Cannot start task b with pending dependencies"
    assert info.value.reason == "DEPENDENCIES_PENDING"
    assert orion.get_task("b").status is TaskStatus.PENDING
    with pytest.raises(NotFoundError, match="^Task zz not found$"):
        orion.start_task("zz")


def test_pop_ready_ids_and_is_dispatchable() -> None:
    orion = make_orion("a", "b")
    link(orion, "a", "b")
    assert orion.pop_ready_ids() == ["a"]
    assert orion.pop_ready_ids() == []
    assert orion.is_dispatchable(orion.get_task("a"))
    assert not orion.is_dispatchable(orion.get_task("b"))
    assert not orion.is_dispatchable(TaskStar(task_id="a"))  # same id, other object
    orion.finish_task("a", True)
    assert orion.pop_ready_ids() == ["b"]
    assert orion.is_dispatchable(orion.get_task("b"))


# --------------------------------------------------------------------------- dependency types
@pytest.mark.parametrize("dep", [DT.UNCONDITIONAL, DT.COMPLETION_ONLY, DT.SUCCESS_ONLY,
                                 DT.CONDITIONAL])
def test_each_type_satisfied_after_success(dep: DT) -> None:
    orion = make_orion("a", "b")
    line = link(orion, "a", "b", dep)
    newly, cancelled = orion.finish_task("a", True, {"score": 1})
    assert newly == [orion.get_task("b")]
    assert cancelled == []
    assert line.is_satisfied() is True
    assert line.last_evaluation_result is True
    assert ready_ids(orion) == ["b"]


@pytest.mark.parametrize("dep", [DT.UNCONDITIONAL, DT.COMPLETION_ONLY])
def test_unconditional_and_completion_only_satisfied_after_failure(dep: DT) -> None:
    orion = make_orion("a", "b")
    link(orion, "a", "b", dep)
    newly, cancelled = orion.finish_task("a", False, error="boom")
    assert [t.task_id for t in newly] == ["b"]
    assert cancelled == []
    assert orion.get_task("b").status is TaskStatus.PENDING
    assert ready_ids(orion) == ["b"]


def test_success_only_failure_cancels_and_propagates() -> None:
    orion = make_orion("a", "b", "c", "d", "e", "f")
    link(orion, "a", "b", DT.SUCCESS_ONLY)
    link(orion, "b", "c", DT.SUCCESS_ONLY)
    link(orion, "c", "d", DT.COMPLETION_ONLY)
    link(orion, "b", "e", DT.UNCONDITIONAL)
    link(orion, "b", "f", DT.CONDITIONAL)
    orion.start_execution()
    newly, cancelled = orion.finish_task("a", False, error="broken")
    assert sorted(t.task_id for t in cancelled) == ["b", "c", "f"]
    assert sorted(t.task_id for t in newly) == ["d", "e"]
    b_err = str(orion.get_task("b").error)
    assert b_err == ("Dependency a -> b (success_only) can never be satisfied: "
                     "prerequisite a failed")
    assert orion.get_task("b").error.reason == "cancelled"
    assert "prerequisite b cancelled" in str(orion.get_task("c").error)
    assert "prerequisite b was cancelled" in str(orion.get_task("f").error)
    assert statuses(orion) == {"a": "failed", "b": "cancelled", "c": "cancelled",
                               "d": "pending", "e": "pending", "f": "cancelled"}
    assert ready_ids(orion) == ["d", "e"]
    assert orion.state is OrionState.EXECUTING
    for tid in ("d", "e"):
        orion.finish_task(tid, True)
    assert orion.is_complete()
    assert orion.state is OrionState.PARTIALLY_FAILED


def test_success_only_cancellation_only_once_with_diamond() -> None:
    orion = make_orion("a", "b", "c", "d")
    link(orion, "a", "b", DT.SUCCESS_ONLY)
    link(orion, "a", "c", DT.SUCCESS_ONLY)
    link(orion, "b", "d", DT.SUCCESS_ONLY)
    link(orion, "c", "d", DT.SUCCESS_ONLY)
    _, cancelled = orion.finish_task("a", False, error="x")
    ids = [t.task_id for t in cancelled]
    assert sorted(ids) == ["b", "c", "d"]
    assert len(ids) == len(set(ids))
    assert orion.status_counts()[TaskStatus.CANCELLED] == 3


def test_conditional_callable() -> None:
    orion = make_orion("a", "yes", "no")
    seen: list[Any] = []

    def high(result: Any) -> bool:
        seen.append(result)
        return result["score"] > 0.5

    def low(result: Any) -> bool:
        return result["score"] < 0.5

    link(orion, "a", "yes", DT.CONDITIONAL, condition_evaluator=high)
    line_no = link(orion, "a", "no", DT.CONDITIONAL, condition_evaluator=low)
    newly, cancelled = orion.finish_task("a", True, {"score": 0.9})
    assert seen == [{"score": 0.9}]
    assert [t.task_id for t in newly] == ["yes"]
    assert [t.task_id for t in cancelled] == ["no"]
    assert line_no.last_evaluation_result is False
    assert line_no.last_evaluation_note == "condition on a not met"
    assert str(orion.get_task("no").error) == (
        "Dependency a -> no (conditional) can never be satisfied: condition on a not met")


def test_conditional_callable_receives_error_on_failure_and_raising_callable() -> None:
    orion = make_orion("a", "on_fail", "raiser")
    got: list[Any] = []
    link(orion, "a", "on_fail", DT.CONDITIONAL,
         condition_evaluator=lambda err: got.append(err) or str(err) == "boom")
    link(orion, "a", "raiser", DT.CONDITIONAL, condition_evaluator=lambda r: r["missing"])
    newly, cancelled = orion.finish_task("a", False, error="boom")
    assert [t.task_id for t in newly] == ["on_fail"]
    assert str(got[0]) == "boom"
    assert [t.task_id for t in cancelled] == ["raiser"]
    assert "condition evaluator raised TypeError" in str(orion.get_task("raiser").error)


def test_conditional_expression_string() -> None:
    orion = make_orion("a", "hi", "lo", "missing", "failed_branch")
    link(orion, "a", "hi", DT.CONDITIONAL, condition="result.score > 0.5")
    link(orion, "a", "lo", DT.CONDITIONAL, condition="result.score < 0.5")
    link(orion, "a", "missing", DT.CONDITIONAL, condition="result.other == 1")
    link(orion, "a", "failed_branch", DT.CONDITIONAL, condition='status == "failed"')
    assert orion.get_dependency("a->hi").condition == "result.score > 0.5"
    newly, cancelled = orion.finish_task("a", True, {"score": 0.75})
    assert [t.task_id for t in newly] == ["hi"]
    assert sorted(t.task_id for t in cancelled) == ["failed_branch", "lo", "missing"]
    assert "condition 'result.other == 1' failed" in str(orion.get_task("missing").error)


def test_conditional_expression_on_failure() -> None:
    orion = make_orion("a", "recover", "cleanup")
    link(orion, "a", "recover", DT.CONDITIONAL, condition='!success && error.contains("disk")')
    link(orion, "a", "cleanup", DT.CONDITIONAL, condition='status in ["failed", "cancelled"]')
    newly, cancelled = orion.finish_task("a", False, error="disk full")
    assert sorted(t.task_id for t in newly) == ["cleanup", "recover"]
    assert cancelled == []


def test_conditional_without_condition_means_success() -> None:
    ok = make_orion("a", "b")
    link(ok, "a", "b", DT.CONDITIONAL)
    assert [t.task_id for t in ok.finish_task("a", True, None)[0]] == ["b"]
    bad = make_orion("a", "b")
    link(bad, "a", "b", DT.CONDITIONAL)
    newly, cancelled = bad.finish_task("a", False, error="x")
    assert newly == [] and [t.task_id for t in cancelled] == ["b"]
    assert "condition on a not met" in str(bad.get_task("b").error)


def test_conditional_after_cancelled_prerequisite_cancels() -> None:
    orion = make_orion("a", "b", "c")
    link(orion, "a", "b", DT.CONDITIONAL, condition="true")
    link(orion, "a", "c", DT.COMPLETION_ONLY)
    cancelled = orion.cancel_task("a", "stop")
    assert [t.task_id for t in cancelled] == ["a", "b"]
    assert ready_ids(orion) == ["c"]
    assert orion.cancel_task("a") == []


def test_bad_condition_expression_rejected_at_construction() -> None:
    with pytest.raises(ConditionError):
        TaskStarLine("a", "b", DT.CONDITIONAL, condition="result.score >")
    assert issubclass(ConditionError, ValueError)


def test_add_dependency_from_finished_prerequisite_resolves_immediately() -> None:
    orion = make_orion("ok", "bad", "x", "y", "z")
    orion.finish_task("ok", True, 1)
    orion.finish_task("bad", False, error="no")
    link(orion, "ok", "x", DT.SUCCESS_ONLY)
    assert ready_ids(orion) == ["x", "y", "z"]
    link(orion, "bad", "y", DT.SUCCESS_ONLY)
    assert orion.get_task("y").status is TaskStatus.CANCELLED
    link(orion, "bad", "z", DT.COMPLETION_ONLY)
    assert orion.get_task("z").status is TaskStatus.PENDING
    assert ready_ids(orion) == ["x", "z"]


# --------------------------------------------------------------------------- state machine
def test_orion_state_machine_success_path() -> None:
    orion = TaskOrion(orion_id="o")
    assert orion.state is OrionState.CREATED
    orion.add_task(TaskStar(task_id="a"))
    orion.add_task(TaskStar(task_id="b"))
    link(orion, "a", "b")
    assert orion.state is OrionState.READY
    orion.start_execution()
    assert orion.state is OrionState.EXECUTING
    assert orion.execution_start_time is not None
    orion.finish_task("a", True)
    assert orion.state is OrionState.EXECUTING
    orion.finish_task("b", True)
    assert orion.state is OrionState.COMPLETED
    orion.complete_execution()
    assert orion.execution_end_time is not None
    assert orion.execution_duration is not None and orion.execution_duration >= 0


def test_orion_state_executing_without_start_when_running() -> None:
    orion = make_orion("a", "b")
    orion.start_task("a")
    assert orion.state is OrionState.EXECUTING


@pytest.mark.parametrize(("outcomes", "expected"), [
    ({"a": "ok", "b": "ok"}, OrionState.COMPLETED),
    ({"a": "ok", "b": "fail"}, OrionState.PARTIALLY_FAILED),
    ({"a": "fail", "b": "fail"}, OrionState.FAILED),
    ({"a": "fail", "b": "cancel"}, OrionState.FAILED),
    ({"a": "ok", "b": "cancel"}, OrionState.COMPLETED),
    ({"a": "cancel", "b": "cancel"}, OrionState.COMPLETED),
])
def test_orion_final_states(outcomes: dict[str, str], expected: OrionState) -> None:
    orion = make_orion(*outcomes)
    orion.start_execution()
    for tid, outcome in outcomes.items():
        if outcome == "cancel":
            orion.cancel_task(tid)
        else:
            orion.finish_task(tid, outcome == "ok", error=None if outcome == "ok" else "x")
    assert orion.is_complete()
    assert orion.state is expected


def test_cancel_all_gives_cancelled_and_start_execution_clears_it() -> None:
    orion = make_orion("a", "b", "c")
    orion.start_execution()
    orion.finish_task("a", True)
    orion.start_task("b")
    cancelled = orion.cancel_all("user request")
    assert [t.task_id for t in cancelled] == ["b", "c"]
    assert orion.state is OrionState.CANCELLED
    assert str(orion.get_task("c").error) == "user request"
    assert orion.get_task("a").status is TaskStatus.COMPLETED
    assert orion.get_ready_tasks() == []
    orion.start_execution()
    assert orion.state is not OrionState.CANCELLED


def test_waiting_dependency_set_on_start_and_cleared_when_ready() -> None:
    orion = make_orion("a", "b", "c")
    link(orion, "a", "b")
    link(orion, "b", "c")
    assert statuses(orion) == {"a": "pending", "b": "pending", "c": "pending"}
    orion.start_execution()
    assert statuses(orion) == {"a": "pending", "b": "waiting_dependency",
                               "c": "waiting_dependency"}
    assert [t.task_id for t in orion.get_pending_tasks()] == ["a"]
    assert orion.status_counts()[TaskStatus.WAITING_DEPENDENCY] == 2
    assert orion.is_task_modifiable("b")
    newly = orion.mark_task_completed("a", True)
    assert [t.task_id for t in newly] == ["b"]
    assert statuses(orion) == {"a": "completed", "b": "pending", "c": "waiting_dependency"}
    # an edge added to a ready star during the run blocks it again
    orion.add_task(TaskStar(task_id="d"))
    link(orion, "c", "d")
    assert orion.get_task("d").status is TaskStatus.WAITING_DEPENDENCY
    # removing the blocking edge frees it
    orion.remove_dependency("c->d")
    assert orion.get_task("d").status is TaskStatus.PENDING
    orion.complete_execution()
    orion.add_task(TaskStar(task_id="e"))
    link(orion, "c", "e")
    assert orion.get_task("e").status is TaskStatus.PENDING  # not scheduling any more


def test_status_counts_and_queries() -> None:
    orion = make_orion("a", "b", "c", "d", "e")
    orion.finish_task("a", True)
    orion.finish_task("b", False, error="x")
    orion.start_task("c")
    orion.cancel_task("d")
    counts = orion.status_counts()
    assert counts[TaskStatus.COMPLETED] == 1
    assert counts[TaskStatus.FAILED] == 1
    assert counts[TaskStatus.RUNNING] == 1
    assert counts[TaskStatus.CANCELLED] == 1
    assert counts[TaskStatus.PENDING] == 1
    assert [t.task_id for t in orion.get_completed_tasks()] == ["a"]
    assert [t.task_id for t in orion.get_failed_tasks()] == ["b"]
    assert [t.task_id for t in orion.get_running_tasks()] == ["c"]
    assert [t.task_id for t in orion.get_cancelled_tasks()] == ["d"]
    assert [t.task_id for t in orion.get_pending_tasks()] == ["e"]
    assert [t.task_id for t in orion.get_modifiable_tasks()] == ["e"]
    assert not orion.is_complete()


# --------------------------------------------------------------------------- I3
def test_add_dependency_into_completed_star_refused() -> None:
    orion = make_orion("a", "b")
    orion.finish_task("b", True)
    with pytest.raises(FailedPreconditionError) as info:
        orion.add_dependency(TaskStarLine("a", "b"))
    assert str(info.value) == ("Cannot add a dependency to task b in status completed: only "
                               "pending or waiting_dependency tasks can be changed")
    assert info.value.reason == "TASK_NOT_MODIFIABLE"
    assert orion.dependency_count == 0


def test_add_dependency_into_running_star_refused() -> None:
    orion = make_orion("a", "b")
    orion.start_task("b")
    with pytest.raises(FailedPreconditionError,
                       match="^Cannot add a dependency to running task b$"):
        orion.add_dependency(TaskStarLine("a", "b"))
    assert orion.dependency_count == 0


def test_remove_dependency_into_running_star_refused() -> None:
    orion = make_orion("a", "b")
    link(orion, "a", "b", DT.UNCONDITIONAL)
    orion.finish_task("a", True)
    orion.start_task("b")
    with pytest.raises(FailedPreconditionError) as info:
        orion.remove_dependency("a->b")
    assert str(info.value) == "Cannot remove a dependency of running task b"
    assert info.value.reason == "TASK_RUNNING"
    assert orion.get_dependency("a->b") is not None
    assert not orion.is_dependency_modifiable("a->b")
    assert orion.get_modifiable_dependencies() == []


def test_remove_dependency_unknown_is_ignored_and_makes_ready() -> None:
    orion = make_orion("a", "b")
    link(orion, "a", "b")
    orion.remove_dependency("nope")
    assert orion.dependency_count == 1
    assert orion.is_dependency_modifiable("a->b")
    orion.remove_dependency("a->b")
    assert orion.dependency_count == 0
    assert ready_ids(orion) == ["a", "b"]
    with pytest.raises(NotFoundError, match="^Dependency nope not found$"):
        orion.require_dependency("nope")


def test_dependency_queries() -> None:
    orion = make_orion("a", "b", "c")
    ab = link(orion, "a", "b")
    ac = link(orion, "a", "c")
    bc = link(orion, "b", "c")
    assert orion.get_task_dependencies("c") == [ac, bc]
    assert orion.get_task_dependents("a") == [ab, ac]
    assert orion.find_dependency("a", "c") is ac
    assert orion.find_dependency("c", "a") is None
    assert orion.get_all_dependencies() == [ab, ac, bc]
    assert orion.get_task_dependencies("zzz") == []


# --------------------------------------------------------------------------- statistics
STAT_KEYS = {
    "orion_id", "name", "state", "total_tasks", "total_dependencies", "task_status_counts",
    "longest_path_length", "longest_path_tasks", "max_width", "critical_path_length",
    "total_work", "parallelism_ratio", "parallelism_calculation_mode", "critical_path_tasks",
    "execution_duration", "created_at", "updated_at", "execution_start_time",
    "execution_end_time",
}


def known_dag() -> TaskOrion:
    """a -> b -> d, a -> c -> d, a -> f; e isolated."""
    orion = make_orion("a", "b", "c", "d", "e", "f", orion_id="known", name="Known DAG")
    for src, dst in [("a", "b"), ("a", "c"), ("a", "f"), ("b", "d"), ("c", "d")]:
        link(orion, src, dst)
    return orion


def test_statistics_before_execution_exact() -> None:
    orion = known_dag()
    stats = orion.get_statistics()
    assert set(stats) == STAT_KEYS
    assert stats["orion_id"] == "known"
    assert stats["name"] == "Known DAG"
    assert stats["state"] == "ready"
    assert stats["total_tasks"] == 6
    assert stats["total_dependencies"] == 5
    assert stats["task_status_counts"] == {"pending": 6}
    assert stats["longest_path_length"] == 3
    assert stats["longest_path_tasks"] == ["a", "b", "d"]
    assert stats["max_width"] == 3
    assert stats["critical_path_length"] == 3.0
    assert stats["total_work"] == 6.0
    assert stats["parallelism_ratio"] == 2.0
    assert stats["parallelism_calculation_mode"] == "node_count"
    assert stats["critical_path_tasks"] == ["a", "b", "d"]
    assert stats["execution_duration"] is None
    assert stats["execution_start_time"] is None
    assert stats["execution_end_time"] is None
    assert stats["created_at"] == orion.created_at.isoformat()
    assert stats["updated_at"] == orion.updated_at.isoformat()


def test_statistics_after_execution_uses_actual_durations() -> None:
    orion = known_dag()
    orion.start_execution()
    for tid in orion.get_topological_order():
        orion.finish_task(tid, True, tid)
    orion.complete_execution()
    base = datetime(2024, 1, 1, tzinfo=UTC)
    durations = {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0, "e": 3.0, "f": 1.0}
    for tid, seconds in durations.items():
        task = orion.get_task(tid)
        task._execution_start_time = base.timestamp()  # stars keep epoch floats internally
        task._execution_end_time = (base + timedelta(seconds=seconds)).timestamp()
    orion._execution_start_time = base
    orion._execution_end_time = base + timedelta(seconds=8)
    stats = orion.get_statistics()
    assert set(stats) == STAT_KEYS
    assert stats["state"] == "completed"
    assert stats["task_status_counts"] == {"completed": 6}
    assert stats["longest_path_length"] == 3
    assert stats["longest_path_tasks"] == ["a", "b", "d"]
    assert stats["max_width"] == 3
    assert stats["parallelism_calculation_mode"] == "actual_time"
    assert stats["critical_path_length"] == 7.0
    assert stats["critical_path_tasks"] == ["a", "c", "d"]
    assert stats["total_work"] == 13.0
    assert stats["parallelism_ratio"] == pytest.approx(13.0 / 7.0)
    assert stats["execution_duration"] == 8.0
    assert stats["execution_start_time"] == base.isoformat()
    assert stats["execution_end_time"] == (base + timedelta(seconds=8)).isoformat()


def test_the_critical_path_runs_through_completed_stars_only() -> None:
    orion = known_dag()  # a -> b -> d, a -> c -> d, ... (as above)
    orion.start_execution()
    for tid in orion.get_topological_order():
        orion.finish_task(tid, tid != "c", tid if tid != "c" else None,
                          error=None if tid != "c" else "c broke")
    base = datetime(2024, 1, 1, tzinfo=UTC)
    durations = {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0, "e": 3.0, "f": 1.0}
    for tid, seconds in durations.items():
        task = orion.get_task(tid)
        task._execution_start_time = base.timestamp()
        task._execution_end_time = (base + timedelta(seconds=seconds)).timestamp()
    assert orion.get_task("c").status.value == "failed"
    # Counting c's 5 s, a -> c -> d (7 s) would be the path; it led nowhere.
    assert orion.get_critical_path_length_with_time() == (4.0, ["a", "b", "d"])


def test_statistics_empty_orion() -> None:
    stats = TaskOrion(orion_id="empty").get_statistics()
    assert set(stats) == STAT_KEYS
    assert stats["state"] == "created"
    assert stats["total_tasks"] == 0
    assert stats["task_status_counts"] == {}
    assert stats["longest_path_length"] == 0
    assert stats["longest_path_tasks"] == []
    assert stats["max_width"] == 0
    assert stats["critical_path_length"] == 0
    assert stats["parallelism_ratio"] == 0.0
    assert stats["parallelism_calculation_mode"] == "empty"


def test_statistics_mixed_status_counts() -> None:
    orion = known_dag()
    orion.start_execution()
    orion.finish_task("a", True)
    orion.start_task("b")
    orion.finish_task("e", False, error="x")
    counts = orion.get_statistics()["task_status_counts"]
    assert counts == {"completed": 1, "running": 1, "failed": 1, "pending": 2,
                      "waiting_dependency": 1}


# --------------------------------------------------------------------------- serialization
def mixed_orion() -> TaskOrion:
    orion = TaskOrion(orion_id="ser", name="Serialize", metadata={"owner": "me"})
    for tid in ("done", "bad", "skipped", "run", "wait", "free"):
        orion.add_task(TaskStar(task_id=tid, description=tid, tips=[tid],
                                priority=TaskPriority.HIGH if tid == "run" else 2))
    link(orion, "bad", "skipped", DT.SUCCESS_ONLY)
    link(orion, "done", "run", DT.SUCCESS_ONLY, condition_description="needs done")
    link(orion, "run", "wait", DT.CONDITIONAL, condition="result.ok == true",
         metadata={"k": "v"})
    link(orion, "done", "free", DT.COMPLETION_ONLY)
    orion.start_execution()
    orion.finish_task("done", True, {"n": 1})
    orion.finish_task("bad", False, error="exploded")
    orion.start_task("run")
    return orion


def test_to_dict_from_dict_round_trip_preserves_states() -> None:
    orion = mixed_orion()
    data = orion.to_dict()
    assert data["state"] == "executing"
    assert {tid: t["status"] for tid, t in data["tasks"].items()} == {
        "done": "completed", "bad": "failed", "skipped": "cancelled", "run": "running",
        "wait": "waiting_dependency", "free": "pending"}
    clone = TaskOrion.from_dict(json.loads(json.dumps(data)))
    assert clone.to_dict() == data
    assert statuses(clone) == statuses(orion)
    assert clone.state is OrionState.EXECUTING
    assert ready_ids(clone) == ready_ids(orion) == ["free"]
    assert clone.metadata == {"owner": "me"}
    assert clone.get_dependency("run->wait").condition == "result.ok == true"
    # the loaded orion keeps scheduling correctly
    newly = clone.mark_task_completed("run", True, {"ok": True})
    assert [t.task_id for t in newly] == ["wait"]
    assert clone.get_task("wait").status is TaskStatus.PENDING


def test_json_round_trip_and_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    orion = mixed_orion()
    path = tmp_path / "orion.json"
    text = orion.to_json(save_path=str(path))
    assert path.read_text(encoding="utf-8") == text
    assert TaskOrion.from_json(text).to_dict() == orion.to_dict()
    assert TaskOrion.from_json(file_path=str(path)).to_dict() == orion.to_dict()


def test_round_trip_cancelled_orion() -> None:
    orion = make_orion("a", "b")
    orion.start_execution()
    orion.cancel_all("stop")
    clone = TaskOrion.from_dict(orion.to_dict())
    assert clone.state is OrionState.CANCELLED
    assert statuses(clone) == {"a": "cancelled", "b": "cancelled"}


def test_change_listener_called_on_mutation() -> None:
    orion = make_orion("a", "b")
    calls: list[int] = []

    def listener() -> None:
        calls.append(1)

    orion.add_change_listener(listener)
    link(orion, "a", "b")
    orion.finish_task("a", True)
    assert len(calls) == 2
    orion.remove_change_listener(listener)
    orion.remove_change_listener(listener)  # idempotent
    orion.name = "renamed"
    assert len(calls) == 2
    assert orion.name == "renamed"


def test_repr() -> None:
    assert repr(make_orion("a", orion_id="r")) == "TaskOrion(id=r, tasks=1, state=ready)"
