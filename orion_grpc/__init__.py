"""Orion: run DAGs of tasks ("orions" of "stars") across a fleet of devices.

The in-process engine is importable directly::

    from orion_grpc import TaskOrion, TaskStar, TaskStarLine, TaskOrionOrchestrator
"""

from .core import *  # noqa: F403 - the engine's public API is the package's public API
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = list(_core_all)
