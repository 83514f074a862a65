"""``orion device`` / ``python -m orion_grpc.device``: run a device daemon.

    orion device --id build-01 --type linux --capabilities python,docker --capacity 2 \\
        [--server H:P] [--executor sleep] [--allow-shell] [--plugin NAME=module:attr]
        [--ca PEM [--cert PEM --key PEM]] [--token TOKEN (default $ORION_DEVICE_TOKEN)]

Prints ``device ID connected to H:P (session S)`` on stdout each time a session is welcomed;
logs go to stderr. SIGINT/SIGTERM drain and stop gracefully (a second signal stops at
once). Exit status: 0 after a graceful stop, 3 when the server refused the device or another
session took over its id, 2 on bad arguments. Tracing: OTEL_TRACES_EXPORTER=console|otlp
runs each assignment in a device.execute span of the orion's trace (docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..transport import DEVICE_TOKEN_ENV, ChannelSecurity
from ..transport import add_arguments as add_security_arguments
from .agent import DEFAULT_CHANNEL_OPTIONS, DeviceAgent, DeviceAgentError, default_device_type
from .executors import Executor, default_executors

DEFAULT_SERVER = "127.0.0.1:50051"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The daemon's options (shared by ``orion device`` and ``python -m orion_grpc.device``)."""
    parser.add_argument("--server", default=os.environ.get("ORION_SERVER", DEFAULT_SERVER),
                        help="server address H:P (default: $ORION_SERVER, else %(default)s)")
    parser.add_argument("--id", dest="device_id", default=socket.gethostname(),
                        help="unique device id (default: the hostname)")
    parser.add_argument("--type", dest="device_type", default=default_device_type(),
                        help="linux, windows, macos, android, ios, web or api "
                             "(default: this machine's, %(default)s)")
    parser.add_argument("--capabilities", default="",
                        help="comma-separated capabilities, e.g. python,docker")
    parser.add_argument("--capacity", type=int, default=1,
                        help="most stars run at once (default 1)")
    parser.add_argument("--executor", default=None,
                        help="executor for stars whose task_data names none (default: echo)")
    parser.add_argument("--allow-shell", action="store_true",
                        help="enable the shell executor: runs task_data.command on this machine")
    parser.add_argument("--plugin", action="append", default=[], metavar="NAME=MODULE:ATTR",
                        help="add a custom executor, e.g. llm=my_agents:desktop_agent "
                             "(repeatable)")
    parser.add_argument("--no-progress", action="store_true",
                        help="do not stream executors' progress reports")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds a graceful stop waits for running stars (default 30)")
    parser.add_argument("--backoff-max", type=float, default=30.0,
                        help="longest reconnect delay in seconds (default 30)")
    parser.add_argument("--log-level", default=os.environ.get("ORION_LOG_LEVEL", "INFO"),
                        help="logging level on stderr (default INFO) [env ORION_LOG_LEVEL]")
    parser.add_argument("--log-format", choices=["auto", "json", "text"],
                        default=os.environ.get("ORION_LOG_FORMAT", "auto"),
                        help="log lines on stderr: auto (JSON lines unless stderr is a "
                             "terminal), json or text [env ORION_LOG_FORMAT]")
    add_security_arguments(parser, token_env=DEVICE_TOKEN_ENV)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orion device", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def add_device_command(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register ``orion device`` on the ``orion`` subparsers; returns ``{"device": handler}``."""
    parser = sub.add_parser("device", help="run a device daemon that executes stars for a server",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return {"device": run_from_args}


def load_plugin(spec: str) -> tuple[str, Executor]:
    """``NAME=module:attr`` -> (name, executor); a class (or factory) is called once.

    Modules are looked up in the working directory too (the ``orion`` script's own
    ``sys.path`` does not include it), then on the usual path.
    """
    name, sep, target = spec.partition("=")
    module_name, sep2, attr = target.partition(":")
    if not (sep and sep2 and name and module_name and attr):
        raise ValueError(f"--plugin wants NAME=MODULE:ATTR, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise ValueError(f"--plugin {spec}: {attr} is not callable")
    return name, obj


def agent_from_args(args: argparse.Namespace) -> DeviceAgent:
    executors = default_executors(allow_shell=args.allow_shell)
    for spec in args.plugin:
        name, executor = load_plugin(spec)
        executors[name] = executor
    capabilities = [c.strip() for c in args.capabilities.split(",") if c.strip()]
    security = ChannelSecurity.from_args(args, token_env=DEVICE_TOKEN_ENV)
    return DeviceAgent(args.server, args.device_id, args.device_type, capabilities,
                       args.capacity, executors, default_executor=args.executor,
                       send_progress=not args.no_progress, backoff_max=args.backoff_max,
                       channel_options=[*DEFAULT_CHANNEL_OPTIONS, *security.options()],
                       credentials=security.credentials(), token=security.token or None)


async def _serve(agent: DeviceAgent, drain_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    task = agent.start()
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if stopping:
            task.cancel()  # second signal: stop now
        else:
            logger.info("device %s: stopping (draining, up to %gs)", agent.device_id,
                        drain_timeout)
            stopping.append(asyncio.ensure_future(agent.stop(timeout=drain_timeout)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, on_signal)

    async def announce() -> None:
        while True:
            session = await agent.wait_connected()
            print(f"device {agent.device_id} connected to {agent.target} (session {session})",
                  flush=True)
            await agent.wait_for(lambda a: not a.connected)

    announcer = asyncio.create_task(announce())
    try:
        await task
        return 0
    except DeviceAgentError as exc:
        logger.error("error: %s", exc)  # a log line: stderr holds only log lines by now
        return 3
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled, not just the agent
        return 130
    finally:
        announcer.cancel()
        for pending in stopping:
            with contextlib.suppress(asyncio.CancelledError):
                await pending


def run_from_args(args: argparse.Namespace) -> int:
    """Entry point behind ``orion device``."""
    from ..observability.logs import setup_logging
    from ..observability.tracing import Tracing

    try:
        setup_logging(args.log_level, args.log_format)
        agent = agent_from_args(args)
        tracing = Tracing.from_env("orion-device")  # OTEL_TRACES_EXPORTER; None: off
    except (ValueError, ImportError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if tracing is None:
        return asyncio.run(_serve(agent, args.drain_timeout))
    tracing.set_global()
    agent.tracer = tracing.tracer  # each assignment runs in a device.execute span
    try:
        return asyncio.run(_serve(agent, args.drain_timeout))
    finally:
        tracing.shutdown()  # flush what is still batched


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))
