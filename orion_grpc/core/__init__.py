"""The Orion engine: model, DAG rules, events, devices, assignment, scheduling, editing.

This package imports no gRPC and no protobuf; the API layer adapts it to the wire.
"""

from .conditions import CompiledCondition, ConditionError, compile_condition
from .device_manager import (
                             AgentProfile,
                             ConstellationDeviceManager,
                             DeviceInfo,
                             DeviceLink,
                             ExecutionResult,
                             Lease,
                             LeaseOutcome,
                             OrionDeviceManager,
)
from .edits import (
                             AddDependency,
                             AddTask,
                             EditOperation,
                             EditOutcome,
                             RemoveDependency,
                             RemoveTask,
                             UpdateDependency,
                             UpdateTask,
                             apply_edits,
)
from .engine import EngineConfig, OrionEngine
from .enums import DependencyType, DeviceStatus, DeviceType, OrionState, TaskPriority, TaskStatus
from .errors import (
                             AlreadyExistsError,
                             EditRejectedError,
                             ErrorCategory,
                             FailedPreconditionError,
                             InvalidArgumentError,
                             NotFoundError,
                             OrionError,
                             UnavailableError,
                             Violation,
)
from .events import (
                             AgentEvent,
                             DeviceEvent,
                             Event,
                             EventBus,
                             EventRecorder,
                             EventType,
                             IEventObserver,
                             OrionEvent,
                             TaskEvent,
                             get_event_bus,
)
from .fake_device import FakeDevice
from .hooks import TracerHooks
from .manager import OrionManager
from .orchestrator import TaskExecutionError, TaskOrionOrchestrator
from .synchronizer import OrionModificationSynchronizer
from .task_orion import TaskOrion
from .task_star import TaskFailure, TaskStar
from .task_star_line import TaskStarLine

__all__ = [
    "AddDependency", "AddTask", "AgentEvent", "AgentProfile", "AlreadyExistsError",
    "CompiledCondition", "ConditionError", "ConstellationDeviceManager", "DependencyType",
    "DeviceEvent", "DeviceInfo", "DeviceLink", "DeviceStatus", "DeviceType", "EditOperation",
    "EditOutcome", "EditRejectedError", "EngineConfig", "ErrorCategory", "Event", "EventBus",
    "EventRecorder", "EventType", "OrionEngine",
    "ExecutionResult", "FailedPreconditionError", "FakeDevice", "IEventObserver",
    "InvalidArgumentError", "Lease", "LeaseOutcome", "NotFoundError", "OrionDeviceManager",
    "OrionError", "OrionEvent", "OrionManager", "OrionModificationSynchronizer", "OrionState",
    "RemoveDependency", "RemoveTask", "TaskEvent", "TaskExecutionError", "TaskFailure",
    "TaskOrion", "TaskOrionOrchestrator", "TaskPriority", "TaskStar", "TaskStarLine",
    "TaskStatus", "TracerHooks", "UnavailableError", "UpdateDependency", "UpdateTask", "Violation",
    "apply_edits", "compile_condition", "get_event_bus",
]
