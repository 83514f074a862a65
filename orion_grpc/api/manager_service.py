"""ManagerService: the orion registry and device assignment (reference: OrionManager)."""

from __future__ import annotations

from collections import defaultdict

import grpc

from ..core import AlreadyExistsError, FailedPreconditionError, NotFoundError, TaskOrion, TaskStar
from ..gen.orion.v1 import manager_service_pb2 as pb
from ..gen.orion.v1 import manager_service_pb2_grpc as pb_grpc
from .convert import (
    ORION_STATE_FROM_PB,
    Problems,
    device_to_pb,
    enum_from_pb,
    orion_from_pb,
    orion_name,
    orion_to_pb,
    status_to_pb,
    strategy_from_pb,
    struct_to_dict,
    summary_to_pb,
    task_to_pb,
    utilization_to_pb,
)
from .errors import rpc_errors
from .orchestrator_service import fill_available_devices, get_status
from .state import ApiState, require
from .support import paginate


class ManagerServicer(pb_grpc.ManagerServiceServicer):
    def __init__(self, state: ApiState) -> None:
        self.state = state

    def _target(self, request: pb.AssignDevicesAutomaticallyRequest
                | pb.ValidateOrionAssignmentsRequest, problems: Problems
                ) -> tuple[TaskOrion | None, bool]:
        """(orion, registered?) named by the request's ``target`` oneof."""
        kind = request.WhichOneof("target")
        if kind == "orion_id":
            return self.state.require_orion(request.orion_id), True
        if kind == "orion":
            problems.raise_if_any()
            self.state.limits.check_orion(request.orion)
            return orion_from_pb(request.orion), False
        problems.add("target", "set orion_id (a registered orion) or orion (an inline one)",
                     "MISSING_FIELD")
        problems.raise_if_any()
        return None, False

    def _changed(self, orion_id: str) -> None:
        self.state.bump_version(orion_id)
        self.state.engine.orchestrator.notify_orion_changed(orion_id)

    @rpc_errors
    async def AssignDevicesAutomatically(self, request: pb.AssignDevicesAutomaticallyRequest,
                                         context: grpc.aio.ServicerContext
                                         ) -> pb.AssignDevicesAutomaticallyResponse:
        async def assign() -> pb.AssignDevicesAutomaticallyResponse:
            problems = Problems()
            strategy = strategy_from_pb(request.strategy, "strategy", problems, required=True)
            problems.raise_if_any()
            orion, registered = self._target(request, problems)
            assert orion is not None and strategy is not None
            plan = await self.state.engine.manager.assign_devices_automatically(
                orion, strategy, dict(request.device_preferences) or None)
            if registered:
                self._changed(orion.orion_id)
            response = pb.AssignDevicesAutomaticallyResponse()
            response.assignments.update(plan)
            orion_to_pb(orion, self.state.version(orion.orion_id) if registered else 0,
                        response.orion)
            return response

        return await self.state.idempotency.run("AssignDevicesAutomatically", request, assign)

    @rpc_errors
    async def ReassignTaskDevice(self, request: pb.ReassignTaskDeviceRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.ReassignTaskDeviceResponse:
        async def reassign() -> pb.ReassignTaskDeviceResponse:
            orion = self.state.require_orion(request.orion_id)
            require(request.task_id, "task_id")
            require(request.new_device_id, "new_device_id")
            done = self.state.engine.manager.reassign_task_device(orion, request.task_id,
                                                                  request.new_device_id)
            response = pb.ReassignTaskDeviceResponse(reassigned=done)
            if done:
                self._changed(orion.orion_id)
                task = orion.get_task(request.task_id)
                assert task is not None
                task_to_pb(task, orion.orion_id, response.task)
            return response

        return await self.state.idempotency.run("ReassignTaskDevice", request, reassign)

    @rpc_errors
    async def ClearDeviceAssignments(self, request: pb.ClearDeviceAssignmentsRequest,
                                     context: grpc.aio.ServicerContext
                                     ) -> pb.ClearDeviceAssignmentsResponse:
        async def clear() -> pb.ClearDeviceAssignmentsResponse:
            orion = self.state.require_orion(request.orion_id)
            count = self.state.engine.manager.clear_device_assignments(orion)
            if count:
                self._changed(orion.orion_id)
            return pb.ClearDeviceAssignmentsResponse(cleared_count=count)

        return await self.state.idempotency.run("ClearDeviceAssignments", request, clear)

    @rpc_errors
    async def ValidateOrionAssignments(self, request: pb.ValidateOrionAssignmentsRequest,
                                       context: grpc.aio.ServicerContext
                                       ) -> pb.ValidateOrionAssignmentsResponse:
        orion, _ = self._target(request, Problems())
        assert orion is not None
        ok, errors = self.state.engine.manager.validate_orion_assignments(orion)
        response = pb.ValidateOrionAssignmentsResponse(valid=ok)
        response.errors.extend(errors)
        return response

    @rpc_errors
    async def RegisterOrion(self, request: pb.RegisterOrionRequest,
                            context: grpc.aio.ServicerContext) -> pb.RegisterOrionResponse:
        async def register() -> pb.RegisterOrionResponse:
            self.state.limits.check_orion(request.orion)
            orion = orion_from_pb(request.orion)
            if self.state.runs.exists(orion.orion_id):
                raise AlreadyExistsError(f"Orion {orion.orion_id} already exists",
                                         "ORION_ALREADY_EXISTS", {"orion_id": orion.orion_id})
            metadata = struct_to_dict(request.metadata) if request.HasField("metadata") else {}
            self.state.engine.manager.register_orion(orion, metadata)
            response = pb.RegisterOrionResponse(orion_id=orion.orion_id,
                                                resource_name=orion_name(orion.orion_id))
            orion_to_pb(orion, self.state.version(orion.orion_id), response.orion)
            return response

        return await self.state.idempotency.run("RegisterOrion", request, register)

    @rpc_errors
    async def UnregisterOrion(self, request: pb.UnregisterOrionRequest,
                              context: grpc.aio.ServicerContext) -> pb.UnregisterOrionResponse:
        async def unregister() -> pb.UnregisterOrionResponse:
            orion_id = require(request.orion_id, "orion_id")
            if self.state.engine.orchestrator.is_running(orion_id):
                raise FailedPreconditionError(
                    f"Orion {orion_id} is running; cancel it (CancelOrion) before "
                    "unregistering it", "ORION_RUNNING", metadata={"orion_id": orion_id})
            return pb.UnregisterOrionResponse(
                unregistered=self.state.engine.manager.unregister_orion(orion_id))

        return await self.state.idempotency.run("UnregisterOrion", request, unregister)

    @rpc_errors
    async def GetOrion(self, request: pb.GetOrionRequest, context: grpc.aio.ServicerContext
                       ) -> pb.GetOrionResponse:
        orion = self.state.require_orion(request.orion_id)
        response = pb.GetOrionResponse()
        orion_to_pb(orion, self.state.version(orion.orion_id), response.orion)
        return response

    @rpc_errors
    async def ListOrions(self, request: pb.ListOrionsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ListOrionsResponse:
        problems = Problems()
        states = {enum_from_pb(s, ORION_STATE_FROM_PB, "OrionState", f"states[{i}]", problems,
                               required=True) for i, s in enumerate(request.states)}
        problems.raise_if_any()
        manager = self.state.engine.manager
        rows = []
        for row in manager.list_orions():
            orion = manager.get_orion(row["orion_id"])
            if orion is not None and (not states or orion.state in states):
                rows.append((orion, row.get("metadata") or {}))
        filter_key = ",".join(sorted(str(s) for s in request.states))
        page, token = paginate(rows, lambda r: r[0].orion_id, request.page_size,
                               request.page_token, "orions", filter_key)
        response = pb.ListOrionsResponse(next_page_token=token, total_size=len(rows))
        for orion, metadata in page:
            summary_to_pb(orion, metadata, response.orions.add())
        return response

    @rpc_errors
    async def GetOrionStatus(self, request: pb.ManagerServiceGetOrionStatusRequest,
                             context: grpc.aio.ServicerContext
                             ) -> pb.ManagerServiceGetOrionStatusResponse:
        response = pb.ManagerServiceGetOrionStatusResponse()
        status_to_pb(await get_status(self.state, request.orion_id), response.status)
        return response

    @rpc_errors
    async def GetAvailableDevices(self, request: pb.ManagerServiceGetAvailableDevicesRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> pb.ManagerServiceGetAvailableDevicesResponse:
        return await fill_available_devices(self.state, request.page_size, request.page_token,
                                            pb.ManagerServiceGetAvailableDevicesResponse())

    @rpc_errors
    async def GetDeviceUtilization(self, request: pb.GetDeviceUtilizationRequest,
                                   context: grpc.aio.ServicerContext
                                   ) -> pb.GetDeviceUtilizationResponse:
        manager = self.state.engine.manager
        if request.orion_id:
            orions = [self.state.require_orion(request.orion_id)]
        else:
            orions = [o for o in (manager.get_orion(r["orion_id"]) for r in manager.list_orions())
                      if o is not None]
        by_device: dict[str, list[TaskStar]] = defaultdict(list)
        for orion in orions:
            for task in orion.get_all_tasks():
                if task.target_device_id:
                    by_device[task.target_device_id].append(task)
        response = pb.GetDeviceUtilizationResponse()
        devices = self.state.engine.devices
        for device_id, tasks in by_device.items():
            info = devices.get_device_info(device_id)
            utilization_to_pb(device_id, tasks, info.capacity if info else 0,
                              response.devices.add())
        return response

    @rpc_errors
    async def GetTaskDeviceInfo(self, request: pb.GetTaskDeviceInfoRequest,
                                context: grpc.aio.ServicerContext
                                ) -> pb.GetTaskDeviceInfoResponse:
        orion = self.state.require_orion(request.orion_id)
        task_id = require(request.task_id, "task_id")
        task = orion.get_task(task_id)
        if task is None:
            raise NotFoundError(f"Task {task_id} not found", "TASK_NOT_FOUND",
                                {"task_id": task_id, "orion_id": orion.orion_id})
        response = pb.GetTaskDeviceInfoResponse(device_id=task.target_device_id or "")
        info = self.state.engine.devices.get_device_info(task.target_device_id or "")
        if info is not None:
            device_to_pb(info, response.device)
        return response
