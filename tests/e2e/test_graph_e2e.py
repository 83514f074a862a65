"""``orion graph ORION_ID`` draws an orion as it stands on a server: after a run, its stars are
coloured by how they ended."""

from __future__ import annotations

import re

from e2e_support import ServerProcess, run_cli

from orion_grpc.client.graph import STATUS_COLOURS
from orion_grpc.core.enums import TaskStatus


def test_graph_of_a_finished_orion_on_a_server_shows_each_stars_outcome() -> None:
    server = ServerProcess("--fake-devices", "3", "--fake-latency", "0.01")
    try:
        done = run_cli("submit", "examples/release_pipeline.json", "--wait", "--server",
                       server.target)
        assert done.returncode == 0, done.stdout + done.stderr
        dot = run_cli("graph", "release_pipeline", "--server", server.target)
        mermaid = run_cli("graph", "release_pipeline", "--format", "mermaid", "--server",
                          server.target)
    finally:
        server.terminate()
        server.kill()
    assert dot.returncode == 0 and mermaid.returncode == 0, dot.stderr + mermaid.stderr
    fills = dict(re.findall(r'^  "(\w+)" \[label="[^"]*", fillcolor="(#\w+)"', dot.stdout, re.M))
    completed, cancelled = (STATUS_COLOURS[s][0] for s in (TaskStatus.COMPLETED,
                                                          TaskStatus.CANCELLED))
    # The simulated devices' results lack what the example's conditions test, so both
    # conditional stars are skipped (tests/e2e/test_e2e_server.py); the rest completed.
    assert (fills.pop("triage"), fills.pop("publish")) == (cancelled, cancelled)
    assert set(fills.values()) == {completed} and len(fills) == 8
    assert re.search(r'"notify" \[label="Notify the team\\nnotify on fake-linux-\d+\\n'
                     r'completed"', dot.stdout), dot.stdout
    assert '(completed)";' in dot.stdout.splitlines()[1]  # the orion's state in the title
    assert "  class s_triage,s_publish cancelled" in mermaid.stdout
    assert re.search(r"^  class (s_\w+,){7}s_\w+ completed$", mermaid.stdout, re.M)
