"""Structured logs: ``orion serve`` and ``orion device`` write JSON lines when stderr is not a
terminal, and every line about an orion, a star or a device names it — with the trace id.

Both run as processes with tracing on (console exporter: the spans go to stdout, the logs to
stderr); the test drives them with OrionClient and reads both streams.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from typing import Any

import pytest
from e2e_support import ROOT, WAIT, Daemon, ServerChild
from test_tracing_e2e import release_orion

from orion_grpc.client import OrionClient
from orion_grpc.core.log_context import log_context
from orion_grpc.observability.logs import JsonFormatter, TextFormatter, setup_logging

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

PLUGINS = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "e2e")])}
TRACED = {"OTEL_TRACES_EXPORTER": "console"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be a JSON object with the four fixed keys."""
    lines = []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            raise AssertionError(f"not a JSON line: {raw!r}\n{text}") from None
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    return lines


def one(lines: list[dict[str, Any]], text: str) -> dict[str, Any]:
    found = [line for line in lines if text in line["message"]]
    assert found, f"no log line with {text!r} in:\n" + "\n".join(map(str, lines))
    return found[0]


async def test_server_and_device_log_json_lines_naming_orion_star_device_and_trace() -> None:
    server = await ServerChild.start("--retry-backoff-base", "0", log_level="DEBUG", env=TRACED)
    target = server.target
    daemon: Daemon | None = None
    try:
        daemon = await Daemon.start(target, "builder-1", "--plugin", "chatty=e2e_executors:chatty",
                                    "--executor", "chatty", env={**PLUGINS, **TRACED})
        await daemon.connected()
        async with OrionClient(target, timeout=WAIT) as client:
            result = await client.orchestrate_orion(release_orion(), timeout=WAIT)
        assert result["status"] == "completed", result["errors"]
        await server.wait_for_line("orion release-1 completed")
        assert await daemon.terminate() == 0
        assert await server.terminate() == 0
    finally:
        if daemon is not None:
            await daemon.close()
        await server.close()

    logs = json_lines(server.stderr())
    started = one(logs, "orion release-1 started")
    trace_id = started["trace_id"]
    assert started["orion_id"] == "release-1" and len(trace_id) == 32
    retry = one(logs, "star test attempt 1 failed on builder-1")
    assert retry["level"] == "WARNING"
    assert (retry["orion_id"], retry["star_id"], retry["device_id"], retry["trace_id"]) == (
        "release-1", "test", "builder-1", trace_id)
    dispatched = one(logs, "star ship attempt 1 started on builder-1")
    assert (dispatched["level"], dispatched["star_id"], dispatched["device_id"]) == (
        "DEBUG", "ship", "builder-1")
    assert one(logs, "orion release-1 completed")["trace_id"] == trace_id
    session = one(logs, "device builder-1 connected")  # logged in the device's session
    assert session["device_id"] == "builder-1"

    device_logs = json_lines(daemon.stderr())
    assert one(device_logs, "device builder-1 connected")["device_id"] == "builder-1"
    working = [line for line in device_logs if line["message"].startswith("working on")]
    assert {line["star_id"] for line in working} == {"build", "test", "ship"}
    print(json.dumps(retry), json.dumps(working[0]), sep="\n")  # docs/operations.md shows them
    for line in working:  # the executor's own lines, inside its device.execute span
        assert (line["orion_id"], line["device_id"], line["trace_id"]) == (
            "release-1", "builder-1", trace_id)
        assert len(line["span_id"]) == 16


def test_the_format_follows_the_terminal_unless_told() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        assert setup_logging("INFO", "auto", Terminal()) == "text"
        assert setup_logging("INFO", "auto", io.StringIO()) == "json"
        assert setup_logging("INFO", "text", io.StringIO()) == "text"
        assert setup_logging("INFO", "json", Terminal()) == "json"
        with pytest.raises(ValueError, match="not one of auto, json, text"):
            setup_logging("INFO", "xml", io.StringIO())
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_both_formats_carry_the_bound_ids_and_explicit_ones_win() -> None:
    record = logging.LogRecord("orion_grpc.x", logging.ERROR, __file__, 1, "boom %s", ("now",),
                               None)
    with log_context(orion_id="o-1", star_id="s-1", device_id="d-1"):
        line = json.loads(JsonFormatter().format(record))
        text = TextFormatter().format(record)
    assert (line["message"], line["level"], line["orion_id"], line["star_id"],
            line["device_id"]) == ("boom now", "ERROR", "o-1", "s-1", "d-1")
    assert "trace_id" not in line  # no span is current
    assert text.endswith("ERROR orion_grpc.x: boom now [orion=o-1 star=s-1 device=d-1]")
    record.star_id = "s-2"
    assert json.loads(JsonFormatter().format(record))["star_id"] == "s-2"
    plain = TextFormatter().format(logging.LogRecord("x", logging.INFO, "", 1, "hi", (), None))
    assert plain.endswith("INFO x: hi")
