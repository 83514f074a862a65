"""Property-based tests (hypothesis) of the RPC layer against hostile input: a real server
(grpc.aio on loopback) called with the generated stubs.

1. Random orions, each with a random set of defects (cycles, self-loops, dangling lines,
   duplicate ids, unknown enums, conditions that do not parse, bad ids, NaN or too-deep
   task_data, oversized task_data, too many stars, bytes that are not UTF-8), sent to a random
   RPC that takes an orion: a defect-free orion is accepted; any other is refused with
   INVALID_ARGUMENT, the ErrorInfo reason of its most fundamental defect and one BadRequest
   violation per structural defect.
2. Random edit batches against a running orion that hold at least one edit the orion cannot
   take (a running or finished star, an unknown star, a cycle, a malformed operation), mixed
   with edits it could: the batch is refused as a whole.

After every call, every orion accepted so far is exactly as it was (``World``), so a refused
call changed nothing — not even a timestamp.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from guard_support import (
    WAIT,
    Env,
    ServerThread,
    Stubs,
    decode,
    live_env,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orion_grpc.api.limits import MAX_JSON_DEPTH
from orion_grpc.gen.orion.v1 import (
    edit_pb2,
    manager_service_pb2,
    orchestrator_service_pb2,
    orion_pb2,
    synchronizer_service_pb2,
    task_star_pb2,
)

MAX_STARS = 40
MAX_TASK_DATA = 1024
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
_ids = itertools.count()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with live_env(ServerThread(max_stars=MAX_STARS, max_task_data_bytes=MAX_TASK_DATA)) as env:
        yield env


# ---------------------------------------------------------------------- orions with defects
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
BAD_CONDITIONS = ["result.x ==", "__import__('os')", "eval('1')", "(a", "result.s.matches('(')",
                  "x = 1", "1 +", "result.__dict__()", "'unterminated", "a and b",
                  "(" * 80 + "true" + ")" * 80, "success" + " || success" * 500]
UTF8_MARK = "@@NOT-UTF8@@"

# defect -> (ErrorInfo reason, BadRequest violation reason); the reasons are listed from the
# most fundamental (what the server finds first) to the least.
DEFECTS: dict[str, tuple[str, str]] = {
    "invalid_utf8": ("MALFORMED_REQUEST", ""),
    "nan": ("INVALID_JSON", "INVALID_JSON"),
    "too_deep": ("INVALID_JSON", "JSON_TOO_DEEP"),
    "too_many_stars": ("TOO_MANY_STARS", "TOO_MANY_STARS"),
    "big_task_data": ("TASK_DATA_TOO_LARGE", "TASK_DATA_TOO_LARGE"),
    "cycle": ("INVALID_ORION", "CYCLE"),
    "self_loop": ("INVALID_ORION", "SELF_LOOP"),
    "dangling": ("INVALID_ORION", "DANGLING_DEPENDENCY"),
    "duplicate_star": ("INVALID_ORION", "DUPLICATE_TASK_ID"),
    "duplicate_line": ("INVALID_ORION", "DUPLICATE_LINE_ID"),
    "unknown_device_type": ("INVALID_ORION", "UNKNOWN_ENUM_VALUE"),
    "unknown_dependency_type": ("INVALID_ORION", "UNKNOWN_ENUM_VALUE"),
    "bad_condition": ("INVALID_ORION", "INVALID_CONDITION"),
    "control_char_id": ("INVALID_ORION", "INVALID_ID"),
    "long_id": ("INVALID_ORION", "INVALID_ID"),
    "negative_retries": ("INVALID_ORION", "INVALID_FIELD"),
}
PRECEDENCE = ["MALFORMED_REQUEST", "INVALID_JSON", "TOO_MANY_STARS", "TASK_DATA_TOO_LARGE",
              "INVALID_ORION"]


def deep(depth: int) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    for _ in range(depth):
        outer = struct_pb2.Struct()
        outer.fields["k"].struct_value.CopyFrom(value)
        value = outer
    return value


@st.composite
def orions(draw: st.DrawFn) -> tuple[orion_pb2.TaskOrion, frozenset[str]]:
    n = draw(st.integers(1, 8))
    pb = orion_pb2.TaskOrion(orion_id=f"fuzz-{next(_ids)}", name=draw(TEXT))
    for i in range(n):
        task = pb.tasks.add(task_id=f"s{i}", description=draw(TEXT),
                            priority=draw(st.sampled_from([0, 1, 2, 3, 4])),
                            retry_count=draw(st.integers(0, 3)))
        task.task_data.update(draw(st.dictionaries(st.text(max_size=6), JSON, max_size=3)))
    edges = draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
                         .filter(lambda e: e[0] < e[1]), max_size=10))
    for a, b in sorted(edges):
        pb.dependencies.add(from_task_id=f"s{a}", to_task_id=f"s{b}",
                            dependency_type=draw(st.sampled_from([0, 1, 2, 3])))
    defects = draw(st.frozensets(st.sampled_from(sorted(DEFECTS)), max_size=3))
    pick = lambda: draw(st.integers(0, n - 1))

    def pair(prefix: str) -> tuple[str, str]:
        a, b = f"{prefix}-a", f"{prefix}-b"
        pb.tasks.add(task_id=a, description="extra")
        pb.tasks.add(task_id=b, description="extra")
        return a, b

    for defect in sorted(defects):
        if defect == "nan":
            pb.tasks[pick()].task_data.fields["bad"].number_value = float("nan")
        elif defect == "too_deep":
            pb.tasks[pick()].task_data.fields["deep"].struct_value.CopyFrom(deep(MAX_JSON_DEPTH))
        elif defect == "too_many_stars":
            for i in range(MAX_STARS):
                pb.tasks.add(task_id=f"bulk{i}", description="bulk")
        elif defect == "big_task_data":
            pb.tasks[pick()].task_data.update({"blob": "x" * MAX_TASK_DATA})
        elif defect == "cycle":
            a, b = pair("cyc")
            pb.dependencies.add(from_task_id=a, to_task_id=b)
            pb.dependencies.add(from_task_id=b, to_task_id=a)
        elif defect == "self_loop":
            star = f"s{pick()}"
            pb.dependencies.add(from_task_id=star, to_task_id=star)
        elif defect == "dangling":
            pb.dependencies.add(from_task_id=f"s{pick()}", to_task_id="ghost")
        elif defect == "duplicate_star":
            pb.tasks.add(task_id=f"s{pick()}", description="again")
        elif defect == "duplicate_line":
            a, b = pair("dup")
            pb.dependencies.add(line_id="twice", from_task_id=a, to_task_id=b)
            pb.dependencies.add(line_id="twice", from_task_id=a, to_task_id=b)
        elif defect == "unknown_device_type":
            pb.tasks[pick()].device_type = draw(st.integers(8, 2**31 - 1))
        elif defect == "unknown_dependency_type":
            a, b = pair("dep")
            pb.dependencies.add(from_task_id=a, to_task_id=b,
                                dependency_type=draw(st.integers(5, 1000)))
        elif defect == "bad_condition":
            a, b = pair("cond")
            pb.dependencies.add(from_task_id=a, to_task_id=b,
                                dependency_type=orion_pb2.DEPENDENCY_TYPE_CONDITIONAL,
                                condition=orion_pb2.Condition(
                                    expression=draw(st.sampled_from(BAD_CONDITIONS))))
        elif defect == "control_char_id":
            control = draw(st.sampled_from(["\n", "\x00", "\x1b", "\r", "\x7f", "\x85"]))
            pb.tasks.add(task_id=f"bad{control}id", description="x")
        elif defect == "long_id":
            pb.tasks.add(task_id="L" * draw(st.integers(257, 2000)), description="x")
        elif defect == "negative_retries":
            pb.tasks[pick()].retry_count = draw(st.integers(-(2**31), -1))
        elif defect == "invalid_utf8":
            pb.tasks[pick()].name = UTF8_MARK
    return pb, defects


def expected_reason(defects: frozenset[str]) -> str:
    reasons = {DEFECTS[d][0] for d in defects}
    return next(r for r in PRECEDENCE if r in reasons)


def orion_rpcs(stubs: Stubs) -> dict[str, tuple[str, Callable[[Any], Any], Any]]:
    """RPCs that take an orion: (method path, stub method, request builder)."""
    strategy = orion_pb2.ASSIGNMENT_STRATEGY_CAPABILITY_MATCH
    return {
        "SubmitOrion": ("/orion.v1.OrchestratorService/SubmitOrion",
                        stubs.orchestrator.SubmitOrion,
                        lambda pb: orchestrator_service_pb2.SubmitOrionRequest(
                            orion=pb, assignment_strategy=strategy)),
        "OrchestrateOrion": ("/orion.v1.OrchestratorService/OrchestrateOrion",
                             stubs.orchestrator.OrchestrateOrion,
                             lambda pb: orchestrator_service_pb2.OrchestrateOrionRequest(
                                 orion=pb, assignment_strategy=strategy)),
        "RegisterOrion": ("/orion.v1.ManagerService/RegisterOrion", stubs.manager.RegisterOrion,
                          lambda pb: manager_service_pb2.RegisterOrionRequest(orion=pb)),
        "ValidateOrionAssignments": (
            "/orion.v1.ManagerService/ValidateOrionAssignments",
            stubs.manager.ValidateOrionAssignments,
            lambda pb: manager_service_pb2.ValidateOrionAssignmentsRequest(orion=pb)),
        "AssignDevicesAutomatically": (
            "/orion.v1.ManagerService/AssignDevicesAutomatically",
            stubs.manager.AssignDevicesAutomatically,
            lambda pb: manager_service_pb2.AssignDevicesAutomaticallyRequest(
                orion=pb, strategy=strategy)),
    }


@FUZZ
@given(case=orions(), rpc=st.sampled_from(["SubmitOrion", "OrchestrateOrion", "RegisterOrion",
                                           "ValidateOrionAssignments",
                                           "AssignDevicesAutomatically"]))
def test_hostile_orions_are_refused_with_the_right_reason(
        env: Env, case: tuple[orion_pb2.TaskOrion, frozenset[str]], rpc: str) -> None:
    pb, defects = case
    stubs, world = env.stubs, env.world
    path, method, build = orion_rpcs(stubs)[rpc]
    if not defects:  # a good orion: registered (a run would change it under our eyes)
        stubs.manager.RegisterOrion(manager_service_pb2.RegisterOrionRequest(orion=pb),
                                    timeout=WAIT)
        world.accept(pb.orion_id)
        world.assert_untouched()
        return
    try:
        if "invalid_utf8" in defects:
            raw = build(pb).SerializeToString()
            spoiled = raw.replace(UTF8_MARK.encode(), b"\xff\xfe" + UTF8_MARK.encode()[2:])
            stubs.raw(path)(spoiled, timeout=WAIT)
        else:
            method(build(pb), timeout=WAIT)
    except grpc.RpcError as error:
        refused = decode(error)
    else:
        raise AssertionError(f"{rpc} accepted an orion with {sorted(defects)}")
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT, refused
    reason = expected_reason(defects)
    assert refused.reason == reason, (sorted(defects), refused)
    assert refused.message, refused
    if reason == "INVALID_ORION":  # every structural defect is reported, each by its reason
        wanted = {DEFECTS[d][1] for d in defects if DEFECTS[d][0] == "INVALID_ORION"}
        assert wanted <= refused.violation_reasons, (sorted(defects), refused)
    elif reason != "MALFORMED_REQUEST":
        assert DEFECTS[next(d for d in sorted(defects) if DEFECTS[d][0] == reason)][1] \
            in refused.violation_reasons, refused
    world.assert_untouched()


# ---------------------------------------------------------------------- edit batches
def add_star(task_id: str, **fields: Any) -> edit_pb2.EditOperation:
    return edit_pb2.EditOperation(add_task=edit_pb2.AddTaskOperation(
        task=task_star_pb2.TaskStar(task_id=task_id, description="new", **fields)))


def add_line(src: str, dst: str, **fields: Any) -> edit_pb2.EditOperation:
    return edit_pb2.EditOperation(add_dependency=edit_pb2.AddDependencyOperation(
        dependency=orion_pb2.TaskStarLine(from_task_id=src, to_task_id=dst, **fields)))


def update_star(task_id: str, paths: list[str], **fields: Any) -> edit_pb2.EditOperation:
    return edit_pb2.EditOperation(update_task=edit_pb2.UpdateTaskOperation(
        task=task_star_pb2.TaskStar(task_id=task_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths)))


def remove_star(task_id: str) -> edit_pb2.EditOperation:
    return edit_pb2.EditOperation(remove_task=edit_pb2.RemoveTaskOperation(task_id=task_id))


# An edit the running orion cannot take, and the ErrorInfo reasons it may be refused with.
BAD_EDITS: dict[str, tuple[list[edit_pb2.EditOperation], set[str]]] = {
    "remove running": ([remove_star("hang")], {"TASK_RUNNING"}),
    "update running": ([update_star("hang", ["description"], description="x")],
                       {"TASK_RUNNING"}),
    "update finished": ([update_star("done", ["retry_count"], retry_count=2)],
                        {"TASK_NOT_MODIFIABLE"}),
    "remove finished": ([remove_star("done")], {"TASK_NOT_MODIFIABLE"}),
    "line into finished": ([add_line("later", "done")], {"TASK_NOT_MODIFIABLE"}),
    "line into running": ([add_line("later", "hang")], {"TASK_RUNNING"}),
    "unknown star": ([remove_star("ghost")], {"TASK_NOT_FOUND"}),
    "existing star": ([add_star("later")], {"TASK_ALREADY_EXISTS"}),
    "cycle": ([add_star("c1"), add_star("c2"), add_line("c1", "c2"), add_line("c2", "c1")],
              {"DEPENDENCY_CYCLE"}),
    "empty operation": ([edit_pb2.EditOperation()], {"INVALID_EDIT"}),
    "read-only field": ([update_star("later", ["status"])], {"INVALID_EDIT"}),
    "unknown enum": ([add_star("e1", device_type=77)], {"INVALID_EDIT"}),
    "bad condition": ([add_star("b1"), add_line("b1", "later", dependency_type=4,
                                                condition=orion_pb2.Condition(
                                                    expression="result.x =="))],
                      {"INVALID_EDIT"}),
    "negative retries": ([update_star("later", ["retry_count"], retry_count=-3)],
                         {"INVALID_EDIT", "INVALID_FIELD"}),
    "oversized task_data": ([update_star("later", ["task_data"],
                                         task_data=struct_pb2.Struct(fields={"b": struct_pb2.Value(
                                             string_value="x" * MAX_TASK_DATA)}))],
                            {"TASK_DATA_TOO_LARGE"}),
}


@st.composite
def good_edits(draw: st.DrawFn) -> list[edit_pb2.EditOperation]:
    """Edits the running orion could take, in an order that makes sense."""
    ops: list[edit_pb2.EditOperation] = []
    added: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["add", "line", "update", "remove"]))
        if kind == "add" or not added:
            added.append(f"g{len(added)}")
            ops.append(add_star(added[-1], task_data=struct_pb2.Struct()))
        elif kind == "line" and len(added) >= 2:
            ops.append(add_line(added[-2], added[-1]))
        elif kind == "update":
            ops.append(update_star(draw(st.sampled_from(["later", *added])), ["description"],
                                   description=draw(TEXT)))
        else:
            ops.append(add_line("done", added[-1]))
    return ops


@FUZZ
@given(good=good_edits(), bad=st.sampled_from(sorted(BAD_EDITS)), where=st.integers(0, 4))
def test_an_edit_batch_with_one_bad_edit_changes_nothing(env: Env,
                                                         good: list[edit_pb2.EditOperation],
                                                         bad: str, where: int) -> None:
    bad_ops, reasons = BAD_EDITS[bad]
    at = min(where, len(good))
    ops = good[:at] + bad_ops + good[at:]
    try:
        env.stubs.synchronizer.EditOrion(synchronizer_service_pb2.EditOrionRequest(
            orion_id="live", operations=ops), timeout=WAIT)
    except grpc.RpcError as error:
        refused = decode(error)
    else:
        raise AssertionError(f"the batch with '{bad}' was accepted")
    assert refused.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.ALREADY_EXISTS,
                            grpc.StatusCode.FAILED_PRECONDITION), refused
    assert refused.reason in reasons, (bad, refused)
    env.world.assert_untouched()
