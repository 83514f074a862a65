"""``orion watch | head`` ends once ``head`` has what it wants, even when the feed then goes
quiet (a write would notice the closed pipe, but an idle feed writes nothing)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from e2e_support import ROOT, ServerProcess, child_env, orion_command, run_cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")


def test_watch_into_head_ends_although_no_more_events_come() -> None:
    server = ServerProcess("--fake-devices", "3", "--fake-latency", "0.01")
    try:
        done = run_cli("submit", "examples/release_pipeline.json", "--wait", "--strategy",
                       "capability_match", "--server", server.target)
        assert done.returncode == 0, done.stderr
        watch = " ".join(orion_command("watch", "--history", "--server", server.target))
        # The whole history fits in the pipe at once; after head exits nothing more comes.
        piped = subprocess.run(["bash", "-c", f"set -o pipefail; {watch} | head -1"],
                               capture_output=True, text=True, cwd=ROOT, env=child_env(),
                               timeout=30)
        assert piped.returncode == 0, piped.stderr
        assert len(piped.stdout.splitlines()) == 1
    finally:
        server.kill()
