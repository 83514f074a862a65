"""Live progress of one orion, built from its event stream (``orion watch``, ``submit --wait``,
``orion demo``).

``OrionProgress`` is the model: one row per star (device, status, attempt, duration), fed by
``orion.v1.Event`` messages (and optionally a GetOrion snapshot, so stars that have not started
yet are listed too). ``ProgressPrinter`` shows it: on a terminal, a progress bar and a per-star
table redrawn in place (durations of running stars tick); otherwise one plain line per star
transition. ``summary`` is the closing report: the table, the outcome, the critical path and
the parallelism achieved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from ..api.convert import result_from_pb, value_from_pb
from ..gen.orion.v1 import event_pb2, orion_pb2, task_star_pb2

E = event_pb2
TERMINAL_EVENTS = {E.EVENT_TYPE_ORION_COMPLETED, E.EVENT_TYPE_ORION_FAILED,
                   E.EVENT_TYPE_ORION_CANCELLED}
_TASK_EVENTS = {E.EVENT_TYPE_TASK_STARTED, E.EVENT_TYPE_TASK_COMPLETED, E.EVENT_TYPE_TASK_FAILED,
                E.EVENT_TYPE_TASK_CANCELLED, E.EVENT_TYPE_TASK_RETRYING,
                E.EVENT_TYPE_TASK_PROGRESS}
_FINISHED = {"completed", "failed", "cancelled"}
_MARKS = {"running": "->", "completed": "ok", "failed": "!!", "cancelled": "xx",
          "retrying": "~~", "pending": "  ", "waiting": "  "}


def _status(value: int) -> str:
    name = task_star_pb2.TaskStatus.Name(value) if value in task_star_pb2.TaskStatus.values() \
        else "TASK_STATUS_UNSPECIFIED"
    short = name.removeprefix("TASK_STATUS_").lower()
    return {"waiting_dependency": "waiting", "unspecified": "pending"}.get(short, short)


def _event_name(value: int) -> str:
    try:
        return str(E.EventType.Name(value)).removeprefix("EVENT_TYPE_").lower()
    except ValueError:
        return str(value)


def _seconds(ts: Any) -> float | None:
    return ts.ToNanoseconds() / 1e9 if ts.seconds or ts.nanos else None


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def compact_json(value: Any, width: int = 80) -> str:
    return _clip(json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str,
                            sort_keys=True), width)


@dataclass
class StarRow:
    task_id: str
    name: str = ""
    device: str = ""
    status: str = "pending"
    attempt: int = 0
    started: float | None = None  # epoch seconds (server clock)
    duration: float | None = None
    progress: float = 0.0
    note: str = ""

    @property
    def label(self) -> str:
        return self.name if self.name and self.name != self.task_id else self.task_id

    def elapsed(self, now: float) -> float | None:
        if self.duration is not None:
            return self.duration
        if self.status == "running" and self.started is not None:
            return max(0.0, now - self.started)
        return None


class OrionProgress:
    """The state of one orion's stars, as its events tell it."""

    def __init__(self, orion_id: str) -> None:
        self.orion_id = orion_id
        self.name = ""
        self.state = "pending"
        self.rows: dict[str, StarRow] = {}
        self.started: float | None = None
        self.retries = 0
        self.final: event_pb2.Event | None = None
        self.notes: list[str] = []  # the latest notable happenings (retries, failures, edits)

    # ------------------------------------------------------------------ input
    def load(self, orion: orion_pb2.TaskOrion, with_state: bool = True) -> None:
        """Take the structure (and, ``with_state``, the stars' states) from a GetOrion or a
        snapshot; stars no longer in the orion are dropped, new ones added."""
        self.name = orion.name or self.name
        seen = set()
        for task in orion.tasks:
            seen.add(task.task_id)
            row = self._row(task.task_id)
            if with_state:
                self._update_from_snapshot(row, task)
            else:
                row.name = task.name or row.name
                row.device = row.device or task.target_device_id
        for task_id in list(self.rows):
            if task_id not in seen:
                del self.rows[task_id]

    def _row(self, task_id: str) -> StarRow:
        row = self.rows.get(task_id)
        if row is None:
            row = self.rows[task_id] = StarRow(task_id)
        return row

    @staticmethod
    def _update_from_snapshot(row: StarRow, task: task_star_pb2.TaskStar) -> None:
        row.name = task.name or row.name
        row.device = task.target_device_id or row.device
        if task.status:
            row.status = _status(task.status)
        row.started = _seconds(task.execution_start_time) or row.started
        if task.HasField("execution_duration"):
            row.duration = task.execution_duration.ToNanoseconds() / 1e9
        if task.HasField("execution_start_time") and task.current_retry + 1 > row.attempt:
            row.attempt = task.current_retry + 1  # it ran (or runs): this many attempts

    def apply(self, event: event_pb2.Event) -> str | None:
        """Update from one event; returns a line worth printing (None for the others)."""
        if event.type in _TASK_EVENTS and event.WhichOneof("payload") == "task":
            return self._apply_task(event)
        if event.WhichOneof("payload") == "orion":
            return self._apply_orion(event)
        return None

    def _apply_task(self, event: event_pb2.Event) -> str | None:
        payload = event.task
        row = self._row(event.task_id or payload.task_id)
        kind = event.type
        if kind == E.EVENT_TYPE_TASK_PROGRESS:
            row.progress = payload.progress
            row.note = payload.progress_message or row.note
            return None
        if payload.HasField("snapshot"):
            self._update_from_snapshot(row, payload.snapshot)
        if event.device_id:
            row.device = event.device_id
        if kind != E.EVENT_TYPE_TASK_CANCELLED or row.started is not None:
            row.attempt = max(row.attempt, payload.attempt)
        status = _status(payload.status) if payload.status else row.status
        detail = ""
        if kind == E.EVENT_TYPE_TASK_STARTED:
            row.status, row.duration, row.progress, row.note = "running", None, 0.0, ""
            row.started = _seconds(payload.snapshot.execution_start_time) or \
                _seconds(event.timestamp)
            detail = f"on {row.device}" + (f" (attempt {row.attempt})" if row.attempt > 1 else "")
        elif kind == E.EVENT_TYPE_TASK_RETRYING:  # attempt = the next one
            self.retries += 1
            row.status, row.duration, row.progress = "retrying", None, 0.0
            failed_on = _data(event, "failed_device_id") or row.device
            error = payload.error or _data(event, "error") or "failed"
            reason = payload.error_reason or _data(event, "reason") or "error"
            row.note = (f"attempt {max(1, payload.attempt - 1)} failed on {failed_on} "
                        f"({reason}: {error})")
            detail = f"{row.note}; retrying"
            self._note(f"{row.task_id}: {detail}")
        elif kind == E.EVENT_TYPE_TASK_COMPLETED:
            row.status, row.progress, row.note = "completed", 1.0, ""
            detail = f"on {row.device} in {_fmt_seconds(row.duration)}"
        elif kind == E.EVENT_TYPE_TASK_FAILED:
            row.status = "failed"
            row.note = payload.error
            detail = f"on {row.device or '-'}: {payload.error_reason or 'error'}: {payload.error}"
            self._note(f"{row.task_id} failed: {payload.error}")
        elif kind == E.EVENT_TYPE_TASK_CANCELLED:
            row.status = "cancelled"
            row.note = payload.error
            detail = payload.error or "cancelled"
        else:
            row.status = status
        return (f"[{self.done:>{len(str(self.total))}}/{self.total}] {_event_name(kind):<15} "
                f"{row.task_id} ({row.label}) {detail}").rstrip()

    def _apply_orion(self, event: event_pb2.Event) -> str | None:
        payload = event.orion
        if payload.summary.name:
            self.name = payload.summary.name
        if payload.HasField("snapshot"):
            self.load(payload.snapshot)
        state = str(orion_pb2.OrionState.Name(payload.state)).removeprefix("ORION_STATE_") \
            .lower() if payload.state in orion_pb2.OrionState.values() else self.state
        self.state = state
        if event.type == E.EVENT_TYPE_ORION_STARTED:
            self.started = _seconds(event.timestamp)
            for task_id, device in (_data(event, "device_assignments") or {}).items():
                if isinstance(device, str):
                    self._row(task_id).device = self._row(task_id).device or device
            return f"orion {self.orion_id} started ({self.total} stars)"
        if event.type == E.EVENT_TYPE_ORION_MODIFIED:
            acks = list(payload.on_task_ids)
            text = f"orion {self.orion_id} modified" + \
                (f" (acknowledges {', '.join(acks)})" if acks else "")
            self._note(text)
            return text
        if event.type in TERMINAL_EVENTS:
            self.final = event
            return None
        return None

    def _note(self, text: str) -> None:
        self.notes = [*self.notes, text][-4:]

    # ------------------------------------------------------------------ derived
    @property
    def total(self) -> int:
        return len(self.rows)

    @property
    def done(self) -> int:
        return sum(1 for r in self.rows.values() if r.status in _FINISHED)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows.values():
            out[row.status] = out.get(row.status, 0) + 1
        return out

    def bar(self, width: int = 30) -> str:
        total = self.total or 1
        filled = round(width * self.done / total)
        return "[" + "#" * filled + "." * (width - filled) + "]"

    def render(self, width: int = 100, now: float | None = None) -> list[str]:
        """The live block: header, bar, one row per star, the latest notes."""
        now = time.time() if now is None else now
        elapsed = _fmt_seconds(now - self.started) if self.started else "-"
        counts = self.counts()
        detail = ", ".join(f"{counts[k]} {k}" for k in ("running", "retrying", "failed",
                                                         "cancelled") if counts.get(k))
        lines = [f"{self.orion_id}" + (f" - {self.name}" if self.name else "")
                 + f"  {self.state.upper()}  {elapsed}",
                 f"{self.bar(min(40, max(10, width - 40)))} {self.done}/{self.total} stars"
                 + (f" ({detail})" if detail else ""),
                 self._header()]
        for row in self.rows.values():
            lines.append(self._line(row, now))
        lines.extend(f"  {note}" for note in self.notes)
        return [_clip(line, width) for line in lines]

    def _widths(self) -> tuple[int, int]:
        name = max([len(r.label) for r in self.rows.values()] + [4])
        device = max([len(r.device) for r in self.rows.values()] + [6])
        return min(name, 34), min(device, 24)

    def _header(self) -> str:
        nw, dw = self._widths()
        return f"   {'star':<{nw}}  {'device':<{dw}}  {'status':<10} {'try':>3} {'time':>8}"

    def _line(self, row: StarRow, now: float) -> str:
        nw, dw = self._widths()
        status = row.status
        if status == "running" and 0 < row.progress < 1:
            status = f"running {int(row.progress * 100)}%"
        return (f"{_MARKS.get(row.status, '  ')} {_clip(row.label, nw):<{nw}}  "
                f"{_clip(row.device or '-', dw):<{dw}}  {status:<10} "
                f"{row.attempt or '-':>3} {_fmt_seconds(row.elapsed(now)):>8}")

    # ------------------------------------------------------------------ the end
    def result(self) -> dict[str, Any] | None:
        if self.final is None:
            return None
        result = result_from_pb(self.final.orion.result)
        result["orion_id"] = self.orion_id
        return result

    def summary(self, *, results: bool = False, width: int = 100) -> str:
        """The closing report (call after the terminal event)."""
        result = self.result() or {"status": self.state, "statistics": {}, "errors": {},
                                   "results": {}}
        now = time.time()
        rows = ["", self._header()] + [self._line(r, now) for r in self.rows.values()]
        stats = result.get("statistics") or {}
        counts = stats.get("task_status_counts") or self.counts()
        rank = {k: i for i, k in enumerate(("completed", "failed", "cancelled"))}
        rows.append("")
        rows.append(f"orion {self.orion_id}: {str(result['status']).upper()} - "
                    + ", ".join(f"{counts[k]} {k}"
                                for k in sorted(counts, key=lambda k: (rank.get(k, 9), k)))
                    + (f", {self.retries} retried attempt{'s' * (self.retries != 1)}"
                       if self.retries else ""))
        path = stats.get("critical_path_tasks") or []
        if path:
            names = [self.rows[t].label if t in self.rows else t for t in path]
            rows.append(f"critical path ({_fmt_seconds(stats.get('critical_path_length'))}): "
                        + " -> ".join(names))
        if stats.get("total_work"):
            wall = stats.get("execution_duration")
            rows.append(f"parallelism: {stats.get('parallelism_ratio', 0):.2f}x "
                        f"({_fmt_seconds(stats['total_work'])} of work"
                        + (f", {_fmt_seconds(wall)} wall clock)" if wall else ")"))
        order = {task_id: i for i, task_id in enumerate(self.rows)}
        errors = result.get("errors") or {}
        for task_id in sorted(errors, key=lambda t: order.get(t, len(order))):
            row = self.rows.get(task_id)
            if row is not None and row.status == "completed":
                continue  # an earlier attempt's error; the star made it
            label = "skipped" if row is not None and row.status == "cancelled" else "error"
            rows.append(f"  {task_id} {label}: {errors[task_id]}")
        values = {t: v for t, v in (result.get("results") or {}).items() if v is not None}
        if results and values:
            rows.append("results:")
            idw = max(len(t) for t in values)
            for task_id in sorted(values, key=lambda t: order.get(t, len(order))):
                rows.append(f"  {task_id:<{idw}}  "
                            f"{compact_json(values[task_id], width - idw - 4)}")
        return "\n".join(rows)


def _data(event: event_pb2.Event, key: str) -> Any:
    if key not in event.data.fields:
        return None
    return value_from_pb(event.data.fields[key])


# ---------------------------------------------------------------------- printing
class ProgressPrinter:
    """Shows an OrionProgress: redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, progress: OrionProgress, out: TextIO | None = None,
                 live: bool | None = None, refresh: float = 0.2) -> None:
        self.progress = progress
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.refresh = refresh
        self._drawn = 0
        self._changed = asyncio.Event()
        self._closed = False

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 24)).columns - 1)

    def update(self, event: event_pb2.Event) -> None:
        line = self.progress.apply(event)
        if self.live:
            self._changed.set()
        elif line:
            print(line, file=self.out, flush=True)

    def draw(self) -> None:
        if not self.live:
            return
        lines = self.progress.render(self._width())
        parts = []
        if self._drawn:
            parts.append(f"\x1b[{self._drawn}F")  # back to the first line of the last frame
        parts.append("\x1b[J")  # clear from here down
        parts.append("\n".join(lines) + "\n")
        self.out.write("".join(parts))
        self.out.flush()
        self._drawn = len(lines)

    async def run(self, events: AsyncIterator[event_pb2.Event],
                  on_event: Callable[[event_pb2.Event], Any] | None = None) -> OrionProgress:
        """Consume ``events`` until the orion's terminal event; returns the progress model."""
        ticker = asyncio.create_task(self._tick()) if self.live else None
        if self.live:
            self.out.write("\x1b[?25l")  # hide the cursor while redrawing
        try:
            async for event in events:
                if event.orion_id and event.orion_id != self.progress.orion_id:
                    continue
                self.update(event)
                if on_event is not None:
                    outcome = on_event(event)
                    if asyncio.iscoroutine(outcome):
                        await outcome
                if event.type in TERMINAL_EVENTS:
                    break
        finally:
            self._closed = True
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            if self.live:
                with contextlib.suppress(Exception):
                    if self.progress.final is not None:
                        self.erase()  # the summary that follows shows the final table
                    else:
                        self.draw()  # interrupted: leave the last frame
                    self.out.write("\x1b[?25h")
                    self.out.flush()
        return self.progress

    def erase(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    async def _tick(self) -> None:
        while not self._closed:
            self.draw()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.refresh)
