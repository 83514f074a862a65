"""SynchronizerService: a planner edits running orions (reference:
OrionModificationSynchronizer).

The engine's synchronizer follows one orion at a time — the latest one started with
``enable_synchronization``. Per-orion filters (``orion_id``) therefore select "that orion or
nothing": pending modifications of any other orion are empty.
"""

from __future__ import annotations

import grpc

from ..core import (
    InvalidArgumentError,
    OrionModificationSynchronizer,
    TaskOrion,
    Violation,
    apply_edits,
)
from ..gen.orion.v1 import synchronizer_service_pb2 as pb
from ..gen.orion.v1 import synchronizer_service_pb2_grpc as pb_grpc
from .convert import (
    Problems,
    created_ids,
    duration_seconds,
    edit_ops_from_pb,
    orion_to_pb,
    orion_with_state_from_pb,
    set_duration,
)
from .errors import ApiError, rpc_errors
from .state import ApiState, require


class SynchronizerServicer(pb_grpc.SynchronizerServiceServicer):
    def __init__(self, state: ApiState) -> None:
        self.state = state

    @property
    def sync(self) -> OrionModificationSynchronizer:
        return self.state.engine.synchronizer

    def _pending(self, orion_id: str) -> list[str]:
        if orion_id and not self.sync.tracks(orion_id):
            return []
        return list(self.sync.get_pending_task_ids())

    def _check_version(self, orion_id: str, expected: int) -> None:
        current = self.state.version(orion_id)
        if expected != current:
            raise ApiError(grpc.StatusCode.ABORTED,
                           f"Orion {orion_id} is at version {current}, not {expected}: it was "
                           "changed meanwhile; re-read it (GetOrion) and retry the edit",
                           "VERSION_MISMATCH", metadata={"orion_id": orion_id,
                                                         "current_version": str(current),
                                                         "expected_version": str(expected)})

    @rpc_errors
    async def EditOrion(self, request: pb.EditOrionRequest, context: grpc.aio.ServicerContext
                        ) -> pb.EditOrionResponse:
        async def edit() -> pb.EditOrionResponse:
            state = self.state
            orion = state.require_orion(request.orion_id)
            for i, op in enumerate(request.operations):
                kind = op.WhichOneof("operation")
                if kind in ("add_task", "update_task"):
                    state.limits.check_task(getattr(op, kind).task,
                                            f"operations[{i}].{kind}.task")
            problems = Problems()
            ops = edit_ops_from_pb(request.operations, problems)
            problems.raise_if_any("Invalid edit", "INVALID_EDIT")
            state.limits.check_growth(orion, ops)
            if request.HasField("expected_version"):
                self._check_version(orion.orion_id, request.expected_version)
            tasks, lines = created_ids(ops)
            response = pb.EditOrionResponse()
            response.created_task_ids.extend(tasks)
            response.created_line_ids.extend(lines)
            if request.validate_only:
                self.sync.require_editable(orion)
                apply_edits(TaskOrion.from_dict(orion.to_dict()), ops)  # raises like the real one
                orion_to_pb(orion, state.version(orion.orion_id), response.orion)
                return response
            on_task_ids = list(request.on_task_ids)
            pending = set(self._pending(orion.orion_id))
            self.sync.edit_orion(orion.orion_id, ops, on_task_ids)
            if ops:
                state.bump_version(orion.orion_id)
            response.acknowledged_task_ids.extend(t for t in on_task_ids if t in pending)
            orion_to_pb(orion, state.version(orion.orion_id), response.orion)
            return response

        return await self.state.idempotency.run("EditOrion", request, edit)

    @rpc_errors
    async def MergeAndSyncOrion(self, request: pb.MergeAndSyncOrionRequest,
                                context: grpc.aio.ServicerContext
                                ) -> pb.MergeAndSyncOrionResponse:
        async def merge() -> pb.MergeAndSyncOrionResponse:
            state = self.state
            orion_id = require(request.orion_id, "orion_id")
            if request.orion.orion_id and request.orion.orion_id != orion_id:
                raise InvalidArgumentError(
                    f"orion.orion_id ({request.orion.orion_id}) differs from orion_id "
                    f"({orion_id})", "ORION_ID_MISMATCH",
                    [Violation("orion.orion_id", "must equal orion_id (or be empty)",
                               "ORION_ID_MISMATCH")])
            live = state.require_orion(orion_id)
            state.limits.check_orion(request.orion)
            copy = type(request.orion)()
            copy.CopyFrom(request.orion)
            copy.orion_id = orion_id
            planner = orion_with_state_from_pb(copy)
            on_task_ids = list(request.on_task_ids)
            pending = set(self._pending(orion_id))
            self.sync.merge_orion(live, planner)
            # Publishes ORION_MODIFIED and acknowledges on_task_ids, like an edit.
            self.sync.edit_orion(orion_id, [], on_task_ids)
            state.bump_version(orion_id)
            response = pb.MergeAndSyncOrionResponse()
            response.acknowledged_task_ids.extend(t for t in on_task_ids if t in pending)
            orion_to_pb(live, state.version(orion_id), response.orion)
            return response

        return await self.state.idempotency.run("MergeAndSyncOrion", request, merge)

    @rpc_errors
    async def WaitForPendingModifications(self, request: pb.WaitForPendingModificationsRequest,
                                          context: grpc.aio.ServicerContext
                                          ) -> pb.WaitForPendingModificationsResponse:
        timeout = self.sync.modification_timeout
        if request.HasField("timeout"):
            timeout = duration_seconds(request.timeout)
            if timeout < 0:
                raise InvalidArgumentError("timeout must not be negative", "INVALID_TIMEOUT",
                                           [Violation("timeout", "must be >= 0",
                                                      "INVALID_TIMEOUT")])
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = max(0.0, min(timeout, remaining - 0.05))  # answer before the deadline
        completed = True
        if not request.orion_id or self.sync.tracks(request.orion_id):
            completed = await self.sync.wait_until_settled(timeout)
        response = pb.WaitForPendingModificationsResponse(completed=completed)
        response.pending_task_ids.extend(self._pending(request.orion_id))
        return response

    @rpc_errors
    async def GetPendingModifications(self, request: pb.GetPendingModificationsRequest,
                                      context: grpc.aio.ServicerContext
                                      ) -> pb.GetPendingModificationsResponse:
        pending = self._pending(request.orion_id)
        response = pb.GetPendingModificationsResponse(has_pending=bool(pending),
                                                      pending_count=len(pending))
        response.pending_task_ids.extend(pending)
        return response

    @rpc_errors
    async def GetCurrentOrion(self, request: pb.GetCurrentOrionRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetCurrentOrionResponse:
        orion_id = require(request.orion_id, "orion_id")
        orion = self.sync.get_current_orion() if self.sync.tracks(orion_id) else None
        if orion is None:
            orion = self.state.require_orion(orion_id)
        response = pb.GetCurrentOrionResponse()
        orion_to_pb(orion, self.state.version(orion_id), response.orion)
        return response

    @rpc_errors
    async def GetSynchronizerStatistics(self, request: pb.GetSynchronizerStatisticsRequest,
                                        context: grpc.aio.ServicerContext
                                        ) -> pb.GetSynchronizerStatisticsResponse:
        stats = self.sync.get_statistics()
        response = pb.GetSynchronizerStatisticsResponse(
            total_modifications=stats.get("total_modifications", 0),
            completed_modifications=stats.get("completed_modifications", 0),
            timeout_modifications=stats.get("timeout_modifications", 0),
            pending_count=len(self._pending(request.orion_id)))
        set_duration(response.modification_timeout, self.sync.modification_timeout)
        return response

    @rpc_errors
    async def SetModificationTimeout(self, request: pb.SetModificationTimeoutRequest,
                                     context: grpc.aio.ServicerContext
                                     ) -> pb.SetModificationTimeoutResponse:
        async def set_timeout() -> pb.SetModificationTimeoutResponse:
            problems = Problems()
            if request.orion_id:
                problems.add("orion_id", "per-orion timeouts are not supported yet; leave it "
                             "empty to set the server-wide timeout", "UNSUPPORTED_FIELD")
            if not request.HasField("timeout"):
                problems.add("timeout", "the new timeout is required", "MISSING_FIELD")
            problems.raise_if_any()
            self.sync.set_modification_timeout(duration_seconds(request.timeout))
            response = pb.SetModificationTimeoutResponse()
            set_duration(response.timeout, self.sync.modification_timeout)
            return response

        return await self.state.idempotency.run("SetModificationTimeout", request, set_timeout)

    @rpc_errors
    async def ClearPendingModifications(self, request: pb.ClearPendingModificationsRequest,
                                        context: grpc.aio.ServicerContext
                                        ) -> pb.ClearPendingModificationsResponse:
        async def clear() -> pb.ClearPendingModificationsResponse:
            pending = self._pending(request.orion_id)
            if pending:
                self.sync.clear_pending_modifications()
            response = pb.ClearPendingModificationsResponse(cleared_count=len(pending))
            response.cleared_task_ids.extend(pending)
            return response

        return await self.state.idempotency.run("ClearPendingModifications", request, clear)
