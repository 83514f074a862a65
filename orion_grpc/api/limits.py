"""What one request may ask of the server: limits, and checks of JSON values on the wire.

Every limit is a ``ServerConfig`` setting (docs/operations.md, "Limits"). A request beyond
one is refused before anything is built or changed, so existing orions are untouched:

* stars / lines per orion and the size of one star's ``task_data`` — INVALID_ARGUMENT
  (``TOO_MANY_STARS``, ``TOO_MANY_LINES``, ``TASK_DATA_TOO_LARGE``): the request can never
  succeed as it is; split it, or ask the operator to raise the limit. The counts are checked
  on the wire message first, so a huge orion costs O(1) to refuse, not a validation pass.
* streams one client holds open (WatchEvents, DeviceService.Connect, reflection) —
  RESOURCE_EXHAUSTED (``TOO_MANY_STREAMS``): retry once one of them has ended.

JSON values (``google.protobuf.Struct`` / ``Value``: task_data, metadata, results) must be
JSON: no NaN or Infinity (they have no JSON form and would fail every later conversion), at
most ``MAX_JSON_DEPTH`` levels of nesting (deeper values would not even parse inside the
larger messages the server sends back, such as events with orion snapshots).
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ..core import (
    AddDependency,
    AddTask,
    EditOperation,
    InvalidArgumentError,
    RemoveDependency,
    RemoveTask,
    TaskOrion,
    Violation,
)
from .errors import ApiError

MiB = 1024 * 1024
MAX_JSON_DEPTH = 20
MAX_REPORTED = 100  # violations collected per request; the status keeps what fits anyway

_JSON_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.Value",
                         "google.protobuf.ListValue"})


def setting(name: str) -> str:
    """How an operator changes limit ``name``: the flag and its environment variable."""
    return f"--{name.replace('_', '-')} / ORION_{name.upper()}"


def _too_big(reason: str, message: str, name: str, limit: int, actual: int,
             violations: list[Violation]) -> InvalidArgumentError:
    return InvalidArgumentError(message, reason, violations,
                                {"limit": name, "max": str(limit), "actual": str(actual),
                                 "setting": setting(name)})


@dataclass(frozen=True)
class Limits:
    """The per-request limits of one server (``ServerConfig.limits()``)."""

    max_stars: int = 10_000
    max_lines: int = 50_000
    max_task_data_bytes: int = 1 * MiB
    max_streams_per_client: int = 100

    # ------------------------------------------------------------------ orions and stars
    def check_orion(self, pb: Any, field: str = "orion") -> None:
        """An orion of a request (``orion.v1.TaskOrion``): counts, then each star's task_data."""
        self._check_counts(len(pb.tasks), len(pb.dependencies), field, "the orion has")
        problems: list[Violation] = []
        largest = 0
        for i, task in enumerate(pb.tasks):
            largest = max(largest, self._task_data(task, f"{field}.tasks[{i}]", problems))
        self._raise_task_data(problems, largest)

    def check_task(self, pb: Any, field: str = "task") -> None:
        """One star of a request (``orion.v1.TaskStar``: ExecuteSingleTask, edits)."""
        problems: list[Violation] = []
        self._raise_task_data(problems, self._task_data(pb, field, problems))

    def check_growth(self, orion: TaskOrion, ops: list[EditOperation]) -> None:
        """An edit batch must not grow ``orion`` beyond the limits (removals make room)."""
        stars = orion.task_count + sum(isinstance(op, AddTask) for op in ops) \
            - sum(isinstance(op, RemoveTask) for op in ops)
        lines = orion.dependency_count + sum(isinstance(op, AddDependency) for op in ops) \
            - sum(isinstance(op, RemoveDependency) for op in ops)
        self._check_counts(stars, lines, "operations",
                           f"after this edit orion {orion.orion_id} would have",
                           grow_only=(orion.task_count, orion.dependency_count))

    def _check_counts(self, stars: int, lines: int, field: str, subject: str,
                      grow_only: tuple[int, int] | None = None) -> None:
        # grow_only: an edit that does not add to an orion already beyond a (lowered) limit
        # is still allowed — the limit is about growth, not about what was accepted before.
        if stars > self.max_stars and (grow_only is None or stars > grow_only[0]):
            raise _too_big(
                "TOO_MANY_STARS", f"{subject} {stars} stars; this server accepts at most "
                f"{self.max_stars} per orion ({setting('max_stars')}): split the work into "
                "several orions, or ask the operator to raise the limit", "max_stars",
                self.max_stars, stars,
                [Violation(f"{field}.tasks" if grow_only is None else field,
                           f"{stars} stars, at most {self.max_stars}", "TOO_MANY_STARS")])
        if lines > self.max_lines and (grow_only is None or lines > grow_only[1]):
            raise _too_big(
                "TOO_MANY_LINES", f"{subject} {lines} lines; this server accepts at most "
                f"{self.max_lines} per orion ({setting('max_lines')}): split the work into "
                "several orions, or ask the operator to raise the limit", "max_lines",
                self.max_lines, lines,
                [Violation(f"{field}.dependencies" if grow_only is None else field,
                           f"{lines} lines, at most {self.max_lines}", "TOO_MANY_LINES")])

    def _task_data(self, task: Any, where: str, problems: list[Violation]) -> int:
        """The wire size of the star's task_data; a violation if it is too large."""
        size = task.task_data.ByteSize() if task.HasField("task_data") else 0
        if size > self.max_task_data_bytes and len(problems) < MAX_REPORTED:
            problems.append(Violation(f"{where}.task_data",
                                      f"{size} bytes, at most {self.max_task_data_bytes}",
                                      "TASK_DATA_TOO_LARGE"))
        return size

    def _raise_task_data(self, problems: list[Violation], largest: int) -> None:
        if problems:
            raise _too_big(
                "TASK_DATA_TOO_LARGE", f"{len(problems)} star(s) carry task_data larger than "
                f"{self.max_task_data_bytes} bytes ({setting('max_task_data_bytes')}); pass "
                f"large inputs by reference (a URL or path) instead: "
                + "; ".join(f"{v.field}: {v.description}" for v in problems[:5]),
                "max_task_data_bytes", self.max_task_data_bytes, largest, problems)


# ---------------------------------------------------------------------- JSON values
@functools.cache
def _json_bearing(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The fields of ``descriptor`` that are, or can contain, JSON values."""
    return tuple(f for f in descriptor.fields if f.message_type is not None
                 and _may_hold_json(f.message_type, frozenset({descriptor.full_name})))


def _may_hold_json(descriptor: Descriptor, seen: frozenset[str]) -> bool:
    if descriptor.full_name in _JSON_TYPES:
        return True
    if descriptor.full_name in seen:
        return False
    seen = seen | {descriptor.full_name}
    return any(f.message_type is not None and _may_hold_json(f.message_type, seen)
               for f in descriptor.fields)


def _key_path(where: str, key: str) -> str:
    return f"{where}.{key}" if key.isidentifier() else f"{where}[{key!r}]"


# Cheap screens on the serialized bytes (C speed), so only suspicious values are walked in
# Python: a double that is NaN or ±Infinity is the Value.number_value tag 0x11 and 8 bytes
# whose exponent bits are all set; every level of nesting below the root is a Value with
# struct_value (tag 0x2a, '*') or list_value (tag 0x32, '2'). Bytes inside strings can only
# make a value look suspicious, never hide a problem.
_NON_FINITE = re.compile(rb"\x11[\x00-\xff]{6}[\xf0-\xff][\x7f\xff]", re.S)


def _suspicious(raw: bytes) -> bool:
    return (raw.count(b"*") + raw.count(b"2") >= MAX_JSON_DEPTH
            or _NON_FINITE.search(raw) is not None)


def _json_value_problems(value: Message, where: str, out: list[Violation]) -> None:
    """Check one Struct / Value / ListValue (iteratively: depth is what is being checked)."""
    if not _suspicious(value.SerializeToString()):
        return
    stack: list[tuple[Message, str, int]] = [(value, where, 1)]
    while stack and len(out) < MAX_REPORTED:
        msg, path, depth = stack.pop()
        kind = msg.DESCRIPTOR.full_name
        if kind == "google.protobuf.Value":
            which = msg.WhichOneof("kind")  # type: ignore[attr-defined]
            if which == "number_value" and not math.isfinite(msg.number_value):  # type: ignore[attr-defined]
                out.append(Violation(path, f"{msg.number_value} is not a JSON number; send "  # type: ignore[attr-defined]
                                     "a finite number, null or a string", "INVALID_JSON"))
            elif which in ("struct_value", "list_value"):
                stack.append((getattr(msg, which), path, depth))
            continue
        if depth > MAX_JSON_DEPTH:
            out.append(Violation(path, f"JSON values may nest at most {MAX_JSON_DEPTH} levels "
                                 "deep; flatten it or pass it as a string", "JSON_TOO_DEEP"))
            continue
        if kind == "google.protobuf.Struct":
            for key, item in msg.fields.items():  # type: ignore[attr-defined]
                stack.append((item, _key_path(path, key), depth + 1))
        else:  # ListValue
            for i, item in enumerate(msg.values):  # type: ignore[attr-defined]
                stack.append((item, f"{path}[{i}]", depth + 1))


def json_problems(message: Message, where: str = "") -> list[Violation]:
    """Every JSON value inside ``message`` that is not JSON (NaN, Infinity) or nests deeper
    than ``MAX_JSON_DEPTH``; field paths as in the request (``orion.tasks[2].task_data.x``)."""
    out: list[Violation] = []
    if not _suspicious(message.SerializeToString()):
        return out
    stack: list[tuple[Message, str]] = [(message, where)]
    while stack and len(out) < MAX_REPORTED:
        msg, path = stack.pop()
        if msg.DESCRIPTOR.full_name in _JSON_TYPES:
            _json_value_problems(msg, path, out)
            continue
        for fd in _json_bearing(msg.DESCRIPTOR):
            name = f"{path}.{fd.name}" if path else fd.name
            value = getattr(msg, fd.name)
            if fd.message_type.GetOptions().map_entry:
                stack.extend((item, f"{name}[{key!r}]") for key, item in value.items()
                             if isinstance(item, Message))
            elif fd.is_repeated:  # screened one by one: a long list is mostly clean
                stack.extend((item, f"{name}[{i}]") for i, item in enumerate(value)
                             if _suspicious(item.SerializeToString()))
            elif msg.HasField(fd.name):
                stack.append((value, name))
    return out


# ---------------------------------------------------------------------- streams
class StreamSlots:
    """Counts the streams each client holds open; ``acquire`` refuses one beyond the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._released: asyncio.Event | None = None  # created on first wait (in the loop)

    def open_streams(self, client: str) -> int:
        return self._open.get(client, 0)

    def acquire(self, client: str) -> None:
        """Take a slot for ``client``; ApiError (RESOURCE_EXHAUSTED) if it has none left."""
        count = self._open.get(client, 0)
        if count >= self.limit:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client ({client}) already holds {count} streams open, the most this "
                f"server allows ({setting('max_streams_per_client')}); close one (a "
                "WatchEvents or device stream) and retry", "TOO_MANY_STREAMS",
                metadata={"limit": "max_streams_per_client", "max": str(self.limit),
                          "client": client, "setting": setting("max_streams_per_client")})
        self._open[client] = count + 1

    def release(self, client: str) -> None:
        left = self._open.get(client, 0) - 1
        if left > 0:
            self._open[client] = left
        else:
            self._open.pop(client, None)
        if self._released is not None:
            self._released.set()

    async def wait_for_at_most(self, client: str, count: int) -> None:
        """Wait until ``client`` holds at most ``count`` streams (a stream's slot is freed
        when its handler ends, a moment after the client cancelled it)."""
        while self.open_streams(client) > count:
            if self._released is None:
                self._released = asyncio.Event()
            self._released.clear()
            await self._released.wait()
