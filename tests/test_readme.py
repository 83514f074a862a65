"""The README's commands and in-process example must keep working as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_python_example_runs_as_written() -> None:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "FakeDevice" in b]
    assert blocks, "README lost its in-process example"
    out = subprocess.run([sys.executable, "-c", blocks[0]], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status, results = out.stdout.split(" ", 1)
    assert status == "completed"
    assert "'open'" in results and "'report'" in results


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "./scripts/demo" in README and "./scripts/test" in README
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "scripts/test" in ci


def test_demo_runs_the_example_on_a_server_and_three_device_processes() -> None:
    out = subprocess.run([sys.executable, "-m", "orion_grpc.cli", "demo", "--latency", "0.05"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"server +listening on 127\.0\.0\.1:\d+ \(pid \d+\)", out.stdout)
    for device in ("linux-build-01", "win-desktop-07", "pixel-8"):
        assert re.search(rf"{device} .* connected \(pid \d+\)", out.stdout), out.stdout
    # every dependency type is in the example
    assert "(success_only 6, unconditional 1, conditional 3, completion_only 1)" in out.stdout
    assert "release_pipeline: COMPLETED" in out.stdout
    assert "task_retrying" in out.stdout  # the demo shows a retry that really happens
    assert "critical path" in out.stdout
    assert '"coverage": 0.87' in out.stdout  # the results are printed
    assert "triage skipped" in out.stdout  # a conditional branch not taken
    assert "server (exit 0)" in out.stdout  # and everything was stopped


def test_demo_in_process_simulates_the_same_orion() -> None:
    out = subprocess.run([sys.executable, "-m", "orion_grpc.cli", "demo", "--in-process",
                          "--latency", "0.01"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "release_pipeline: COMPLETED" in out.stdout
    assert "task_retrying" in out.stdout
    assert "critical path" in out.stdout


def test_validate_command_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": [{"task_id": "a"}, {"task_id": "a"}, {"task_id": "b", '
                   '"device_type": "toaster"}], "dependencies": [{"from_task_id": "a", '
                   '"to_task_id": "zz"}, {"from_task_id": "b", "to_task_id": "b"}]}')
    out = subprocess.run([sys.executable, "-m", "orion_grpc.cli", "validate", str(bad)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    for needle in ("Task with ID a already exists", "unknown device type 'toaster'",
                   "non-existent target task zz", "b -> b would create a cycle"):
        assert needle in out.stderr, out.stderr
