"""One orion's trace across processes: the server here, a device daemon in a subprocess.

The server (an OrionServer in this event loop) exports to memory; the daemon (``orion device``
with ``OTEL_TRACES_EXPORTER=console``) prints its spans on stdout. The daemon's
``device.execute`` spans must carry the server's trace id and name the server's
``star.attempt`` spans as parents. The trace tree in docs/operations.md is this test's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from e2e_support import ROOT, WAIT, Daemon, child_env, orion_command
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orion_grpc.api.server import OrionServer, ServerConfig
from orion_grpc.client import OrionClient
from orion_grpc.core import TaskOrion, TaskStar, TaskStarLine
from orion_grpc.observability import Tracing, format_trace_tree, parse_console_spans, span_to_dict

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# The daemon finds e2e_executors.flaky (a star's first attempt fails when it says "flaky").
PLUGINS = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "e2e")])}


def release_orion() -> TaskOrion:
    orion = TaskOrion("release-1", name="release")
    orion.add_task(TaskStar("build", description="build it", target_device_id="builder-1"))
    orion.add_task(TaskStar("test", description="test it", target_device_id="builder-1",
                            retry_count=1, task_data={"flaky": True}))
    orion.add_task(TaskStar("ship", description="ship it", target_device_id="builder-1"))
    orion.add_dependency(TaskStarLine("build", "test"))
    orion.add_dependency(TaskStarLine("test", "ship"))
    return orion


def hex_id(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def without_durations(tree: str) -> list[str]:
    return [re.sub(r" \(\d+\.\d ms\)$", "", line.rstrip()) for line in tree.splitlines()]


def documented_tree() -> str:
    """The trace tree shown in docs/operations.md (the block after its marker)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text.split("<!-- trace-tree: tests/e2e/test_tracing_e2e.py -->", 1)[1]
    return block.split("```", 2)[1].removeprefix("text").strip("\n")


async def test_a_device_process_joins_the_orion_trace() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.to_exporter(exporter)
    server = OrionServer(ServerConfig(port=0, grace=0.5, retry_backoff_base=0.0),
                         tracing=tracing)
    await server.start()
    daemon = await Daemon.start(server.target, "builder-1", "--plugin", "flaky=e2e_executors:flaky",
                                "--executor", "flaky", "--backoff-max", "0.2",
                                env={**PLUGINS, "OTEL_TRACES_EXPORTER": "console",
                                     "OTEL_SERVICE_NAME": "orion-device"})
    try:
        await daemon.connected()
        async with OrionClient(server.target, timeout=WAIT) as client:
            result = await client.orchestrate_orion(release_orion(), timeout=WAIT)
        assert result["status"] == "completed", result["errors"]
        # Graceful stop: the daemon flushes its exporter; every line of stdout is read.
        assert await daemon.terminate() == 0, daemon.stderr()
    finally:
        await daemon.close()
        await server.stop(0)

    server_spans = [s for s in exporter.get_finished_spans()
                    if s.name != "orion.v1.DeviceService/Connect"]
    (rpc,) = [s for s in server_spans if s.name.endswith("/OrchestrateOrion")]
    trace_id = hex_id(rpc.context.trace_id, 32)
    attempts = {(s.attributes["star.id"], s.attributes["star.attempt"]): s
                for s in server_spans if s.name == "star.attempt"}
    assert sorted(attempts) == [("build", 1), ("ship", 1), ("test", 1), ("test", 2)]

    device_spans = parse_console_spans(daemon.stdout())
    assert len(device_spans) == 4, daemon.stdout()
    for span in device_spans:
        assert span["name"] == "device.execute"
        assert span["resource"]["attributes"]["service.name"] == "orion-device"
        assert span["context"]["trace_id"] == trace_id
        attrs = span["attributes"]
        parent = attempts[(attrs["star.id"], attrs["star.attempt"])]
        assert span["parent_id"] == hex_id(parent.context.span_id, 16)
        assert attrs["device.id"] == "builder-1"
        assert attrs["lease.id"] == parent.attributes["lease.id"]
    failed = [s for s in device_spans if s["status"]["status_code"] == "ERROR"]
    assert [(s["attributes"]["star.id"], s["attributes"]["star.attempt"]) for s in failed] == [
        ("test", 1)]

    tree = format_trace_tree([span_to_dict(s) for s in server_spans] + device_spans)
    print(tree)
    assert without_durations(tree) == without_durations(documented_tree()), (
        "docs/operations.md shows another trace tree; paste this one:\n" + tree)


def test_the_daemon_refuses_to_start_with_a_bad_tracing_setup() -> None:
    done = subprocess.run(orion_command("device", "--server", "127.0.0.1:1", "--id", "x"),
                          capture_output=True, text=True, cwd=ROOT, timeout=WAIT,
                          env=child_env(OTEL_TRACES_EXPORTER="zipkin"))
    assert done.returncode == 2
    assert "OTEL_TRACES_EXPORTER" in done.stderr and "zipkin" in done.stderr
