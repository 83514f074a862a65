"""Malformed and hostile requests against a real server (grpc.aio on loopback, generated
stubs): each is answered with the right status code, ErrorInfo reason and field violation,
a message that says what to fix — and every orion the server accepted before is untouched.

The server holds three accepted orions: ``reg`` (registered, never run), ``live`` (running:
``done`` finished, ``hang`` running on a device that never answers, ``later`` waiting for
``hang``) and ``fin`` (finished)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from guard_support import (
    WAIT,
    Env,
    Rejection,
    ServerThread,
    Stubs,
    live_env,
    rejection,
    simple_orion,
)

from orion_grpc.api.limits import MAX_JSON_DEPTH
from orion_grpc.core.conditions import MAX_CONDITION_LENGTH
from orion_grpc.gen.orion.v1 import (
    edit_pb2,
    event_service_pb2,
    manager_service_pb2,
    orchestrator_service_pb2,
    orion_pb2,
    synchronizer_service_pb2,
    task_star_pb2,
)

CODE = grpc.StatusCode
MAX_STARS = 300
MAX_RECEIVE = 256 * 1024


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with live_env(ServerThread(max_stars=MAX_STARS, max_lines=2 * MAX_STARS,
                               max_task_data_bytes=4096,
                               max_receive_message_bytes=MAX_RECEIVE)) as env:
        stubs, world = env.stubs, env.world
        stubs.manager.RegisterOrion(manager_service_pb2.RegisterOrionRequest(
            orion=simple_orion("reg", "a", "b", "c")), timeout=WAIT)
        world.accept("reg")
        result = stubs.orchestrator.OrchestrateOrion(orchestrator_service_pb2.OrchestrateOrionRequest(
            orion=simple_orion("fin", "x", "y"),
            assignment_strategy=orion_pb2.ASSIGNMENT_STRATEGY_CAPABILITY_MATCH), timeout=WAIT)
        assert result.result.status == orion_pb2.ORION_STATE_COMPLETED
        world.accept("fin")
        yield env


# ---------------------------------------------------------------------- request builders
def task(task_id: str, **fields: Any) -> task_star_pb2.TaskStar:
    fields.setdefault("description", f"do {task_id}")
    return task_star_pb2.TaskStar(task_id=task_id, **fields)


def line(src: str, dst: str, **fields: Any) -> orion_pb2.TaskStarLine:
    return orion_pb2.TaskStarLine(from_task_id=src, to_task_id=dst, **fields)


def orion(orion_id: str, tasks: list[task_star_pb2.TaskStar],
          lines: list[orion_pb2.TaskStarLine] = ()) -> orion_pb2.TaskOrion:  # type: ignore[assignment]
    return orion_pb2.TaskOrion(orion_id=orion_id, tasks=tasks, dependencies=list(lines))


def conditional(expression: str) -> orion_pb2.TaskOrion:
    return orion("cond", [task("a"), task("b")], [line(
        "a", "b", dependency_type=orion_pb2.DEPENDENCY_TYPE_CONDITIONAL,
        condition=orion_pb2.Condition(expression=expression))])


def deep_struct(depth: int) -> Any:
    from google.protobuf import struct_pb2

    value = struct_pb2.Struct()
    value.update({"leaf": True})
    for _ in range(depth - 1):
        outer = struct_pb2.Struct()
        outer.fields["k"].struct_value.CopyFrom(value)
        value = outer
    return value


def ld(field_number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand (for bytes protobuf refuses to
    build: nesting beyond its limit)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def too_deep_register_request() -> bytes:
    struct = b""
    for _ in range(40):  # Struct.fields{key, Value.struct_value}: beyond protobuf's 100 levels
        struct = ld(1, ld(1, b"k") + ld(2, ld(5, struct)))
    star = ld(1, b"a") + ld(10, struct)  # TaskStar.task_id, .task_data
    return ld(1, ld(1, b"deep") + ld(4, star))  # RegisterOrionRequest.orion{orion_id, tasks}


def register(stubs: Stubs, pb: orion_pb2.TaskOrion) -> Any:
    return stubs.manager.RegisterOrion(manager_service_pb2.RegisterOrionRequest(orion=pb),
                                       timeout=WAIT)


def submit(stubs: Stubs, pb: orion_pb2.TaskOrion, **fields: Any) -> Any:
    fields.setdefault("assignment_strategy", orion_pb2.ASSIGNMENT_STRATEGY_CAPABILITY_MATCH)
    return stubs.orchestrator.SubmitOrion(
        orchestrator_service_pb2.SubmitOrionRequest(orion=pb, **fields), timeout=WAIT)


def edit(stubs: Stubs, orion_id: str, *ops: edit_pb2.EditOperation, **fields: Any) -> Any:
    return stubs.synchronizer.EditOrion(synchronizer_service_pb2.EditOrionRequest(
        orion_id=orion_id, operations=list(ops), **fields), timeout=WAIT)


def update(task_id: str, **fields: Any) -> edit_pb2.EditOperation:
    return edit_pb2.EditOperation(update_task=edit_pb2.UpdateTaskOperation(
        task=task_star_pb2.TaskStar(task_id=task_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=list(fields))))


def remove(task_id: str) -> edit_pb2.EditOperation:
    return edit_pb2.EditOperation(remove_task=edit_pb2.RemoveTaskOperation(task_id=task_id))


def add(pb: task_star_pb2.TaskStar) -> edit_pb2.EditOperation:
    return edit_pb2.EditOperation(add_task=edit_pb2.AddTaskOperation(task=pb))


def add_line(src: str, dst: str) -> edit_pb2.EditOperation:
    return edit_pb2.EditOperation(add_dependency=edit_pb2.AddDependencyOperation(
        dependency=line(src, dst)))


def first_event(stubs: Stubs, **fields: Any) -> Any:
    return next(iter(stubs.events.WatchEvents(event_service_pb2.WatchEventsRequest(**fields),
                                              timeout=WAIT)))


# ---------------------------------------------------------------------- the cases
@dataclass
class Case:
    """A bad call and how it must be answered: ``violation`` is (field, reason) of one
    BadRequest entry (None: no BadRequest expected); ``hint`` is in the message."""

    call: Callable[[Stubs], Any]
    code: grpc.StatusCode
    reason: str
    violation: tuple[str, str] | None
    hint: str


def nan_task() -> task_star_pb2.TaskStar:
    star = task("a")
    star.task_data.fields["ratio"].number_value = float("nan")
    return star


def big_data_task() -> task_star_pb2.TaskStar:
    star = task("a")
    star.task_data.update({"blob": "x" * 5000})
    return star


def reuse_request_id(stubs: Stubs) -> None:
    """The same request_id for two different CancelOrion requests: the first (of an orion
    that has finished) changes nothing, the second must not cancel ``reg``."""
    cancel = stubs.orchestrator.CancelOrion
    first = cancel(orchestrator_service_pb2.CancelOrionRequest(orion_id="fin",
                                                               request_id="rid-1"), timeout=WAIT)
    assert not first.cancelled
    cancel(orchestrator_service_pb2.CancelOrionRequest(orion_id="reg", request_id="rid-1"),
           timeout=WAIT)


def ring(n: int) -> orion_pb2.TaskOrion:
    return orion("ring", [task(f"t{i}") for i in range(n)],
                 [line(f"t{i}", f"t{(i + 1) % n}") for i in range(n)])


CASES: dict[str, Case] = {
    # --- DAG shape
    "cycle": Case(lambda s: submit(s, orion("c", [task("a"), task("b")],
                                             [line("a", "b"), line("b", "a")])),
                  CODE.INVALID_ARGUMENT, "INVALID_ORION", ("orion.dependencies", "CYCLE"),
                  "DAG contains cycles (stars involved: ['a', 'b'])"),
    "self-loop": Case(lambda s: submit(s, orion("c", [task("a")], [line("a", "a")])),
                      CODE.INVALID_ARGUMENT, "INVALID_ORION",
                      ("orion.dependencies[0]", "SELF_LOOP"), "a -> a would create a cycle"),
    "dangling edge": Case(lambda s: register(s, orion("c", [task("a")], [line("a", "ghost")])),
                          CODE.INVALID_ARGUMENT, "INVALID_ORION",
                          ("orion.dependencies[0].to_task_id", "DANGLING_DEPENDENCY"),
                          "non-existent target task ghost"),
    "edge without ends": Case(lambda s: register(s, orion("c", [task("a")], [line("", "a")])),
                              CODE.INVALID_ARGUMENT, "INVALID_ORION",
                              ("orion.dependencies[0].from_task_id", "MISSING_FIELD"),
                              "must name the source star"),
    "duplicate star ids": Case(lambda s: submit(s, orion("c", [task("a"), task("a")])),
                               CODE.INVALID_ARGUMENT, "INVALID_ORION",
                               ("orion.tasks[1].task_id", "DUPLICATE_TASK_ID"),
                               "Task with ID a already exists"),
    "duplicate line ids": Case(lambda s: register(s, orion(
        "c", [task("a"), task("b"), task("d")],
        [line("a", "b", line_id="l"), line("b", "d", line_id="l")])),
        CODE.INVALID_ARGUMENT, "INVALID_ORION", ("orion.dependencies[1].line_id",
                                                 "DUPLICATE_LINE_ID"), "Dependency with ID l"),
    "duplicate orion id": Case(lambda s: submit(s, simple_orion("reg", "a")), CODE.ALREADY_EXISTS,
                               "ORION_ALREADY_EXISTS", None, "choose another orion_id"),
    "huge ring": Case(lambda s: register(s, ring(MAX_STARS)), CODE.INVALID_ARGUMENT,
                      "INVALID_ORION", ("orion.dependencies", "CYCLE"), "…"),
    "too many stars": Case(lambda s: submit(s, ring(MAX_STARS + 1)), CODE.INVALID_ARGUMENT,
                           "TOO_MANY_STARS", ("orion.tasks", "TOO_MANY_STARS"),
                           "--max-stars / ORION_MAX_STARS"),
    # --- values
    "unknown device type": Case(lambda s: submit(s, orion("c", [task("a", device_type=99)])),
                                CODE.INVALID_ARGUMENT, "INVALID_ORION",
                                ("orion.tasks[0].device_type", "UNKNOWN_ENUM_VALUE"),
                                "unknown DeviceType value 99; expected one of"),
    "unknown dependency type": Case(lambda s: register(s, orion(
        "c", [task("a"), task("b")], [line("a", "b", dependency_type=42)])),
        CODE.INVALID_ARGUMENT, "INVALID_ORION",
        ("orion.dependencies[0].dependency_type", "UNKNOWN_ENUM_VALUE"), "DependencyType"),
    "unknown strategy": Case(lambda s: submit(s, simple_orion("c", "a"), assignment_strategy=7),
                             CODE.INVALID_ARGUMENT, "INVALID_ORION",
                             ("assignment_strategy", "UNKNOWN_ENUM_VALUE"),
                             "ASSIGNMENT_STRATEGY_CAPABILITY_MATCH"),
    "unknown event type": Case(lambda s: first_event(s, types=[99]), CODE.INVALID_ARGUMENT,
                               "INVALID_FILTER", ("types[0]", "UNKNOWN_ENUM_VALUE"),
                               "EVENT_TYPE_TASK_STARTED"),
    "negative retries": Case(lambda s: register(s, orion("c", [task("a", retry_count=-1)])),
                             CODE.INVALID_ARGUMENT, "INVALID_ORION",
                             ("orion.tasks[0].retry_count", "INVALID_FIELD"), "non-negative"),
    "control character in id": Case(lambda s: register(s, orion("c\x1b[2J", [task("a\nb")])),
                                    CODE.INVALID_ARGUMENT, "INVALID_ORION",
                                    ("orion.tasks[0].task_id", "INVALID_ID"),
                                    "control character"),
    "oversized id": Case(lambda s: submit(s, orion("c", [task("x" * 1000)])),
                         CODE.INVALID_ARGUMENT, "INVALID_ORION",
                         ("orion.tasks[0].task_id", "INVALID_ID"), "at most 256 characters"),
    "oversized device id": Case(lambda s: s.orchestrator.ExecuteSingleTask(
        orchestrator_service_pb2.ExecuteSingleTaskRequest(task=task("a", target_device_id="d" * 300)),
        timeout=WAIT), CODE.INVALID_ARGUMENT, "INVALID_TASK",
        ("task.target_device_id", "INVALID_ID"), "at most 256"),
    "oversized request": Case(
        lambda s: register(s, orion("c", [task("a", description="x" * MAX_RECEIVE)])),
        CODE.RESOURCE_EXHAUSTED, "", None, f"Received message larger than max (262162 vs. {MAX_RECEIVE})"),
    "task_data too large": Case(lambda s: submit(s, orion("c", [task("b"), big_data_task()])),
                                CODE.INVALID_ARGUMENT, "TASK_DATA_TOO_LARGE",
                                ("orion.tasks[1].task_data", "TASK_DATA_TOO_LARGE"),
                                "by reference"),
    "NaN in task_data": Case(lambda s: submit(s, orion("c", [nan_task()])),
                             CODE.INVALID_ARGUMENT, "INVALID_JSON",
                             ("orion.tasks[0].task_data.ratio", "INVALID_JSON"),
                             "not a JSON number"),
    "deeply nested task_data": Case(lambda s: register(s, orion("c", [task(
        "a", task_data=deep_struct(MAX_JSON_DEPTH + 1))])), CODE.INVALID_ARGUMENT,
        "INVALID_JSON", ("orion.tasks[0].task_data" + ".k" * MAX_JSON_DEPTH, "JSON_TOO_DEEP"),
        f"at most {MAX_JSON_DEPTH} levels"),
    "nested beyond protobuf's limit": Case(
        lambda s: s.raw("/orion.v1.ManagerService/RegisterOrion")(too_deep_register_request(),
                                                                  timeout=WAIT),
        CODE.INVALID_ARGUMENT, "MALFORMED_REQUEST", None, "nested too deeply"),
    "invalid UTF-8": Case(lambda s: s.raw("/orion.v1.ManagerService/RegisterOrion")(
        manager_service_pb2.RegisterOrionRequest(orion=simple_orion("XX", "a"))
        .SerializeToString().replace(b"XX", b"\xff\xfe"), timeout=WAIT),
        CODE.INVALID_ARGUMENT, "MALFORMED_REQUEST", None, "not UTF-8"),
    "garbage bytes": Case(lambda s: s.raw("/orion.v1.OrchestratorService/SubmitOrion")(
        b"\x0a\xff\xff\xff\xff\x0f", timeout=WAIT),
        CODE.INVALID_ARGUMENT, "MALFORMED_REQUEST", None, "orion.v1.SubmitOrionRequest"),
    # --- missing fields
    "no orion": Case(lambda s: s.orchestrator.SubmitOrion(
        orchestrator_service_pb2.SubmitOrionRequest(), timeout=WAIT),
        CODE.INVALID_ARGUMENT, "INVALID_ORION", ("orion", "MISSING_FIELD"), "required"),
    "no orion id": Case(lambda s: s.manager.GetOrion(manager_service_pb2.GetOrionRequest(),
                                                     timeout=WAIT),
                        CODE.INVALID_ARGUMENT, "MISSING_FIELD", ("orion_id", "MISSING_FIELD"),
                        "orion_id is required"),
    "no strategy": Case(lambda s: s.manager.AssignDevicesAutomatically(
        manager_service_pb2.AssignDevicesAutomaticallyRequest(orion_id="reg"), timeout=WAIT),
        CODE.INVALID_ARGUMENT, "INVALID_ARGUMENT", ("strategy", "MISSING_FIELD"),
        "AssignmentStrategy is required"),
    "no target": Case(lambda s: s.manager.ValidateOrionAssignments(
        manager_service_pb2.ValidateOrionAssignmentsRequest(), timeout=WAIT),
        CODE.INVALID_ARGUMENT, "INVALID_ARGUMENT", ("target", "MISSING_FIELD"),
        "set orion_id"),
    "empty edit operation": Case(lambda s: edit(s, "live", edit_pb2.EditOperation()),
                                 CODE.INVALID_ARGUMENT, "INVALID_EDIT",
                                 ("operations[0]", "MISSING_FIELD"), "no operation set"),
    "unknown orion": Case(lambda s: s.orchestrator.CancelOrion(
        orchestrator_service_pb2.CancelOrionRequest(orion_id="nope"), timeout=WAIT),
        CODE.NOT_FOUND, "ORION_NOT_FOUND", None, "Orion nope not found"),
    # --- edits against running and finished stars
    "remove a running star": Case(lambda s: edit(s, "live", remove("hang")),
                                  CODE.FAILED_PRECONDITION, "TASK_RUNNING",
                                  ("edits[0]", "TASK_RUNNING"), "Cannot remove running task hang"),
    "change a running star": Case(lambda s: edit(s, "live", update("hang", description="x")),
                                  CODE.FAILED_PRECONDITION, "TASK_RUNNING",
                                  ("edits[0]", "TASK_RUNNING"), "Cannot modify running task hang"),
    "change a finished star": Case(lambda s: edit(s, "live", update("done", description="x")),
                                   CODE.FAILED_PRECONDITION, "TASK_NOT_MODIFIABLE",
                                   ("edits[0]", "TASK_NOT_MODIFIABLE"),
                                   "only pending or waiting_dependency tasks can be changed"),
    "line into a finished star": Case(lambda s: edit(s, "live", add_line("later", "done")),
                                      CODE.FAILED_PRECONDITION, "TASK_NOT_MODIFIABLE",
                                      ("edits[0]", "TASK_NOT_MODIFIABLE"), "task done"),
    "valid edit, then a bad one": Case(lambda s: edit(s, "live", add(task("new")), remove("hang")),
                                       CODE.FAILED_PRECONDITION, "TASK_RUNNING",
                                       ("edits[1]", "TASK_RUNNING"), "Edit 1 rejected"),
    "edit an unknown star": Case(lambda s: edit(s, "live", remove("ghost")), CODE.NOT_FOUND,
                                 "TASK_NOT_FOUND", ("edits[0]", "TASK_NOT_FOUND"),
                                 "Task ghost not found"),
    "add an existing star": Case(lambda s: edit(s, "live", add(task("later"))),
                                 CODE.ALREADY_EXISTS, "TASK_ALREADY_EXISTS",
                                 ("edits[0]", "TASK_ALREADY_EXISTS"), "already exists"),
    "update a read-only field": Case(lambda s: edit(s, "live", edit_pb2.EditOperation(
        update_task=edit_pb2.UpdateTaskOperation(task=task_star_pb2.TaskStar(task_id="later"),
                                                 update_mask=field_mask_pb2.FieldMask(
                                                     paths=["status"])))),
        CODE.INVALID_ARGUMENT, "INVALID_EDIT",
        ("operations[0].update_task.update_mask", "UNKNOWN_FIELD"), "cannot be updated"),
    "edit a finished orion": Case(lambda s: edit(s, "fin", add(task("z"))),
                                  CODE.FAILED_PRECONDITION, "ORION_FINISHED", None,
                                  "submit a new orion"),
    "validate an edit of a finished orion": Case(
        lambda s: edit(s, "fin", add(task("z")), validate_only=True),
        CODE.FAILED_PRECONDITION, "ORION_FINISHED", None, "has finished (completed)"),
    "merge into a finished orion": Case(lambda s: s.synchronizer.MergeAndSyncOrion(
        synchronizer_service_pb2.MergeAndSyncOrionRequest(
            orion_id="fin", orion=simple_orion("fin", "x", "y", "z")), timeout=WAIT),
        CODE.FAILED_PRECONDITION, "ORION_FINISHED", None, "has finished"),
    "edit growing beyond the limit": Case(
        lambda s: edit(s, "live", *[add(task(f"n{i}")) for i in range(MAX_STARS)]),
        CODE.INVALID_ARGUMENT, "TOO_MANY_STARS", ("operations", "TOO_MANY_STARS"),
        "after this edit orion live would have"),
    "edit with oversized task_data": Case(
        lambda s: edit(s, "live", update("later", task_data=big_data_task().task_data)),
        CODE.INVALID_ARGUMENT, "TASK_DATA_TOO_LARGE",
        ("operations[0].update_task.task.task_data", "TASK_DATA_TOO_LARGE"), "bytes"),
    "unregister a running orion": Case(lambda s: s.manager.UnregisterOrion(
        manager_service_pb2.UnregisterOrionRequest(orion_id="live"), timeout=WAIT),
        CODE.FAILED_PRECONDITION, "ORION_RUNNING", None, "cancel it (CancelOrion)"),
    # --- conditions
    "condition that does not parse": Case(lambda s: submit(s, conditional("result.x ==")),
                                          CODE.INVALID_ARGUMENT, "INVALID_ORION",
                                          ("orion.dependencies[0].condition", "INVALID_CONDITION"),
                                          "unexpected end of expression"),
    "condition importing a module": Case(
        lambda s: submit(s, conditional("__import__('os').system('id') == 0")),
        CODE.INVALID_ARGUMENT, "INVALID_ORION",
        ("orion.dependencies[0].condition", "INVALID_CONDITION"),
        "unknown function '__import__' (supported:"),
    "condition calling eval": Case(lambda s: register(s, conditional('eval("1") == 1')),
                                   CODE.INVALID_ARGUMENT, "INVALID_ORION",
                                   ("orion.dependencies[0].condition", "INVALID_CONDITION"),
                                   "unknown function 'eval'"),
    "condition with a lambda": Case(lambda s: register(s, conditional("(lambda: 1)() == 1")),
                                    CODE.INVALID_ARGUMENT, "INVALID_ORION",
                                    ("orion.dependencies[0].condition", "INVALID_CONDITION"),
                                    "Invalid condition"),
    "condition with a template": Case(lambda s: register(s, conditional("{{7*7}} == 49")),
                                      CODE.INVALID_ARGUMENT, "INVALID_ORION",
                                      ("orion.dependencies[0].condition", "INVALID_CONDITION"),
                                      "Invalid condition"),
    "condition calling a method of an object": Case(
        lambda s: register(s, conditional("result.__class__.__subclasses__() == []")),
        CODE.INVALID_ARGUMENT, "INVALID_ORION",
        ("orion.dependencies[0].condition", "INVALID_CONDITION"), "unknown method"),
    "condition with a backreference": Case(
        lambda s: register(s, conditional(r"result.s.matches('(a)\\1')")),
        CODE.INVALID_ARGUMENT, "INVALID_ORION",
        ("orion.dependencies[0].condition", "INVALID_CONDITION"), "invalid regular expression"),
    "condition too long": Case(
        lambda s: register(s, conditional("success" + " && success" * MAX_CONDITION_LENGTH)),
        CODE.INVALID_ARGUMENT, "INVALID_ORION",
        ("orion.dependencies[0].condition", "INVALID_CONDITION"), "condition is too long"),
    "condition nested too deeply": Case(
        lambda s: register(s, conditional("(" * 100 + "success" + ")" * 100)),
        CODE.INVALID_ARGUMENT, "INVALID_ORION",
        ("orion.dependencies[0].condition", "INVALID_CONDITION"), "nested too deeply"),
    # --- tokens and pages
    "garbage page token": Case(lambda s: s.manager.ListOrions(
        manager_service_pb2.ListOrionsRequest(page_token="garbage"), timeout=WAIT),
        CODE.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", ("page_token", "INVALID_PAGE_TOKEN"),
        "pass the next_page_token"),
    "negative page size": Case(lambda s: s.manager.ListOrions(
        manager_service_pb2.ListOrionsRequest(page_size=-1), timeout=WAIT),
        CODE.INVALID_ARGUMENT, "INVALID_PAGE_SIZE", ("page_size", "INVALID_PAGE_SIZE"),
        "must not be negative"),
    "garbage resume token": Case(lambda s: first_event(s, resume_token="zzz"),
                                 CODE.INVALID_ARGUMENT, "INVALID_RESUME_TOKEN",
                                 ("resume_token", "INVALID_RESUME_TOKEN"), "unchanged"),
    "request id reused": Case(reuse_request_id, CODE.INVALID_ARGUMENT, "REQUEST_ID_REUSED",
                              ("request_id", "REQUEST_ID_REUSED"), "use a new request_id"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_and_changes_nothing(env: Env, name: str) -> None:
    case = CASES[name]
    refused: Rejection = rejection(lambda: case.call(env.stubs))
    assert refused.code is case.code, refused
    assert refused.reason == case.reason, refused
    if case.violation is not None:
        assert case.violation in refused.violations, refused
    assert case.hint in refused.message, refused
    env.world.assert_untouched()


def test_the_status_of_a_huge_invalid_orion_fits_its_trailer(env: Env) -> None:
    """An orion with a problem in every star: the status keeps the violations that fit and
    says how many it left out."""
    bad = orion("many", [task(f"t{i}", device_type=99) for i in range(MAX_STARS)])
    refused = rejection(lambda: register(env.stubs, bad))
    assert refused.reason == "INVALID_ORION"
    assert 0 < len(refused.violations) < MAX_STARS
    assert int(refused.metadata["violations_omitted"]) + len(refused.violations) == MAX_STARS
    env.world.assert_untouched()


def test_sandbox_escapes_that_parse_only_read_map_keys(env: Env) -> None:
    """``result.__class__`` parses — it is a map key — and can only read the result's data:
    a result without that key makes the condition false, the line unsatisfied."""
    pb = orion("sandbox", [task("a"), task("b")], [line(
        "a", "b", dependency_type=orion_pb2.DEPENDENCY_TYPE_CONDITIONAL,
        condition=orion_pb2.Condition(expression='has(result.__class__) || '
                                                 'result["__globals__"] == 1'))])
    result = env.stubs.orchestrator.OrchestrateOrion(
        orchestrator_service_pb2.OrchestrateOrionRequest(
            orion=pb, assignment_strategy=orion_pb2.ASSIGNMENT_STRATEGY_CAPABILITY_MATCH),
        timeout=WAIT).result
    assert "a" in result.results and "b" not in result.results
    env.world.accept("sandbox")
    env.world.assert_untouched()
