"""The ``orion`` command line.

    orion demo [FILE]              a server and 3 device daemons on loopback run an orion
                                   (--in-process: simulated devices in this process instead)
    orion run FILE                 run an orion file on a simulated fleet, in process
    orion validate FILE            check an orion file and list every problem
    orion serve                    run the gRPC server (flags or ORION_* environment)
    orion device --id ID ...       run a device daemon that executes stars for a server
    orion submit FILE [--wait]     submit an orion to a server (and follow its progress)
    orion watch [ORION_ID]         live progress of an orion (or every event)
    orion status ORION_ID          an orion's status
    orion devices                  the connected devices
    orion edit ORION_ID FILE       apply an edit batch to a running orion
    orion cancel ORION_ID          cancel a running orion

Orion files are YAML or JSON in the proto's JSON mapping (what grpcurl -d @ takes); see
examples/. Client commands take --server H:P (default $ORION_SERVER, else 127.0.0.1:50051)
and --json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from google.protobuf import json_format

from .client.commands import add_commands
from .client.files import DocumentError, load_orion
from .core import OrionError
from .demo import load_for_in_process, run_demo, run_in_process
from .device.cli import add_device_command


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        orion, request = load_orion(args.file)
    except OrionError as exc:
        print(f"invalid: {exc.message}", file=sys.stderr)
        for v in exc.violations:
            print(f"  - {v.field}: {v.description}", file=sys.stderr)
        return 2
    if args.json:  # the request as grpcurl -d @ takes it
        print(json_format.MessageToJson(request, indent=2, ensure_ascii=False))
        return 0
    print(f"ok: {orion.orion_id} has {orion.task_count} stars and {orion.dependency_count} lines")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.in_process:
        orion, strategy = load_for_in_process(args.file)
        return asyncio.run(run_in_process(orion, args.latency, not args.no_flaky, strategy))
    return asyncio.run(run_demo(args.file, latency=args.latency, flaky=not args.no_flaky,
                                keep=args.keep, strategy=args.strategy))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run an orion on a server and 3 device daemons started on loopback",
        description="Start 'orion serve --port 0' and three 'orion device' daemons (linux, "
                    "windows, android) as processes on loopback, submit an orion (default: "
                    "examples/release_pipeline.json, which uses every dependency type), show "
                    "its live progress and results, then stop them all (Ctrl-C too). Exit 0 "
                    "only if the orion COMPLETED.")
    demo.add_argument("file", nargs="?", help="orion file to run (YAML/JSON; default: the "
                                              "release pipeline example)")
    demo.add_argument("--in-process", action="store_true",
                      help="simulate the devices inside this process instead (no gRPC)")
    demo.add_argument("--latency", type=float, default=None,
                      help="seconds of simulated work per star (default: each star's "
                           "task_data.seconds)")
    demo.add_argument("--no-flaky", action="store_true",
                      help="drop task_data.fail_attempts (the Windows build fails once to "
                           "show a retry)")
    demo.add_argument("--strategy", choices=["round_robin", "capability_match", "load_balance"],
                      help="assignment strategy (default: the file's, else capability_match)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the server and devices running afterwards, until Ctrl-C")
    run = sub.add_parser("run", help="run an orion file on a simulated fleet, in process")
    run.add_argument("file")
    run.add_argument("--latency", type=float, default=0.05)
    validate = sub.add_parser("validate", help="validate an orion file (YAML/JSON)")
    validate.add_argument("file")
    validate.add_argument("--json", action="store_true",
                          help="print the file as a SubmitOrionRequest in the proto JSON "
                               "mapping (e.g. to pipe a YAML file into grpcurl -d @)")
    parser.set_defaults(handlers={
        **add_commands(sub),  # serve, submit, status, devices, watch, cancel, edit
        **add_device_command(sub),  # device (orion_grpc/device/cli.py)
    })
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handlers.get(args.command)
    if handler is not None:
        return int(handler(args))
    try:
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "run":
            orion, strategy = load_for_in_process(args.file)
            return asyncio.run(run_in_process(orion, args.latency, False, strategy))
        return _cmd_validate(args)
    except DocumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OrionError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for v in exc.violations:
            print(f"  - {v.field}: {v.description}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `orion validate FILE --json | head`: the reader is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
