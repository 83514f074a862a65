"""OrionClient: the in-process API's names, over gRPC.

Methods mirror the seed API (``orchestrate_orion``, ``get_orion_status``, the manager's and the
synchronizer's methods) and take and return the same domain objects: a ``TaskOrion`` /
``TaskStar`` (or their dict form, or the protobuf message) in, the reference API's dicts out.
Server errors come back as the engine's own exceptions (``InvalidArgumentError`` with its
``violations``, ``NotFoundError`` …) carrying the ErrorInfo reason and metadata, so code
written against the in-process engine handles them unchanged. Other statuses raise
``RpcError``. Every unary call has a deadline (``timeout``; ``run_timeout`` for
``orchestrate_orion``, which waits for the whole run). Each call carries the caller's current
OpenTelemetry trace context (W3C ``traceparent``), if there is one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ..api.convert import (
    ORION_STATE_TO_PB,
    STRATEGY_TO_PB,
    device_from_pb,
    dict_to_struct,
    edit_ops_to_pb,
    orion_to_pb,
    orion_with_state_from_pb,
    result_from_pb,
    set_duration,
    status_from_pb,
    summary_from_pb,
    task_to_pb,
    value_from_pb,
)
from ..core import (
    AlreadyExistsError,
    EditOperation,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OrionError,
    OrionState,
    TaskExecutionError,
    TaskOrion,
    TaskStar,
    UnavailableError,
    Violation,
)
from ..core.enums import parse_enum
from ..core.spec import orion_from_spec
from ..gen.orion.v1 import (
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
from ..observability.tracing import trace_context_interceptors
from ..transport import ChannelSecurity

DEFAULT_TARGET = "127.0.0.1:50051"


def default_target() -> str:
    return os.environ.get("ORION_SERVER") or DEFAULT_TARGET


class RpcError(OrionError):
    """A status the engine has no exception for (DEADLINE_EXCEEDED, ABORTED, INTERNAL …)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "",
                 violations: list[Violation] | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason or code.name, violations=list(violations or []),
                         metadata=dict(metadata or {}))
        self.code = code


_BY_CODE: dict[grpc.StatusCode, type[OrionError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def domain_error(err: grpc.aio.AioRpcError) -> OrionError:
    """The engine exception a failed call stands for (ErrorInfo + BadRequest decoded)."""
    code = err.code()
    message = err.details() or code.name
    reason, metadata, violations = code.name, {}, []
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        status = None
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason or reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [Violation(v.field, v.description, v.reason)
                          for v in bad.field_violations]
    cls = _BY_CODE.get(code)
    error: OrionError
    if cls is InvalidArgumentError or cls is FailedPreconditionError:
        error = cls(message, reason, violations, metadata)  # type: ignore[call-arg]
    elif cls is not None:
        error = cls(message, reason, metadata)  # type: ignore[call-arg]
    else:
        error = RpcError(code, message, reason, violations, metadata)
    error.code = code  # type: ignore[attr-defined]
    return error


# ---------------------------------------------------------------------- inputs
def orion_pb(orion: TaskOrion | Mapping[str, Any] | orion_pb2.TaskOrion) -> orion_pb2.TaskOrion:
    """A TaskOrion, its dict form (core spec or proto JSON mapping) or the message itself."""
    if isinstance(orion, orion_pb2.TaskOrion):
        return orion
    if isinstance(orion, TaskOrion):
        return orion_to_pb(orion)
    if isinstance(orion, Mapping):
        try:
            return json_format.ParseDict(dict(orion), orion_pb2.TaskOrion())
        except json_format.ParseError:
            return orion_to_pb(orion_from_spec(dict(orion)))  # validates locally
    raise TypeError(f"expected a TaskOrion, a dict or an orion.v1.TaskOrion, got {orion!r}")


def task_pb(task: TaskStar | Mapping[str, Any] | task_star_pb2.TaskStar) -> task_star_pb2.TaskStar:
    if isinstance(task, task_star_pb2.TaskStar):
        return task
    if isinstance(task, Mapping):
        task = TaskStar.from_dict(dict(task))
    if isinstance(task, TaskStar):
        pb = task_to_pb(task)
        for name in ("status", "created_at", "updated_at", "is_terminal"):
            pb.ClearField(name)  # type: ignore[arg-type]
        return pb
    raise TypeError(f"expected a TaskStar, a dict or an orion.v1.TaskStar, got {task!r}")


def strategy_pb(strategy: str | int | None) -> int:
    if strategy is None or strategy == "":
        return 0
    if isinstance(strategy, int):
        return strategy
    value = STRATEGY_TO_PB.get(strategy.lower())
    if value is None:
        raise InvalidArgumentError(f"Unknown assignment strategy: {strategy}", "UNKNOWN_STRATEGY",
                                   [Violation("assignment_strategy",
                                              f"must be one of {', '.join(STRATEGY_TO_PB)}",
                                              "UNKNOWN_STRATEGY")])
    return value


def _orion_id(orion: str | TaskOrion) -> str:
    return orion if isinstance(orion, str) else orion.orion_id


@dataclass
class EditResult:
    """What EditOrion answered."""

    orion: TaskOrion
    version: int
    acknowledged_task_ids: list[str] = field(default_factory=list)
    created_task_ids: list[str] = field(default_factory=list)
    created_line_ids: list[str] = field(default_factory=list)


class OrionClient:
    """Async client of an Orion server. Use ``async with OrionClient(target) as client``."""

    def __init__(self, target: str | None = None, *, timeout: float = 30.0,
                 run_timeout: float = 24 * 3600.0, channel: grpc.aio.Channel | None = None,
                 options: list[tuple[str, Any]] | None = None,
                 security: ChannelSecurity | None = None, token: str | None = None) -> None:
        """:param security: TLS, client certificate and token (default: from ``ORION_CA``,
            ``ORION_CERT``, ``ORION_KEY``, ``ORION_TLS``, ``ORION_TOKEN``; none set: plaintext,
            no token). :param token: the bearer token, overriding ``security``'s."""
        self.target = target or default_target()
        security = security if security is not None else ChannelSecurity.from_env()
        self.security = security if token is None else replace(security, token=token)
        self.timeout = timeout
        self.run_timeout = run_timeout
        self._options = options or [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                    ("grpc.max_metadata_size", 64 * 1024)]
        self._channel = channel
        self._owns_channel = channel is None
        self.last_resume_token = ""

    # ------------------------------------------------------------------ plumbing
    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:  # created lazily: grpc.aio objects belong to a running loop
            # The interceptor sends the caller's trace context (if any) with every call.
            self._channel = self.security.channel(self.target, self._options,
                                                  trace_context_interceptors())
        return self._channel

    @property
    def orchestrator(self) -> orchestrator_service_pb2_grpc.OrchestratorServiceStub:
        return orchestrator_service_pb2_grpc.OrchestratorServiceStub(self.channel)

    @property
    def manager(self) -> manager_service_pb2_grpc.ManagerServiceStub:
        return manager_service_pb2_grpc.ManagerServiceStub(self.channel)

    @property
    def synchronizer(self) -> synchronizer_service_pb2_grpc.SynchronizerServiceStub:
        return synchronizer_service_pb2_grpc.SynchronizerServiceStub(self.channel)

    @property
    def events(self) -> event_service_pb2_grpc.EventServiceStub:
        return event_service_pb2_grpc.EventServiceStub(self.channel)

    async def __aenter__(self) -> OrionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None and self._owns_channel:
            await self._channel.close()
        self._channel = None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the channel is connected (raises TimeoutError)."""
        await asyncio.wait_for(self.channel.channel_ready(), timeout or self.timeout)

    async def _call(self, method: Any, request: Message, timeout: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as err:
            raise domain_error(err) from err

    # ------------------------------------------------------------------ orchestrator
    def _submit_fields(self, orion: Any, device_assignments: Mapping[str, str] | None,
                       assignment_strategy: str | int | None, metadata: Mapping[str, Any] | None,
                       enable_synchronization: bool, request_id: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "orion": orion_pb(orion), "device_assignments": dict(device_assignments or {}),
            "assignment_strategy": strategy_pb(assignment_strategy),
            "enable_synchronization": enable_synchronization, "request_id": request_id or ""}
        if metadata:
            fields["metadata"] = dict_to_struct(metadata)
        return fields

    async def orchestrate_orion(self, orion: TaskOrion | Mapping[str, Any] | orion_pb2.TaskOrion,
                                device_assignments: Mapping[str, str] | None = None,
                                assignment_strategy: str | int | None = None,
                                metadata: Mapping[str, Any] | None = None, *,
                                enable_synchronization: bool = False,
                                request_id: str | None = None,
                                timeout: float | None = None) -> dict[str, Any]:
        """Run an orion and return ``{"results", "errors", "status", "total_tasks",
        "statistics"}`` like the in-process orchestrator."""
        request = orchestrator_service_pb2.OrchestrateOrionRequest(**self._submit_fields(
            orion, device_assignments, assignment_strategy, metadata, enable_synchronization,
            request_id))
        response = await self._call(self.orchestrator.OrchestrateOrion, request,
                                    timeout or self.run_timeout)
        return result_from_pb(response.result)

    async def submit_orion(self, orion: TaskOrion | Mapping[str, Any] | orion_pb2.TaskOrion,
                           device_assignments: Mapping[str, str] | None = None,
                           assignment_strategy: str | int | None = None,
                           metadata: Mapping[str, Any] | None = None, *,
                           enable_synchronization: bool = False,
                           request_id: str | None = None, timeout: float | None = None) -> str:
        """Start an orion; returns its id at once (follow it with ``watch_events``)."""
        request = orchestrator_service_pb2.SubmitOrionRequest(**self._submit_fields(
            orion, device_assignments, assignment_strategy, metadata, enable_synchronization,
            request_id))
        response = await self._call(self.orchestrator.SubmitOrion, request, timeout)
        return str(response.orion_id)

    async def execute_single_task(self, task: TaskStar | Mapping[str, Any] | task_star_pb2.TaskStar,
                                  target_device_id: str | None = None, *,
                                  request_id: str | None = None,
                                  timeout: float | None = None) -> Any:
        """Run one star outside any orion; returns its result (raises TaskExecutionError)."""
        request = orchestrator_service_pb2.ExecuteSingleTaskRequest(
            task=task_pb(task), target_device_id=target_device_id or "",
            request_id=request_id or "")
        response = await self._call(self.orchestrator.ExecuteSingleTask, request,
                                    timeout or self.run_timeout)
        if response.task.status == task_star_pb2.TASK_STATUS_FAILED:
            raise TaskExecutionError(response.task.task_id, response.task.error,
                                     response.task.error_reason or None)
        return value_from_pb(response.result)

    async def get_orion_status(self, orion: str | TaskOrion) -> dict[str, Any] | None:
        """The reference status dict, or None for an unknown orion (as in-process)."""
        request = orchestrator_service_pb2.OrchestratorServiceGetOrionStatusRequest(
            orion_id=_orion_id(orion))
        try:
            response = await self._call(self.orchestrator.GetOrionStatus, request)
        except NotFoundError:
            return None
        return status_from_pb(response.status)

    async def get_available_devices(self) -> list[dict[str, Any]]:
        """Every connected device (all pages)."""
        devices, token = [], ""
        while True:
            response = await self._call(
                self.orchestrator.GetAvailableDevices,
                orchestrator_service_pb2.OrchestratorServiceGetAvailableDevicesRequest(
                    page_size=1000, page_token=token))
            devices.extend(device_from_pb(d) for d in response.devices)
            token = response.next_page_token
            if not token:
                return devices

    async def wait_for_devices(self, count: int, timeout: float | None = None
                               ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` devices are connected — also while the server is
        still starting — and return them. Raises ``TimeoutError`` after ``timeout`` (default
        ``self.timeout``). Woken by the server's device events, not by polling."""
        async def connected() -> list[dict[str, Any]]:
            await self.channel.channel_ready()  # the server may be starting up
            call = self.events.WatchEvents(event_service_pb2.WatchEventsRequest(types=[
                event_pb2.EVENT_TYPE_DEVICE_CONNECTED, event_pb2.EVENT_TYPE_DEVICE_DISCONNECTED]))
            try:
                await call.wait_for_connection()  # subscribed: no connection can slip by
                while True:
                    devices = await self.get_available_devices()
                    if len(devices) >= count:
                        return devices
                    if await call.read() is grpc.aio.EOF:
                        raise UnavailableError("the server ended the event stream",
                                               "STREAM_ENDED")
            except grpc.aio.AioRpcError as err:
                raise domain_error(err) from err
            finally:
                call.cancel()

        return await asyncio.wait_for(connected(), self.timeout if timeout is None else timeout)

    async def cancel_orion(self, orion: str | TaskOrion, reason: str | None = None, *,
                           request_id: str | None = None) -> bool:
        request = orchestrator_service_pb2.CancelOrionRequest(
            orion_id=_orion_id(orion), reason=reason or "", request_id=request_id or "")
        return bool((await self._call(self.orchestrator.CancelOrion, request)).cancelled)

    cancel_execution = cancel_orion

    # ------------------------------------------------------------------ events
    async def watch_events(self, orion_id: str | None = None, *,
                           types: Iterable[int | str] | None = None,
                           task_ids: Iterable[str] | None = None, device_id: str | None = None,
                           resume_token: str | None = None, include_history: bool = False,
                           include_orion_snapshots: bool = False, bookmarks: bool = False
                           ) -> AsyncIterator[event_pb2.Event]:
        """Stream ``orion.v1.Event`` messages (bookmarks only if asked for). The latest
        resume token seen is kept in ``self.last_resume_token``."""
        request = event_service_pb2.WatchEventsRequest(
            orion_id=orion_id or "", task_ids=list(task_ids or []), device_id=device_id or "",
            resume_token=resume_token or "", include_history=include_history,
            include_orion_snapshots=include_orion_snapshots, allow_batches=True)
        for t in types or []:
            request.types.append(event_pb2.EventType.Value(t) if isinstance(t, str) else t)
        call = self.events.WatchEvents(request)
        try:
            async for response in call:
                # allow_batches: a watcher that fell behind gets what is pending in one
                # response; events are still handed out one by one, in order.
                for event in response.events or (response.event,):
                    self.last_resume_token = event.resume_token or self.last_resume_token
                    if event.type == event_pb2.EVENT_TYPE_BOOKMARK and not bookmarks:
                        continue
                    yield event
        except grpc.aio.AioRpcError as err:
            raise domain_error(err) from err
        finally:
            call.cancel()

    # ------------------------------------------------------------------ manager
    async def assign_devices_automatically(self, orion: str | TaskOrion | Mapping[str, Any],
                                           strategy: str = "round_robin",
                                           device_preferences: Mapping[str, str] | None = None
                                           ) -> dict[str, str]:
        request = manager_service_pb2.AssignDevicesAutomaticallyRequest(
            strategy=strategy_pb(strategy), device_preferences=dict(device_preferences or {}))
        if isinstance(orion, str):
            request.orion_id = orion
        else:
            request.orion.CopyFrom(orion_pb(orion))
        response = await self._call(self.manager.AssignDevicesAutomatically, request)
        if isinstance(orion, TaskOrion):  # in-process semantics: the object is updated
            for task_id, device_id in response.assignments.items():
                task = orion.get_task(task_id)
                if task is not None:
                    task.target_device_id = device_id
        return dict(response.assignments)

    async def reassign_task_device(self, orion: str | TaskOrion, task_id: str,
                                   new_device_id: str) -> bool:
        request = manager_service_pb2.ReassignTaskDeviceRequest(
            orion_id=_orion_id(orion), task_id=task_id, new_device_id=new_device_id)
        return bool((await self._call(self.manager.ReassignTaskDevice, request)).reassigned)

    async def clear_device_assignments(self, orion: str | TaskOrion) -> int:
        request = manager_service_pb2.ClearDeviceAssignmentsRequest(orion_id=_orion_id(orion))
        return int((await self._call(self.manager.ClearDeviceAssignments, request)).cleared_count)

    async def validate_orion_assignments(self, orion: str | TaskOrion | Mapping[str, Any]
                                         ) -> tuple[bool, list[str]]:
        request = manager_service_pb2.ValidateOrionAssignmentsRequest()
        if isinstance(orion, str):
            request.orion_id = orion
        else:
            request.orion.CopyFrom(orion_pb(orion))
        response = await self._call(self.manager.ValidateOrionAssignments, request)
        return bool(response.valid), list(response.errors)

    async def register_orion(self, orion: TaskOrion | Mapping[str, Any] | orion_pb2.TaskOrion,
                             metadata: Mapping[str, Any] | None = None) -> str:
        request = manager_service_pb2.RegisterOrionRequest(orion=orion_pb(orion))
        if metadata:
            dict_to_struct(metadata, request.metadata)
        return str((await self._call(self.manager.RegisterOrion, request)).orion_id)

    async def unregister_orion(self, orion: str | TaskOrion) -> bool:
        request = manager_service_pb2.UnregisterOrionRequest(orion_id=_orion_id(orion))
        return bool((await self._call(self.manager.UnregisterOrion, request)).unregistered)

    async def get_orion(self, orion_id: str) -> TaskOrion | None:
        try:
            response = await self._call(self.manager.GetOrion,
                                        manager_service_pb2.GetOrionRequest(orion_id=orion_id))
        except NotFoundError:
            return None
        return orion_with_state_from_pb(response.orion)

    async def list_orions(self, states: Iterable[OrionState | str] | None = None
                          ) -> list[dict[str, Any]]:
        request = manager_service_pb2.ListOrionsRequest(page_size=1000)
        for state in states or []:
            member = parse_enum(OrionState, state)
            request.states.append(ORION_STATE_TO_PB[member])  # type: ignore[index]
        rows: list[dict[str, Any]] = []
        while True:
            response = await self._call(self.manager.ListOrions, request)
            rows.extend(summary_from_pb(s) for s in response.orions)
            if not response.next_page_token:
                return rows
            request.page_token = response.next_page_token

    async def get_device_utilization(self, orion: str | TaskOrion | None = None
                                     ) -> dict[str, int]:
        """{device_id: assigned stars} like the reference (details: ``device_utilization``)."""
        return {d["device_id"]: d["assigned_task_count"]
                for d in await self.device_utilization(orion)}

    async def device_utilization(self, orion: str | TaskOrion | None = None
                                 ) -> list[dict[str, Any]]:
        request = manager_service_pb2.GetDeviceUtilizationRequest(
            orion_id=_orion_id(orion) if orion is not None else "")
        response = await self._call(self.manager.GetDeviceUtilization, request)
        return [json_format.MessageToDict(d, preserving_proto_field_name=True,
                                          always_print_fields_with_no_presence=True)
                for d in response.devices]

    async def get_task_device_info(self, orion: str | TaskOrion, task_id: str
                                   ) -> dict[str, Any] | None:
        request = manager_service_pb2.GetTaskDeviceInfoRequest(orion_id=_orion_id(orion),
                                                               task_id=task_id)
        response = await self._call(self.manager.GetTaskDeviceInfo, request)
        if not response.HasField("device"):
            return None
        return device_from_pb(response.device)

    # ------------------------------------------------------------------ synchronizer
    async def edit_orion(self, orion: str | TaskOrion, edits: Iterable[EditOperation],
                         on_task_ids: Iterable[str] | str | None = None, *,
                         expected_version: int | None = None, validate_only: bool = False,
                         request_id: str | None = None) -> EditResult:
        ids = [on_task_ids] if isinstance(on_task_ids, str) else list(on_task_ids or [])
        request = synchronizer_service_pb2.EditOrionRequest(
            orion_id=_orion_id(orion), operations=edit_ops_to_pb(edits), on_task_ids=ids,
            validate_only=validate_only, request_id=request_id or "")
        if expected_version is not None:
            request.expected_version = expected_version
        response = await self._call(self.synchronizer.EditOrion, request)
        return EditResult(orion_with_state_from_pb(response.orion), response.orion.version,
                          list(response.acknowledged_task_ids), list(response.created_task_ids),
                          list(response.created_line_ids))

    async def merge_and_sync_orion(self, orion: TaskOrion,
                                   on_task_ids: Iterable[str] | None = None) -> TaskOrion:
        """Send a planner's copy; the server merges it (structure from the copy, execution state
        only forward) and returns the merged orion."""
        request = synchronizer_service_pb2.MergeAndSyncOrionRequest(
            orion_id=orion.orion_id, orion=orion_to_pb(orion), on_task_ids=list(on_task_ids or []))
        response = await self._call(self.synchronizer.MergeAndSyncOrion, request)
        return orion_with_state_from_pb(response.orion)

    async def wait_for_pending_modifications(self, timeout: float | None = None,
                                             orion_id: str | None = None) -> bool:
        request = synchronizer_service_pb2.WaitForPendingModificationsRequest(
            orion_id=orion_id or "")
        if timeout is not None:
            set_duration(request.timeout, timeout)
        call_timeout = (timeout if timeout is not None else self.run_timeout) + self.timeout
        response = await self._call(self.synchronizer.WaitForPendingModifications, request,
                                    call_timeout)
        return bool(response.completed)

    async def _pending(self, orion_id: str | None) -> Any:
        return await self._call(self.synchronizer.GetPendingModifications,
                                synchronizer_service_pb2.GetPendingModificationsRequest(
                                    orion_id=orion_id or ""))

    async def has_pending_modifications(self, orion_id: str | None = None) -> bool:
        return bool((await self._pending(orion_id)).has_pending)

    async def get_pending_count(self, orion_id: str | None = None) -> int:
        return int((await self._pending(orion_id)).pending_count)

    async def get_pending_task_ids(self, orion_id: str | None = None) -> list[str]:
        return list((await self._pending(orion_id)).pending_task_ids)

    async def get_current_orion(self, orion_id: str) -> TaskOrion:
        response = await self._call(self.synchronizer.GetCurrentOrion,
                                    synchronizer_service_pb2.GetCurrentOrionRequest(
                                        orion_id=orion_id))
        return orion_with_state_from_pb(response.orion)

    async def get_statistics(self, orion_id: str | None = None) -> dict[str, int]:
        response = await self._call(self.synchronizer.GetSynchronizerStatistics,
                                    synchronizer_service_pb2.GetSynchronizerStatisticsRequest(
                                        orion_id=orion_id or ""))
        return {"total_modifications": response.total_modifications,
                "completed_modifications": response.completed_modifications,
                "timeout_modifications": response.timeout_modifications}

    async def set_modification_timeout(self, timeout: float) -> None:
        request = synchronizer_service_pb2.SetModificationTimeoutRequest()
        set_duration(request.timeout, timeout)
        await self._call(self.synchronizer.SetModificationTimeout, request)

    async def clear_pending_modifications(self, orion_id: str | None = None) -> int:
        response = await self._call(self.synchronizer.ClearPendingModifications,
                                    synchronizer_service_pb2.ClearPendingModificationsRequest(
                                        orion_id=orion_id or ""))
        return int(response.cleared_count)
