"""Domain errors -> gRPC status + google.rpc.Status details, decoded as a client would."""

from __future__ import annotations

import grpc
import pytest
from api_support import EventWaiter, fleet
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from orion_grpc.api.errors import CODE_BY_CATEGORY, STATUS_BYTES_BUDGET, build_status, status_for
from orion_grpc.core import (
    ErrorCategory,
    EventType,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Violation,
)
from orion_grpc.gen.orion.v1 import (
    edit_pb2,
    manager_service_pb2,
    manager_service_pb2_grpc,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    orion_pb2,
    synchronizer_service_pb2,
    synchronizer_service_pb2_grpc,
    task_star_pb2,
)


def details(status):
    """(ErrorInfo, BadRequest | None) of a google.rpc.Status."""
    info, bad = None, None
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
    return info, bad


async def failing(call):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    err = raised.value
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == err.code().value[0] and status.message == err.details()
    return err, *details(status)


# ---------------------------------------------------------------------- unit
def test_every_category_has_one_status_code():
    assert set(CODE_BY_CATEGORY) == set(ErrorCategory)


def test_status_carries_error_info_and_violations():
    exc = InvalidArgumentError("bad", "INVALID_ORION",
                               [Violation("orion.tasks[0].x", "wrong", "INVALID_FIELD")],
                               {"orion_id": "o1"})
    info, bad = details(status_for(exc))
    assert (info.reason, info.domain, dict(info.metadata)) == \
        ("INVALID_ORION", "orion.v1", {"orion_id": "o1"})
    assert [(v.field, v.description, v.reason) for v in bad.field_violations] == \
        [("orion.tasks[0].x", "wrong", "INVALID_FIELD")]
    status = status_for(NotFoundError("Task x not found", "TASK_NOT_FOUND"))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert details(status)[1] is None  # no BadRequest without violations


def test_huge_violation_lists_fit_in_a_trailer():
    violations = [Violation(f"orion.tasks[{i}].task_id", "x" * 80, "DUPLICATE_TASK_ID")
                  for i in range(5000)]
    status = build_status(grpc.StatusCode.INVALID_ARGUMENT, "m" * 10_000, "INVALID_ORION",
                          violations)
    assert status.ByteSize() <= STATUS_BYTES_BUDGET
    info, bad = details(status)
    kept = len(bad.field_violations)
    assert 0 < kept < 5000
    assert info.metadata["violations_omitted"] == str(5000 - kept)
    assert info.metadata["violations_total"] == "5000"
    assert len(status.message) <= 1024


# ---------------------------------------------------------------------- over the wire
async def test_invalid_orion_lists_one_violation_per_problem(channel):
    stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
    orion = orion_pb2.TaskOrion()
    orion.tasks.add(task_id="a", device_type=99)
    orion.tasks.add(task_id="a")
    orion.dependencies.add(from_task_id="a", to_task_id="nowhere")
    request = orchestrator_service_pb2.SubmitOrionRequest(orion=orion, assignment_strategy=42)
    err, info, bad = await failing(stub.SubmitOrion(request, timeout=5))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.reason == "INVALID_ORION" and info.domain == "orion.v1"
    assert [(v.field, v.reason) for v in bad.field_violations] == [
        ("assignment_strategy", "UNKNOWN_ENUM_VALUE"),
        ("orion.tasks[0].device_type", "UNKNOWN_ENUM_VALUE"),
        ("orion.tasks[1].task_id", "DUPLICATE_TASK_ID"),
        ("orion.dependencies[0].to_task_id", "DANGLING_DEPENDENCY"),
    ]
    # nothing was stored
    manager = manager_service_pb2_grpc.ManagerServiceStub(channel)
    listed = await manager.ListOrions(manager_service_pb2.ListOrionsRequest(), timeout=5)
    assert listed.total_size == 0


async def test_not_found_and_already_exists(server, channel):
    await fleet(server, "d1", hang_task_ids={"a"})
    stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
    err, info, _ = await failing(stub.GetOrionStatus(
        orchestrator_service_pb2.OrchestratorServiceGetOrionStatusRequest(orion_id="nope"),
        timeout=5))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert (info.reason, dict(info.metadata)) == ("ORION_NOT_FOUND", {"orion_id": "nope"})
    orion = orion_pb2.TaskOrion(orion_id="dup", tasks=[
        task_star_pb2.TaskStar(task_id="a", target_device_id="d1")])
    await stub.SubmitOrion(orchestrator_service_pb2.SubmitOrionRequest(orion=orion), timeout=5)
    err, info, _ = await failing(stub.SubmitOrion(
        orchestrator_service_pb2.SubmitOrionRequest(orion=orion), timeout=5))
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS and info.reason == "ORION_ALREADY_EXISTS"


async def test_edit_breaking_an_invariant_is_failed_precondition(server, channel):
    await fleet(server, "d1", hang_task_ids={"b"})
    events = EventWaiter(server)
    stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
    orion = orion_pb2.TaskOrion(orion_id="o", tasks=[
        task_star_pb2.TaskStar(task_id="b", target_device_id="d1")])
    await stub.SubmitOrion(orchestrator_service_pb2.SubmitOrionRequest(orion=orion), timeout=5)
    sync = synchronizer_service_pb2_grpc.SynchronizerServiceStub(channel)
    await events.wait(EventType.TASK_STARTED, "b")
    running = server.engine.orchestrator.get_running_orion("o").get_task("b")
    assert running.status.value == "running"
    edit = synchronizer_service_pb2.EditOrionRequest(orion_id="o", operations=[
        edit_pb2.EditOperation(add_task=edit_pb2.AddTaskOperation(
            task=task_star_pb2.TaskStar(task_id="c", target_device_id="d1"))),
        edit_pb2.EditOperation(remove_task=edit_pb2.RemoveTaskOperation(task_id="b"))])
    err, info, bad = await failing(sync.EditOrion(edit, timeout=5))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "TASK_RUNNING"
    assert info.metadata["edit_index"] == "1" and info.metadata["rule"] == "I3"
    assert [v.field for v in bad.field_violations] == ["edits[1]"]
    assert server.engine.orchestrator.get_running_orion("o").get_task("c") is None  # atomic


async def test_version_conflict_is_aborted(server, channel):
    manager = manager_service_pb2_grpc.ManagerServiceStub(channel)
    orion = orion_pb2.TaskOrion(orion_id="v", tasks=[task_star_pb2.TaskStar(task_id="a")])
    registered = await manager.RegisterOrion(
        manager_service_pb2.RegisterOrionRequest(orion=orion), timeout=5)
    assert registered.orion.version == 1
    sync = synchronizer_service_pb2_grpc.SynchronizerServiceStub(channel)
    err, info, _ = await failing(sync.EditOrion(synchronizer_service_pb2.EditOrionRequest(
        orion_id="v", expected_version=7), timeout=5))
    assert err.code() is grpc.StatusCode.ABORTED
    assert (info.reason, info.metadata["current_version"]) == ("VERSION_MISMATCH", "1")


async def test_unexpected_exceptions_are_internal_and_logged(server, channel, monkeypatch,
                                                             caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("kaput")

    monkeypatch.setattr(server.engine.manager, "list_orions", boom)
    manager = manager_service_pb2_grpc.ManagerServiceStub(channel)
    err, info, _ = await failing(manager.ListOrions(manager_service_pb2.ListOrionsRequest(),
                                                    timeout=5))
    assert err.code() is grpc.StatusCode.INTERNAL and info.reason == "INTERNAL"
    assert "RuntimeError: kaput" in err.details()
    assert "unexpected error in ManagerServicer.ListOrions" in caplog.text


async def test_client_raises_the_engine_exceptions(client, server):
    with pytest.raises(InvalidArgumentError) as info:
        await client.submit_orion(orion_pb2.TaskOrion(tasks=[
            task_star_pb2.TaskStar(task_id="a"), task_star_pb2.TaskStar(task_id="a")]))
    assert info.value.reason == "INVALID_ORION"
    assert [v.reason for v in info.value.violations] == ["DUPLICATE_TASK_ID"]
    with pytest.raises(NotFoundError):
        await client.cancel_orion("ghost")
    assert await client.get_orion_status("ghost") is None
    await fleet(server, "d1", hang_task_ids={"a"})
    await client.submit_orion({"orion_id": "r", "tasks": [{"task_id": "a",
                                                           "target_device_id": "d1"}]})
    with pytest.raises(FailedPreconditionError) as precondition:
        await client.unregister_orion("r")
    assert precondition.value.reason == "ORION_RUNNING"
