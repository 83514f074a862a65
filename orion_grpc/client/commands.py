"""``orion serve | submit | status | devices | watch | cancel`` (registered by orion_grpc.cli).

Scriptable contract: every client command takes ``--server H:P`` (default ``$ORION_SERVER``,
else 127.0.0.1:50051) and ``--json`` (one JSON document, or one JSON object per line for
``watch``); ``submit FILE --wait`` exits 0 only when the orion COMPLETED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ..api.convert import orion_to_pb, result_from_pb
from ..core import OrionError
from ..core.spec import orion_from_spec
from ..gen.orion.v1 import device_pb2, event_pb2, orchestrator_service_pb2, orion_pb2, task_star_pb2
from .client import OrionClient, default_target

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

TERMINAL_EVENTS = {event_pb2.EVENT_TYPE_ORION_COMPLETED, event_pb2.EVENT_TYPE_ORION_FAILED,
                   event_pb2.EVENT_TYPE_ORION_CANCELLED}


# ---------------------------------------------------------------------- orion files
def load_document(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as exc:
            raise SystemExit("reading YAML needs PyYAML (pip install pyyaml); or use JSON") from exc
        return yaml.safe_load(text)
    return json.loads(text)


def submit_request(document: Any) -> orchestrator_service_pb2.SubmitOrionRequest:
    """An orion file as a SubmitOrionRequest. Accepted shapes: a TaskOrion in the proto JSON
    mapping (what grpcurl takes), a whole Submit/OrchestrateOrionRequest (``{"orion": …}``),
    or the engine's plain description (``orion validate``'s format)."""
    if not isinstance(document, dict):
        raise SystemExit("an orion file must hold a JSON object")
    request = orchestrator_service_pb2.SubmitOrionRequest()
    if "orion" in document:
        json_format.ParseDict(document, request, ignore_unknown_fields=False)
        return request
    try:
        json_format.ParseDict(document, request.orion)
    except json_format.ParseError:
        request.orion.CopyFrom(orion_to_pb(orion_from_spec(document)))
    return request


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


def _result_table(result: dict[str, Any]) -> str:
    rows = [f"orion {result.get('orion_id', '')}: {str(result['status']).upper()} "
            f"({result['total_tasks']} stars)"]
    stats = result.get("statistics") or {}
    if stats.get("task_status_counts"):
        rows.append("  " + ", ".join(f"{k}: {v}" for k, v in stats["task_status_counts"].items()))
    for task_id, error in (result.get("errors") or {}).items():
        rows.append(f"  {task_id}: {error}")
    return "\n".join(rows)


# ---------------------------------------------------------------------- commands
async def cmd_submit(args: argparse.Namespace) -> int:
    request = submit_request(load_document(args.file))
    if args.strategy:
        request.assignment_strategy = orion_pb2.AssignmentStrategy.Value(
            f"ASSIGNMENT_STRATEGY_{args.strategy.upper()}")
    if args.sync:
        request.enable_synchronization = True
    if args.request_id:
        request.request_id = args.request_id
    async with OrionClient(args.server, timeout=args.timeout) as client:
        response = await client._call(client.orchestrator.SubmitOrion, request)
        orion_id = response.orion_id
        if not args.wait:
            print(_dump({"orion_id": orion_id}) if args.json else orion_id)
            return EXIT_OK
        if not args.json:
            print(f"submitted {orion_id}: {len(response.orion.tasks)} stars", flush=True)
        final = None
        async for event in client.watch_events(orion_id, include_history=True):
            if not args.json:
                print(event_line(event), flush=True)
            if event.type in TERMINAL_EVENTS:
                final = event
                break
        if final is None:  # the stream cannot end without an error; be safe anyway
            print(f"error: the event stream of {orion_id} ended early", file=sys.stderr)
            return EXIT_ERROR
        result = _result_of(final)
    print(_dump(result) if args.json else _result_table(result))
    return EXIT_OK if result["status"] == "completed" else EXIT_FAILED


def _result_of(event: event_pb2.Event) -> dict[str, Any]:
    result = result_from_pb(event.orion.result)
    result["orion_id"] = event.orion_id
    return result


async def cmd_status(args: argparse.Namespace) -> int:
    async with OrionClient(args.server, timeout=args.timeout) as client:
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
    async with OrionClient(args.server, timeout=args.timeout) as client:
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


async def cmd_watch(args: argparse.Namespace) -> int:
    orion_id = args.orion or args.orion_id
    async with OrionClient(args.server, timeout=args.timeout) as client:
        # With an orion named, replay its past events too (it may have started already).
        async for event in client.watch_events(orion_id,
                                               include_history=(args.history or bool(orion_id))
                                               and not args.resume_token,
                                               resume_token=args.resume_token):
            print(_event_json(event) if args.json else event_line(event), flush=True)
            if orion_id and event.type in TERMINAL_EVENTS:
                completed = event.type == event_pb2.EVENT_TYPE_ORION_COMPLETED
                return EXIT_OK if completed else EXIT_FAILED
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with OrionClient(args.server, timeout=args.timeout) as client:
        cancelled = await client.cancel_orion(args.orion_id, args.reason)
    print(_dump({"cancelled": cancelled}) if args.json else
          (f"cancelled {args.orion_id}" if cancelled else f"{args.orion_id} was not running"))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from ..api.server import ServerConfig, serve

    try:
        config = ServerConfig.from_sources(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except OSError as exc:
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
    _client_flags(submit)

    status = sub.add_parser("status", help="show an orion's status")
    status.add_argument("orion_id")
    _client_flags(status)

    devices = sub.add_parser("devices", help="list connected devices")
    _client_flags(devices)

    watch = sub.add_parser("watch", help="stream events (of one orion, or all)")
    watch.add_argument("orion_id", nargs="?", help="only this orion (ends when it ends)")
    watch.add_argument("--orion", help="same as the positional ORION_ID")
    watch.add_argument("--history", action="store_true",
                       help="start from the oldest retained event instead of now")
    watch.add_argument("--resume-token", help="resume after this event")
    _client_flags(watch)

    cancel = sub.add_parser("cancel", help="cancel a running orion")
    cancel.add_argument("orion_id")
    cancel.add_argument("--reason")
    _client_flags(cancel)

    def run(handler: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
        def invoke(args: argparse.Namespace) -> int:
            args.server = args.server or default_target()
            try:
                return int(asyncio.run(handler(args)))
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
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED
            except BrokenPipeError:  # e.g. `orion watch | head`: the reader is done, so are we
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return EXIT_OK
        return invoke

    return {"serve": cmd_serve, "submit": run(cmd_submit), "status": run(cmd_status),
            "devices": run(cmd_devices), "watch": run(cmd_watch), "cancel": run(cmd_cancel)}
