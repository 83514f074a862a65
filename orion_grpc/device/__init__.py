"""The Orion device daemon, as a library and as ``orion device``.

    from orion_grpc.device import DeviceAgent, Assignment

    async def my_executor(assignment: Assignment) -> dict:
        return {"answer": len(assignment.task_text)}

    agent = DeviceAgent("127.0.0.1:50051", "pc-01", "linux", ["python"], capacity=2,
                        executors={"mine": my_executor}, default_executor="mine")
    await agent.run()

See docs/devices.md (writing executors) and docs/protocol.md (the wire protocol).
"""

from .agent import DEFAULT_CHANNEL_OPTIONS, DeviceAgent, DeviceAgentError, system_info
from .executors import (
    Assignment,
    Executor,
    ExecutorError,
    ShellExecutor,
    default_executors,
    echo,
    sleep,
)

__all__ = [
    "DEFAULT_CHANNEL_OPTIONS", "Assignment", "DeviceAgent", "DeviceAgentError", "Executor",
    "ExecutorError", "ShellExecutor", "default_executors", "echo", "sleep", "system_info",
]
