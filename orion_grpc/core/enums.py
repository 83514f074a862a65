"""Enumerations shared by the engine (values match the reference API)."""

from __future__ import annotations

from enum import Enum


class TaskStatus(Enum):
    """Lifecycle of one star."""

    __hash__ = object.__hash__  # members are singletons; identity hashing is C-fast

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    WAITING_DEPENDENCY = "waiting_dependency"


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
MODIFIABLE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.WAITING_DEPENDENCY})


class DependencyType(Enum):
    """How a prerequisite's outcome satisfies an edge (see docs/concepts.md)."""

    __hash__ = object.__hash__  # members are singletons; identity hashing is C-fast

    UNCONDITIONAL = "unconditional"
    CONDITIONAL = "conditional"
    SUCCESS_ONLY = "success_only"
    COMPLETION_ONLY = "completion_only"


class OrionState(Enum):
    """State of a whole orion, recomputed on every star transition."""

    __hash__ = object.__hash__  # members are singletons; identity hashing is C-fast

    CREATED = "created"
    READY = "ready"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    PARTIALLY_FAILED = "partially_failed"
    CANCELLED = "cancelled"  # Orion addition: the reference has no way to say "stopped by request"


class TaskPriority(Enum):
    """Dispatch order among ready stars: higher first."""

    __hash__ = object.__hash__  # members are singletons; identity hashing is C-fast

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


class DeviceType(Enum):
    """Kinds of devices a star may target."""

    __hash__ = object.__hash__  # members are singletons; identity hashing is C-fast

    WINDOWS = "windows"
    MACOS = "macos"
    LINUX = "linux"
    ANDROID = "android"
    IOS = "ios"
    WEB = "web"
    API = "api"


class DeviceStatus(Enum):
    """Connection / occupancy state of a device."""

    __hash__ = object.__hash__  # members are singletons; identity hashing is C-fast

    CONNECTING = "connecting"
    CONNECTED = "connected"
    IDLE = "idle"
    BUSY = "busy"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


ONLINE_DEVICE_STATUSES = frozenset({DeviceStatus.CONNECTED, DeviceStatus.IDLE, DeviceStatus.BUSY})


def parse_enum(enum_cls: type[Enum], value: object, default: Enum | None = None) -> Enum | None:
    """Accept an enum member, its value, or its name (any case); else ``default``.

    The reference accepts loose spellings when loading dicts/JSON; we keep that leniency.
    """
    if isinstance(value, enum_cls):
        return value
    if value is None:
        return default
    try:  # Enum's own value index: a dict lookup, not a scan (this runs on hot paths)
        member = enum_cls._value2member_map_.get(value)
    except TypeError:  # unhashable: equals no member's value
        return default
    if member is None and isinstance(value, str):
        member = enum_cls.__members__.get(value.upper())
    return member if member is not None else default
