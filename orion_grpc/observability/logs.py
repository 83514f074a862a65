"""Log lines for people and for machines, with the ids that say what they are about.

``setup_logging(level, fmt)`` (``orion serve`` / ``orion device``, ``--log-format``):

- ``json``: one JSON object per line — ``time`` (UTC, ISO 8601), ``level``, ``logger``,
  ``message``, then whichever apply: ``orion_id``, ``star_id``, ``device_id`` (from
  ``orion_grpc.core.log_context`` or the log call's ``extra``), ``trace_id`` / ``span_id``
  (the current OpenTelemetry span when tracing is on), ``exception``;
- ``text``: ``TIME LEVEL logger: message [orion=… star=… device=… trace=…]``;
- ``auto`` (the default): ``text`` when stderr is a terminal, else ``json`` (a container, a
  service manager, a pipe: something that collects logs).

``EventLogger`` turns the engine's events into log lines (orions starting and ending, stars
retried or failed; every star transition at DEBUG), each naming its orion, star and device.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from ..core import log_context
from ..core.events import Event, EventType, IEventObserver, OrionEvent, TaskEvent

FORMATS = ("auto", "json", "text")
ID_FIELDS = ("orion_id", "star_id", "device_id")
_TEXT_KEYS = {"orion_id": "orion", "star_id": "star", "device_id": "device", "trace_id": "trace"}


def _ids(record: logging.LogRecord) -> dict[str, str]:
    """The ids of a record: explicit ``extra`` first, then the context it was logged in."""
    ids: dict[str, str] = {}
    for name in ID_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = log_context.VARIABLES[name].get()
        if value:
            ids[name] = str(value)
    trace_id = getattr(record, "trace_id", None)
    if trace_id:
        ids["trace_id"] = str(trace_id)
    else:
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            ids["trace_id"] = f"{span.trace_id:032x}"
            ids["span_id"] = f"{span.span_id:016x}"
    return ids


class JsonFormatter(logging.Formatter):
    """One JSON object per line (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update(_ids(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message [orion=… star=… device=… trace=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = _ids(record)
        tags = " ".join(f"{_TEXT_KEYS[k]}={v}" for k, v in ids.items() if k in _TEXT_KEYS)
        if not tags:
            return text
        head, newline, rest = text.partition("\n")  # keep a traceback below the tags
        return f"{head} [{tags}]{newline}{rest}"


def resolve_format(fmt: str, stream: TextIO) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def setup_logging(level: str | int = "INFO", fmt: str = "auto",
                  stream: TextIO | None = None) -> str:
    """Configure the root logger for an Orion process; returns the format chosen."""
    stream = stream or sys.stderr
    chosen = resolve_format(fmt, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return chosen


# ---------------------------------------------------------------------- engine events
_INFO_EVENTS = frozenset({EventType.ORION_STARTED, EventType.ORION_COMPLETED,
                          EventType.ORION_FAILED, EventType.ORION_CANCELLED,
                          EventType.TASK_RETRYING, EventType.TASK_FAILED})
_DEBUG_EVENTS = frozenset({EventType.TASK_STARTED, EventType.TASK_COMPLETED,
                           EventType.TASK_CANCELLED})


class EventLogger(IEventObserver):
    """Log lines for the engine's events (subscribe with ``attach``; it runs in its own task,
    off the scheduler's path). ``trace_id_of(orion_id)`` (tracing's ``OrionSpans.trace_id``)
    puts the orion's trace id on its lines."""

    def __init__(self, logger: logging.Logger | None = None,
                 trace_id_of: Callable[[str], str | None] | None = None) -> None:
        self.logger = logger or logging.getLogger("orion_grpc.events")
        self.trace_id_of = trace_id_of

    def event_types(self) -> set[EventType]:
        """What to subscribe to: star starts and completions only if DEBUG is on."""
        wanted = set(_INFO_EVENTS)
        if self.logger.isEnabledFor(logging.DEBUG):
            wanted |= _DEBUG_EVENTS
        return wanted

    async def on_event(self, event: Event) -> None:
        data = event.data
        orion_id = getattr(event, "orion_id", None) or data.get("orion_id")
        extra: dict[str, Any] = {"orion_id": orion_id}
        if self.trace_id_of is not None and orion_id:
            extra["trace_id"] = self.trace_id_of(orion_id)
        kind = event.event_type
        if isinstance(event, TaskEvent):
            extra.update(star_id=event.task_id, device_id=data.get("device_id"))
            attempt = int(data.get("attempt") or 0) + 1
            if kind is EventType.TASK_RETRYING:
                self.logger.warning(
                    "star %s attempt %d failed on %s (%s: %s); retrying in %.2fs",
                    event.task_id, attempt - 1, data.get("failed_device_id") or "-",
                    data.get("reason") or "error", data.get("error") or "failed",
                    float(data.get("retry_in") or 0.0), extra=extra)
            elif kind is EventType.TASK_FAILED:
                self.logger.warning("star %s failed (%s): %s", event.task_id,
                                    data.get("reason") or "task_error", event.error,
                                    extra=extra)
            elif kind is EventType.TASK_STARTED:
                self.logger.debug("star %s attempt %d started on %s", event.task_id, attempt,
                                  data.get("device_id"), extra=extra)
            elif kind is EventType.TASK_COMPLETED:
                self.logger.debug("star %s completed", event.task_id, extra=extra)
            elif kind is EventType.TASK_CANCELLED:
                self.logger.debug("star %s cancelled: %s", event.task_id, event.error or "-",
                                  extra=extra)
        elif isinstance(event, OrionEvent):
            if kind is EventType.ORION_STARTED:
                self.logger.info("orion %s started: %s stars", orion_id,
                                 data.get("total_tasks"), extra=extra)
            else:
                counts = (data.get("statistics") or {}).get("task_status_counts") or {}
                seconds = data.get("execution_duration")
                self.logger.info(
                    "orion %s %s%s: %s", orion_id, event.orion_state,
                    f" in {seconds:.2f}s" if isinstance(seconds, int | float) else "",
                    ", ".join(f"{n} {state}" for state, n in counts.items()) or "no stars",
                    extra=extra)

    def __repr__(self) -> str:
        return "EventLogger"
