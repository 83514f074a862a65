"""End to end: ``orion serve`` in its own process, called over loopback with the real client,
raw generated stubs and the ``orion`` CLI.

Devices: the device daemon is a separate package, so the server runs with
``--fake-devices 3`` (in-process simulated devices, a flag documented as for demos and tests).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from e2e_support import ServerProcess, run_cli
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_status import rpc_status

from orion_grpc.api._reflection import reflection_v1_pb2 as v1_pb2
from orion_grpc.client import OrionClient
from orion_grpc.core import TaskOrion, TaskStar, TaskStarLine
from orion_grpc.gen.orion.v1 import (
    edit_pb2,
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    manager_service_pb2,
    manager_service_pb2_grpc,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    orion_pb2,
    synchronizer_service_pb2,
    synchronizer_service_pb2_grpc,
    task_star_pb2,
)

EXAMPLE = "orion_grpc/examples/release_pipeline.json"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--fake-devices", "3", "--fake-latency", "0.01",
                            "--retry-backoff-base", "0", "--grace", "1")
    yield process
    code, out = process.terminate()
    process.kill()
    assert code == 0 and "server stopped" in out


def linux_chain(orion_id: str, *ids: str) -> TaskOrion:
    orion = TaskOrion(orion_id=orion_id)
    for tid in ids:
        orion.add_task(TaskStar(tid, description=f"do {tid}", device_type="linux"))
    for src, dst in itertools.pairwise(ids):
        orion.add_dependency(TaskStarLine(src, dst, "success_only"))
    return orion


async def test_an_invalid_orion_gets_one_violation_per_problem(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
        orion = orion_pb2.TaskOrion(name="broken")
        orion.tasks.add(task_id="a", priority=9)
        orion.tasks.add(task_id="b")
        orion.tasks.add(task_id="b")
        orion.dependencies.add(from_task_id="a", to_task_id="b")
        orion.dependencies.add(from_task_id="b", to_task_id="a")
        orion.dependencies.add(from_task_id="a", to_task_id="zz")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.OrchestrateOrion(orchestrator_service_pb2.OrchestrateOrionRequest(
                orion=orion), timeout=10)
    err = info.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)
    reasons = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            reasons = {v.field: v.reason for v in bad.field_violations}
        else:
            info_ = error_details_pb2.ErrorInfo()
            detail.Unpack(info_)
            assert (info_.reason, info_.domain) == ("INVALID_ORION", "orion.v1")
    assert reasons == {"orion.tasks[0].priority": "UNKNOWN_ENUM_VALUE",
                       "orion.tasks[2].task_id": "DUPLICATE_TASK_ID",
                       "orion.dependencies[2].to_task_id": "DANGLING_DEPENDENCY",
                       "orion.dependencies": "CYCLE"}


async def test_orchestrate_then_resume_the_event_feed_without_gaps(server):
    async with OrionClient(server.target, timeout=10, run_timeout=30) as client:
        result = await client.orchestrate_orion(linux_chain("e2e-1", "a", "b", "c"),
                                                assignment_strategy="capability_match")
        assert result["status"] == "completed"
        assert result["results"]["c"]["status"] == "ok"
        history = []
        async for event in client.watch_events(include_history=True):
            history.append(event)
            if event.type == event_pb2.EVENT_TYPE_ORION_COMPLETED and event.orion_id == "e2e-1":
                break
        await client.orchestrate_orion(linux_chain("e2e-2", "d", "e"),
                                       assignment_strategy="round_robin")
        cut = len(history) // 2
        resumed = []
        async for event in client.watch_events(resume_token=history[cut].resume_token):
            resumed.append(event)
            if event.type == event_pb2.EVENT_TYPE_ORION_COMPLETED and event.orion_id == "e2e-2":
                break
    assert resumed[:len(history) - cut - 1] == history[cut + 1:]
    sequences = [e.sequence for e in history[:cut + 1] + resumed]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


def test_the_cli_submits_waits_and_reports(server):
    submitted = run_cli("submit", EXAMPLE, "--wait", "--strategy", "capability_match",
                        "--server", server.target)
    assert submitted.returncode == 0, submitted.stderr
    assert "task_completed" in submitted.stdout and "critical path" in submitted.stdout
    # The simulated devices' results lack what the example's conditions test: both
    # conditional stars are skipped, and "notify" (completion_only) runs all the same.
    assert "release_pipeline: COMPLETED - 8 completed, 2 cancelled" in submitted.stdout
    status = run_cli("status", "release_pipeline", "--json", "--server", server.target)
    assert json.loads(status.stdout)["state"] == "completed"
    devices = run_cli("devices", "--json", "--server", server.target)
    assert sorted(d["device_type"] for d in json.loads(devices.stdout)) == \
        ["android", "linux", "windows"]
    again = run_cli("submit", EXAMPLE, "--server", server.target)
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = run_cli("status", "nope", "--server", server.target)
    assert missing.returncode == 2 and "not found" in missing.stderr


@pytest.mark.parametrize("module", [v1_pb2, v1alpha_pb2], ids=["v1", "v1alpha"])
async def test_reflection_describes_a_method(server, module):
    async with grpc.aio.insecure_channel(server.target) as channel:
        info = channel.stream_stream(
            f"/{module.DESCRIPTOR.package}.ServerReflection/ServerReflectionInfo",
            request_serializer=module.ServerReflectionRequest.SerializeToString,
            response_deserializer=module.ServerReflectionResponse.FromString)
        requests = [module.ServerReflectionRequest(list_services=""),
                    module.ServerReflectionRequest(
                        file_containing_symbol="orion.v1.OrchestratorService.OrchestrateOrion")]
        listed, described = [r async for r in info(iter(requests), timeout=10)]
    services = {s.name for s in listed.list_services_response.service}
    assert {"orion.v1.OrchestratorService", "orion.v1.EventService",
            "grpc.health.v1.Health"} <= services
    first = descriptor_pb2.FileDescriptorProto.FromString(
        described.file_descriptor_response.file_descriptor_proto[0])
    (service,) = first.service
    method = next(m for m in service.method if m.name == "OrchestrateOrion")
    assert method.input_type == ".orion.v1.OrchestrateOrionRequest"


async def test_every_rpc_answers_through_the_generated_stubs(server):
    """Each RPC of the four client services once (DeviceService belongs to the device link)."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        orch = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
        mgr = manager_service_pb2_grpc.ManagerServiceStub(channel)
        sync = synchronizer_service_pb2_grpc.SynchronizerServiceStub(channel)
        events = event_service_pb2_grpc.EventServiceStub(channel)
        o, m, s = orchestrator_service_pb2, manager_service_pb2, synchronizer_service_pb2
        orion = orion_pb2.TaskOrion(orion_id="every", tasks=[
            task_star_pb2.TaskStar(task_id="a", device_type=task_star_pb2.DEVICE_TYPE_LINUX)])
        strategy = orion_pb2.ASSIGNMENT_STRATEGY_CAPABILITY_MATCH
        t = 10
        assert (await mgr.RegisterOrion(m.RegisterOrionRequest(orion=orion), timeout=t)).orion_id
        await mgr.AssignDevicesAutomatically(m.AssignDevicesAutomaticallyRequest(
            orion_id="every", strategy=strategy), timeout=t)
        await mgr.ValidateOrionAssignments(m.ValidateOrionAssignmentsRequest(orion_id="every"),
                                           timeout=t)
        await mgr.ReassignTaskDevice(m.ReassignTaskDeviceRequest(
            orion_id="every", task_id="a", new_device_id="fake-linux-1"), timeout=t)
        await mgr.GetTaskDeviceInfo(m.GetTaskDeviceInfoRequest(orion_id="every", task_id="a"),
                                    timeout=t)
        await mgr.GetDeviceUtilization(m.GetDeviceUtilizationRequest(), timeout=t)
        await mgr.GetOrion(m.GetOrionRequest(orion_id="every"), timeout=t)
        await mgr.ListOrions(m.ListOrionsRequest(), timeout=t)
        await mgr.GetOrionStatus(m.ManagerServiceGetOrionStatusRequest(orion_id="every"),
                                 timeout=t)
        await mgr.GetAvailableDevices(m.ManagerServiceGetAvailableDevicesRequest(), timeout=t)
        await mgr.ClearDeviceAssignments(m.ClearDeviceAssignmentsRequest(orion_id="every"),
                                         timeout=t)
        edit = edit_pb2.EditOperation(update_task=edit_pb2.UpdateTaskOperation(
            task=task_star_pb2.TaskStar(task_id="a", description="edited")))
        edit.update_task.update_mask.paths.append("description")
        await sync.EditOrion(s.EditOrionRequest(orion_id="every", operations=[edit]), timeout=t)
        await sync.MergeAndSyncOrion(s.MergeAndSyncOrionRequest(
            orion_id="every", orion=(await mgr.GetOrion(
                m.GetOrionRequest(orion_id="every"), timeout=t)).orion), timeout=t)
        await sync.WaitForPendingModifications(s.WaitForPendingModificationsRequest(), timeout=t)
        await sync.GetPendingModifications(s.GetPendingModificationsRequest(), timeout=t)
        await sync.GetCurrentOrion(s.GetCurrentOrionRequest(orion_id="every"), timeout=t)
        await sync.GetSynchronizerStatistics(s.GetSynchronizerStatisticsRequest(), timeout=t)
        timeout_request = s.SetModificationTimeoutRequest()
        timeout_request.timeout.seconds = 600
        await sync.SetModificationTimeout(timeout_request, timeout=t)
        await sync.ClearPendingModifications(s.ClearPendingModificationsRequest(), timeout=t)
        assert (await mgr.UnregisterOrion(m.UnregisterOrionRequest(orion_id="every"),
                                          timeout=t)).unregistered
        submitted = await orch.SubmitOrion(o.SubmitOrionRequest(
            orion=orion, assignment_strategy=strategy), timeout=t)
        watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(
            orion_id="every", include_history=True, types=[event_pb2.EVENT_TYPE_ORION_COMPLETED]))
        async for response in watch:
            assert response.event.orion_id == submitted.orion_id
            break
        watch.cancel()
        await orch.GetOrionStatus(o.OrchestratorServiceGetOrionStatusRequest(orion_id="every"),
                                  timeout=t)
        await orch.GetAvailableDevices(o.OrchestratorServiceGetAvailableDevicesRequest(),
                                       timeout=t)
        single = await orch.ExecuteSingleTask(o.ExecuteSingleTaskRequest(
            task=task_star_pb2.TaskStar(task_id="one", description="x")), timeout=t)
        assert single.task.status == task_star_pb2.TASK_STATUS_COMPLETED
        again = orion_pb2.TaskOrion(orion_id="every-2", tasks=orion.tasks)
        done = await orch.OrchestrateOrion(o.OrchestrateOrionRequest(
            orion=again, assignment_strategy=strategy), timeout=t)
        assert done.result.status == orion_pb2.ORION_STATE_COMPLETED
        cancel = await orch.CancelOrion(o.CancelOrionRequest(orion_id="every-2"), timeout=t)
        assert not cancel.cancelled  # it had already ended


async def test_sigterm_drains_health_streams_and_runs():
    process = ServerProcess("--fake-devices", "1", "--fake-latency", "60", "--grace", "2")
    try:
        async with grpc.aio.insecure_channel(process.target) as channel, \
                OrionClient(process.target, channel=channel, timeout=10) as client:
            health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            statuses = aiter(health)
            assert (await anext(statuses)).status == health_pb2.HealthCheckResponse.SERVING
            feed = event_service_pb2_grpc.EventServiceStub(channel).WatchEvents(
                event_service_pb2.WatchEventsRequest(types=[event_pb2.EVENT_TYPE_TASK_STARTED]))
            await feed.wait_for_connection()
            run = asyncio.create_task(client.orchestrate_orion(
                linux_chain("long", "slow", "never"), assignment_strategy="round_robin"))
            started = await asyncio.wait_for(anext(aiter(feed)), 10)
            assert started.event.task_id == "slow"
            process.proc.send_signal(signal.SIGTERM)
            update = await asyncio.wait_for(anext(statuses), 10)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(anext(aiter(feed)), 10)
            assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "server shutting down, resume with token" in ended.value.details()
            result = await asyncio.wait_for(run, 10)
            assert result["status"] == "cancelled"  # in-flight runs end, and callers hear it
        code, out = process.terminate(signal.SIGTERM)  # already exiting; idempotent
        assert code == 0 and "server stopped" in out
    finally:
        process.kill()


@pytest.mark.skipif(shutil.which("buf") is None,
                    reason="buf is not installed (scripts/test installs it)")
def test_a_third_party_reflection_client_lists_and_calls(server):
    """buf curl (Go, asks for reflection v1 first) needs no proto files."""
    base = ["buf", "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    url = f"http://{server.target}"
    listed = subprocess.run([*base, "--list-methods", url], capture_output=True, text=True,
                            timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert "orion.v1.OrchestratorService/OrchestrateOrion" in listed.stdout.split()
    called = subprocess.run(
        [*base, "-d", '{"orion": {"tasks": [{"taskId": "a", "deviceType": 99}]}}',
         f"{url}/orion.v1.OrchestratorService/SubmitOrion"],
        capture_output=True, text=True, timeout=30)
    assert called.returncode != 0
    error = json.loads(called.stdout or called.stderr)
    assert error["code"] == "invalid_argument"
    assert [d["type"] for d in error["details"]] == ["google.rpc.ErrorInfo",
                                                     "google.rpc.BadRequest"]
