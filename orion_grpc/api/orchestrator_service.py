"""OrchestratorService: run orions on the fleet (reference: TaskOrionOrchestrator)."""

from __future__ import annotations

from typing import Any

import grpc

from ..core import NotFoundError, TaskExecutionError, TaskOrion, TaskStatus, UnavailableError
from ..core.spec import orion_from_spec, validate_spec
from ..gen.orion.v1 import orchestrator_service_pb2 as pb
from ..gen.orion.v1 import orchestrator_service_pb2_grpc as pb_grpc
from ..gen.orion.v1 import task_star_pb2
from .convert import (
    Problems,
    device_to_pb,
    orion_name,
    orion_spec_from_pb,
    orion_state_to_pb,
    orion_to_pb,
    result_to_pb,
    status_to_pb,
    strategy_from_pb,
    struct_to_dict,
    task_from_pb,
    task_to_pb,
    value_to_pb,
)
from .errors import rpc_errors
from .state import ApiState, require
from .support import paginate


async def submit_orion(state: ApiState, request: Any) -> TaskOrion:
    """Validate, assign and start the orion of an Orchestrate/SubmitOrion request."""
    problems = Problems()
    strategy = strategy_from_pb(request.assignment_strategy, "assignment_strategy", problems)
    if not request.HasField("orion"):
        problems.add("orion", "the orion to run is required", "MISSING_FIELD")
    state.limits.check_orion(request.orion)
    spec = orion_spec_from_pb(request.orion, "orion", problems)
    problems.extend(validate_spec(spec), "orion")
    problems.raise_if_any("Invalid orion", "INVALID_ORION")
    orion = orion_from_spec(spec, validated=True)
    metadata = struct_to_dict(request.metadata) if request.HasField("metadata") else {}
    await state.runs.start(orion, dict(request.device_assignments), strategy, metadata,
                           request.enable_synchronization)
    state.version(orion.orion_id)
    return orion


def available_devices(state: ApiState, devices: list[dict[str, Any]]) -> list[Any]:
    infos = []
    for row in devices:
        info = state.engine.devices.get_device_info(row["device_id"])
        if info is not None:
            infos.append(info)
    return infos


async def fill_available_devices(state: ApiState, page_size: int, page_token: str,
                                 response: Any) -> Any:
    """One page of online devices into ``response`` (both services' GetAvailableDevices)."""
    infos = available_devices(state, await state.engine.manager.get_available_devices())
    page, token = paginate(infos, lambda d: d.device_id, page_size, page_token, "devices")
    response.next_page_token = token
    for info in page:
        device_to_pb(info, response.devices.add())
    return response


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    def __init__(self, state: ApiState) -> None:
        self.state = state

    @rpc_errors
    async def OrchestrateOrion(self, request: pb.OrchestrateOrionRequest,
                               context: grpc.aio.ServicerContext) -> pb.OrchestrateOrionResponse:
        state = self.state

        async def submit() -> str:
            return (await submit_orion(state, request)).orion_id

        orion_id = await state.idempotency.run("OrchestrateOrion", request, submit)
        result = await state.runs.wait(orion_id)
        response = pb.OrchestrateOrionResponse()
        result_to_pb(result, orion_id, response.result)
        return response

    @rpc_errors
    async def SubmitOrion(self, request: pb.SubmitOrionRequest,
                          context: grpc.aio.ServicerContext) -> pb.SubmitOrionResponse:
        state = self.state

        async def submit() -> pb.SubmitOrionResponse:
            orion = await submit_orion(state, request)
            response = pb.SubmitOrionResponse(orion_id=orion.orion_id,
                                              resource_name=orion_name(orion.orion_id))
            orion_to_pb(orion, state.version(orion.orion_id), response.orion)
            return response

        return await state.idempotency.run("SubmitOrion", request, submit)

    @rpc_errors
    async def ExecuteSingleTask(self, request: pb.ExecuteSingleTaskRequest,
                                context: grpc.aio.ServicerContext) -> pb.ExecuteSingleTaskResponse:
        state = self.state

        async def execute() -> pb.ExecuteSingleTaskResponse:
            state.limits.check_task(request.task)
            task = task_from_pb(request.task)
            orchestrator = state.engine.orchestrator
            target = request.target_device_id or task.target_device_id
            info = state.engine.devices.get_device_info(target) if target else None
            if info is not None and not info.is_online:
                # The engine would raise a plain ValueError deep inside; say it properly.
                raise UnavailableError(f"Device {target} is not connected (status: "
                                       f"{info.status.value})", "DEVICE_NOT_CONNECTED",
                                       {"device_id": target})
            response = pb.ExecuteSingleTaskResponse()
            try:
                result = await orchestrator.execute_single_task(
                    task, request.target_device_id or None)
            except TaskExecutionError as exc:
                task_to_pb(task, None, response.task)
                response.task.status = task_star_pb2.TASK_STATUS_FAILED
                response.task.error = str(exc)
                response.task.error_reason = exc.reason or "task_error"
                response.task.is_terminal = True
            else:
                value_to_pb(result, response.result)
                task_to_pb(task, None, response.task)
                response.task.status = task_star_pb2.TASK_STATUS_COMPLETED
                response.task.is_terminal = True
                value_to_pb(result, response.task.result)
            response.device_id = task.target_device_id or ""
            return response

        return await state.idempotency.run("ExecuteSingleTask", request, execute)

    @rpc_errors
    async def GetOrionStatus(self, request: pb.OrchestratorServiceGetOrionStatusRequest,
                             context: grpc.aio.ServicerContext
                             ) -> pb.OrchestratorServiceGetOrionStatusResponse:
        status = await get_status(self.state, request.orion_id)
        response = pb.OrchestratorServiceGetOrionStatusResponse()
        status_to_pb(status, response.status)
        return response

    @rpc_errors
    async def GetAvailableDevices(self, request: pb.OrchestratorServiceGetAvailableDevicesRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> pb.OrchestratorServiceGetAvailableDevicesResponse:
        return await fill_available_devices(self.state, request.page_size, request.page_token,
                                            pb.OrchestratorServiceGetAvailableDevicesResponse())

    @rpc_errors
    async def CancelOrion(self, request: pb.CancelOrionRequest,
                          context: grpc.aio.ServicerContext) -> pb.CancelOrionResponse:
        state = self.state

        async def cancel() -> pb.CancelOrionResponse:
            orion = state.require_orion(request.orion_id)
            before = [t for t in orion.get_all_tasks() if not t.is_terminal]
            cancelled = await state.engine.orchestrator.cancel_orion(orion.orion_id,
                                                                     request.reason or None)
            response = pb.CancelOrionResponse(cancelled=cancelled,
                                              state=orion_state_to_pb(orion.state))
            response.cancelled_task_ids.extend(t.task_id for t in before
                                               if t.status is TaskStatus.CANCELLED)
            return response

        return await state.idempotency.run("CancelOrion", request, cancel)


async def get_status(state: ApiState, orion_id: str) -> dict[str, Any]:
    require(orion_id, "orion_id")
    status = await state.engine.orchestrator.get_orion_status(orion_id)
    if status is None:
        raise NotFoundError(f"Orion {orion_id} not found", "ORION_NOT_FOUND",
                            {"orion_id": orion_id})
    return status
