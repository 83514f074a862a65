"""``orion serve | submit | status | devices | watch | cancel | edit`` (registered by
orion_grpc.cli).

Scriptable contract: every client command takes ``--server H:P`` (default ``$ORION_SERVER``,
else 127.0.0.1:50051), TLS and token flags (``--ca``, ``--cert``/``--key``, ``--token``
or ``$ORION_TOKEN``; ``orion_grpc.transport``) and ``--json`` (one JSON document, or one
JSON object per line for ``watch``); ``submit FILE --wait`` and ``watch ORION`` exit 0 only
when the orion COMPLETED.
Orion and edit files are YAML or JSON in the proto's JSON mapping (``client/files.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
from collections.abc import Callable
from typing import Any, TextIO

from google.protobuf import json_format

from ..api.convert import result_from_pb
from ..core import NotFoundError, OrionError
from ..gen.orion.v1 import (
    device_pb2,
    event_pb2,
    manager_service_pb2,
    orion_pb2,
    task_star_pb2,
)
from ..transport import ChannelSecurity
from ..transport import add_arguments as add_security_arguments
from .client import OrionClient, default_target
from .files import DocumentError, edit_request, read_document, submit_request
from .graph import add_graph_arguments, cmd_graph
from .progress import TERMINAL_EVENTS, OrionProgress, ProgressPrinter

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = ["TERMINAL_EVENTS", "add_commands", "event_line", "follow_orion", "submit_request"]


# ---------------------------------------------------------------------- output
def _name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def event_line(event: event_pb2.Event) -> str:
    kind = _name(event_pb2.EventType, event.type, "EVENT_TYPE_")
    parts = [f"#{event.sequence:<5}", f"{kind:<20}"]
    payload = event.WhichOneof("payload")
    if payload == "task":
        task = event.task
        parts.append(f"{event.orion_id}/{event.task_id}")
        parts.append(_name(task_star_pb2.TaskStatus, task.status, "TASK_STATUS_"))
        if event.device_id:
            parts.append(f"on {event.device_id}")
        if task.attempt > 1:
            parts.append(f"attempt {task.attempt}")
        if task.error:
            parts.append(f"({task.error_reason or 'error'}: {task.error})")
    elif payload == "orion":
        parts.append(event.orion_id)
        parts.append(_name(orion_pb2.OrionState, event.orion.state, "ORION_STATE_"))
        if event.orion.on_task_ids:
            parts.append(f"acknowledges {', '.join(event.orion.on_task_ids)}")
    elif payload == "device":
        parts.append(event.device_id)
        parts.append(_name(device_pb2.DeviceStatus, event.device.status, "DEVICE_STATUS_"))
    elif payload == "agent_output":
        parts.append(f"{event.agent_output.agent}: {event.agent_output.text}")
    return " ".join(parts)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str, ensure_ascii=False)


def _event_json(event: event_pb2.Event) -> str:
    return json.dumps(json_format.MessageToDict(event, preserving_proto_field_name=True),
                      ensure_ascii=False)


# ---------------------------------------------------------------------- commands
async def fetch_orion(client: OrionClient, orion_id: str) -> orion_pb2.TaskOrion | None:
    """The orion as the server has it now (GetOrion), or None if it does not know it."""
    try:
        response = await client._call(client.manager.GetOrion,
                                      manager_service_pb2.GetOrionRequest(orion_id=orion_id))
    except NotFoundError:
        return None
    return response.orion  # type: ignore[no-any-return]


async def follow_orion(client: OrionClient, orion_id: str, *, out: TextIO | None = None,
                       live: bool | None = None, results: bool = False) -> OrionProgress:
    """Show the progress of ``orion_id`` until it ends (its past events first), then the
    summary. ``live`` (default: stdout is a terminal) redraws a table in place; otherwise one
    line per star transition. Returns the model (``.result()`` is the final result)."""
    out = out or sys.stdout
    progress = OrionProgress(orion_id)
    current = await fetch_orion(client, orion_id)
    if current is not None:
        progress.load(current, with_state=False)  # the events replayed below set the states
    printer = ProgressPrinter(progress, out, live)

    async def on_event(event: event_pb2.Event) -> None:
        if event.type == event_pb2.EVENT_TYPE_ORION_MODIFIED:  # stars added or removed
            latest = await fetch_orion(client, orion_id)
            if latest is not None:
                progress.load(latest, with_state=False)

    await printer.run(client.watch_events(orion_id, include_history=True), on_event)
    if progress.final is None:  # the stream cannot end without an error; be safe anyway
        raise OrionError(f"the event stream of {orion_id} ended early", "STREAM_ENDED")
    print(progress.summary(results=results), file=out, flush=True)
    return progress


def _exit_code(result: dict[str, Any] | None) -> int:
    return EXIT_OK if result is not None and result["status"] == "completed" else EXIT_FAILED


async def cmd_submit(args: argparse.Namespace) -> int:
    request = submit_request(read_document(args.file))
    if args.strategy:
        request.assignment_strategy = orion_pb2.AssignmentStrategy.Value(
            f"ASSIGNMENT_STRATEGY_{args.strategy.upper()}")
    if args.sync:
        request.enable_synchronization = True
    if args.request_id:
        request.request_id = args.request_id
    async with _client(args) as client:
        response = await client._call(client.orchestrator.SubmitOrion, request)
        orion_id = response.orion_id
        if not args.wait:
            print(_dump({"orion_id": orion_id}) if args.json else orion_id)
            return EXIT_OK
        if args.json:
            result = None
            async for event in client.watch_events(orion_id, include_history=True):
                if event.type in TERMINAL_EVENTS:
                    result = _result_of(event)
                    break
            if result is None:
                print(f"error: the event stream of {orion_id} ended early", file=sys.stderr)
                return EXIT_ERROR
            print(_dump(result))
            return _exit_code(result)
        print(f"submitted {orion_id}: {len(response.orion.tasks)} stars", flush=True)
        progress = await follow_orion(client, orion_id, results=args.results)
    return _exit_code(progress.result())


def _result_of(event: event_pb2.Event) -> dict[str, Any]:
    result = result_from_pb(event.orion.result)
    result["orion_id"] = event.orion_id
    return result


async def cmd_status(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        status = await client.get_orion_status(args.orion_id)
    if status is None:
        print(f"error: Orion {args.orion_id} not found", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(_dump(status))
        return EXIT_OK
    counts = status["statistics"].get("task_status_counts") or {}
    print(f"orion {status['orion_id']} ({status['name']}): {str(status['state']).upper()}")
    print("  " + (", ".join(f"{k}: {v}" for k, v in counts.items()) or "no stars"))
    for key in ("running_tasks", "ready_tasks", "failed_tasks", "cancelled_tasks"):
        if status[key]:
            print(f"  {key.replace('_', ' ')}: {', '.join(status[key])}")
    return EXIT_OK


async def cmd_devices(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.wait:
            try:
                devices = await client.wait_for_devices(args.wait)
            except TimeoutError:
                print(f"error: fewer than {args.wait} devices connected to {args.server} "
                      f"within {args.timeout:g}s", file=sys.stderr)
                return EXIT_ERROR
        else:
            devices = await client.get_available_devices()
    if args.json:
        print(_dump(devices))
        return EXIT_OK
    if not devices:
        print("no devices connected")
        return EXIT_OK
    print(f"{'device':<24} {'type':<9} {'status':<8} {'load':>5}  capabilities")
    for d in devices:
        print(f"{d['device_id']:<24} {d['device_type']:<9} {d['status']:<8} "
              f"{d['running_tasks']:>2}/{d['capacity']:<2}  {', '.join(d['capabilities'])}")
    return EXIT_OK


def _stop_when_stdout_closes() -> None:
    """``orion watch | head -5``: once the reader is gone, stop — also while no event comes
    (a write would notice, but an idle feed writes nothing and would wait forever). Only
    for a pipe: epoll reports the closed read end as an error on the write end, which the
    loop hands to a reader callback; a terminal's fd can be readable for other reasons."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
    except (OSError, ValueError, AttributeError):
        return
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def closed() -> None:
        loop.remove_reader(fd)
        if task is not None:
            task.cancel(BROKEN_PIPE)
    loop.add_reader(fd, closed)


BROKEN_PIPE = "stdout closed"


async def cmd_watch(args: argparse.Namespace) -> int:
    orion_id = args.orion or args.orion_id
    async with _client(args) as client:
        if orion_id and not (args.json or args.events or args.resume_token):
            progress = await follow_orion(client, orion_id, results=args.results)
            return _exit_code(progress.result())
        # The raw feed. With an orion named, replay its past events too (it may have started).
        _stop_when_stdout_closes()
        try:
            async for event in client.watch_events(
                    orion_id, include_history=(args.history or bool(orion_id))
                    and not args.resume_token, resume_token=args.resume_token):
                print(_event_json(event) if args.json else event_line(event), flush=True)
                if orion_id and event.type in TERMINAL_EVENTS:
                    completed = event.type == event_pb2.EVENT_TYPE_ORION_COMPLETED
                    return EXIT_OK if completed else EXIT_FAILED
        except asyncio.CancelledError as exc:
            if BROKEN_PIPE in exc.args:
                raise BrokenPipeError(BROKEN_PIPE) from None  # handled like a failed write
            raise
    return EXIT_OK


async def cmd_edit(args: argparse.Namespace) -> int:
    request = edit_request(read_document(args.file), args.orion_id)
    for task_id in args.on or []:
        if task_id not in request.on_task_ids:
            request.on_task_ids.append(task_id)
    if args.validate_only:
        request.validate_only = True
    if args.expected_version is not None:
        request.expected_version = args.expected_version
    if args.request_id:
        request.request_id = args.request_id
    async with _client(args) as client:
        response = await client._call(client.synchronizer.EditOrion, request)
    if args.json:
        print(_dump(json_format.MessageToDict(response, preserving_proto_field_name=True)))
        return EXIT_OK
    verb = "would apply" if request.validate_only else "applied"
    print(f"{verb} {len(request.operations)} edit(s) to {args.orion_id}: now version "
          f"{response.orion.version}, {len(response.orion.tasks)} stars, "
          f"{len(response.orion.dependencies)} lines")
    for label, ids in (("added stars", response.created_task_ids),
                       ("added lines", response.created_line_ids),
                       ("acknowledged", response.acknowledged_task_ids)):
        if ids:
            print(f"  {label}: {', '.join(ids)}")
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        cancelled = await client.cancel_orion(args.orion_id, args.reason)
    print(_dump({"cancelled": cancelled}) if args.json else
          (f"cancelled {args.orion_id}" if cancelled else f"{args.orion_id} was not running"))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from ..api.auth import SecurityConfigError
    from ..api.server import DEFAULT_STORE, ServerConfig, serve
    from ..observability.logs import setup_logging
    from ..observability.tracing import TracingConfigError
    from ..store import StoreError

    try:
        config = ServerConfig.from_sources(args, defaults={"store": DEFAULT_STORE})
        setup_logging(config.log_level, config.log_format)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        asyncio.run(serve(config))
    except (OSError, TracingConfigError, StoreError, SecurityConfigError) as exc:
        # e.g. port in use; OTEL_* asks the impossible; another server has the store; a
        # certificate or the tokens file cannot be used
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


# ---------------------------------------------------------------------- registration
def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=None,
                        help=f"server address H:P (default $ORION_SERVER or {default_target()})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="deadline of each call in seconds (default 30)")
    add_security_arguments(parser)


def _client(args: argparse.Namespace) -> OrionClient:
    """The client a command's flags ask for: server, deadline, TLS and token."""
    return OrionClient(args.server, timeout=args.timeout,
                       security=ChannelSecurity.from_args(args))


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]
                 ) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register the server and client commands; returns {command: handler}."""
    from ..api.server import ServerConfig

    serve = sub.add_parser("serve", help="run the gRPC server",
                           description="Run the Orion gRPC server. The first line printed is "
                                       "'listening on HOST:PORT'. Every flag can also be set "
                                       "with an ORION_* environment variable.")
    ServerConfig.add_arguments(serve)

    submit = sub.add_parser("submit", help="submit an orion file (JSON/YAML)")
    submit.add_argument("file", help="orion file ('-' = stdin): proto JSON mapping, a "
                                     "SubmitOrionRequest, or the plain format of 'validate'")
    submit.add_argument("--wait", action="store_true",
                        help="follow the run; exit 0 only if it COMPLETED")
    submit.add_argument("--strategy", choices=["round_robin", "capability_match",
                                               "load_balance"],
                        help="assignment strategy for stars without a device")
    submit.add_argument("--sync", action="store_true",
                        help="run under the synchronizer (a planner must acknowledge stars)")
    submit.add_argument("--request-id", help="idempotency key")
    submit.add_argument("--results", action="store_true",
                        help="with --wait: print each star's result at the end")
    _client_flags(submit)

    status = sub.add_parser("status", help="show an orion's status")
    status.add_argument("orion_id")
    _client_flags(status)

    devices = sub.add_parser("devices", help="list connected devices")
    devices.add_argument("--wait", type=int, metavar="N", default=0,
                         help="first wait (up to --timeout) until at least N devices are "
                              "connected, also while the server is still starting; exit 2 "
                              "if they do not come")
    _client_flags(devices)

    watch = sub.add_parser(
        "watch", help="live progress of an orion, or the raw event feed",
        description="With ORION_ID: the orion's live progress (a progress bar and a per-star "
                    "table redrawn in place on a terminal, one line per star transition "
                    "otherwise), then a summary with the critical path; exits 0 only if it "
                    "COMPLETED. Without: every event, as it happens.")
    watch.add_argument("orion_id", nargs="?", help="only this orion (ends when it ends)")
    watch.add_argument("--orion", help="same as the positional ORION_ID")
    watch.add_argument("--events", action="store_true",
                       help="with ORION_ID: print its raw events instead of the progress view")
    watch.add_argument("--results", action="store_true",
                       help="with ORION_ID: print each star's result at the end")
    watch.add_argument("--history", action="store_true",
                       help="start from the oldest retained event instead of now")
    watch.add_argument("--resume-token", help="resume after this event")
    _client_flags(watch)

    edit = sub.add_parser(
        "edit", help="edit a running orion (SynchronizerService.EditOrion)",
        description="Apply an edit batch to an orion, atomically. FILE (YAML/JSON, '-' = "
                    "stdin) is an EditOrionRequest in the proto JSON mapping, e.g. "
                    '{"operations": [{"addTask": {"task": {"taskId": "x", "description": '
                    '"..."}}}, {"addDependency": {"dependency": {"fromTaskId": "a", '
                    '"toTaskId": "x"}}}], "onTaskIds": ["a"]}. Operations: addTask, '
                    "removeTask, updateTask (task + updateMask), addDependency, "
                    "removeDependency, updateDependency (dependency + updateMask).")
    edit.add_argument("orion_id")
    edit.add_argument("file", help="the edit batch ('-' = stdin)")
    edit.add_argument("--on", action="append", metavar="TASK_ID",
                      help="acknowledge this finished star for the synchronizer (repeatable; "
                           "added to the file's onTaskIds)")
    edit.add_argument("--validate-only", action="store_true",
                      help="check the batch against the live orion, change nothing")
    edit.add_argument("--expected-version", type=int,
                      help="apply only if the orion is at this version (else ABORTED)")
    edit.add_argument("--request-id", help="idempotency key")
    _client_flags(edit)

    graph = sub.add_parser(
        "graph", help="an orion's DAG as Graphviz DOT or Mermaid, coloured by status",
        description="Write an orion's DAG as Graphviz DOT or Mermaid: stars coloured by status "
                    "(pending grey, running blue, completed green, failed red, cancelled "
                    "yellow) and labelled with their device; lines labelled with their "
                    "dependency type and condition. ORION is an orion file (drawn as "
                    "submitted) or the id of an orion on the server (drawn as it stands). "
                    "Render DOT with Graphviz (dot -Tsvg), Mermaid in Markdown or mermaid.live.")
    add_graph_arguments(graph)
    _client_flags(graph)

    cancel = sub.add_parser("cancel", help="cancel a running orion")
    cancel.add_argument("orion_id")
    cancel.add_argument("--reason")
    _client_flags(cancel)

    def run(handler: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
        def invoke(args: argparse.Namespace) -> int:
            args.server = args.server or default_target()
            try:
                return int(asyncio.run(handler(args)))
            except DocumentError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_ERROR
            except OrionError as exc:
                if getattr(args, "json", False):
                    print(_dump({"error": {"code": getattr(getattr(exc, "code", None), "name",
                                                           exc.category.name),
                                           "reason": exc.reason, "message": exc.message,
                                           "violations": [v.__dict__ for v in exc.violations]}}),
                          file=sys.stderr)
                else:
                    print(f"error: {exc.message}", file=sys.stderr)
                    for v in exc.violations:
                        print(f"  - {v.field}: {v.description}", file=sys.stderr)
                return EXIT_ERROR
            except ValueError as exc:  # after OrionError (a ValueError too): e.g. --ca unreadable
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_ERROR
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED
            except BrokenPipeError:  # e.g. `orion watch | head`: the reader is done, so are we
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return EXIT_OK
        return invoke

    return {"serve": cmd_serve, "submit": run(cmd_submit), "status": run(cmd_status),
            "devices": run(cmd_devices), "watch": run(cmd_watch), "cancel": run(cmd_cancel),
            "edit": run(cmd_edit), "graph": run(cmd_graph)}
