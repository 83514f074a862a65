"""Every shell command in the docs runs: README.md and every docs/*.md (found automatically).

The convention, for whoever writes docs:

- A fenced block tagged ``sh`` is RUN, as one bash script (``set -euo pipefail``), and must
  exit 0. It runs in a scratch directory that links every top-level entry of the checkout (so
  ``examples/…`` and ``./scripts/…`` work, and files the commands write stay out of the
  checkout), with this test's ``orion`` first on ``PATH``, no ``ORION_*`` / ``OTEL_*``
  variables from outside, and a time limit. Background jobs (``orion serve &``) are fine:
  whatever still runs when the block ends is killed (end them with ``kill %1`` to show a
  graceful stop). To wait for a fleet, use ``orion devices --wait N`` (never ``sleep``).
- Ports: each block gets free ones. ``50051`` and ``9464`` — the default gRPC port and the
  conventional metrics port, as the docs write them — are replaced by free ports in the
  block, and ``ORION_PORT`` / ``ORION_SERVER`` point to the first, so ``orion serve &`` and
  the client commands meet without ``--server``. ``ORION_STORE=none``: a server started by a
  block keeps nothing.
- ``<!-- doc-test: skip REASON -->`` on the line before a block: not run. The reason is
  required: why not, and what runs it instead.
- ``<!-- doc-test: needs TOOL -->`` on the line before a block: run only where ``TOOL`` is
  on ``PATH`` (otherwise reported as skipped).
- Fences tagged ``text``, ``console``, ``json``, ``yaml``, ``python``, … are not run here
  (``bash`` / ``shell`` are refused: tag a command ``sh`` to run it, ``text`` to show it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
TIME_LIMIT = 180.0
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*doc-test:\s*(skip|needs)\s*(.*?)\s*-->")
PORTS = ("50051", "9464")


@dataclass
class Block:
    path: Path
    line: int
    language: str
    text: str
    marker: tuple[str, str] | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        found.append(Block(path, text.count("\n", 0, match.start()) + 1, match.group(1),
                           match.group(2), (marker.group(1), marker.group(2)) if marker else None))
    return found


ALL = [block for path in DOCS for block in blocks(path)]
RUN = [block for block in ALL if block.language == "sh"]


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def scratch(tmp_path: Path) -> Path:
    for entry in ROOT.iterdir():
        (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    ports = {default: free_port() for default in PORTS}
    script = block.text
    for default, port in ports.items():
        script = re.sub(rf"\b{default}\b", port, script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORION_", "OTEL_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1", ORION_PORT=ports["50051"],
               ORION_SERVER=f"127.0.0.1:{ports['50051']}", ORION_STORE="none")
    out, err = cwd / ".doc-test.stdout", cwd / ".doc-test.stderr"
    with out.open("w") as stdout, err.open("w") as stderr:  # files: background jobs may
        proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd,
                                env=env, stdout=stdout, stderr=stderr, text=True,
                                start_new_session=True)  # its own process group
        try:
            proc.wait(timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):  # what the block left running
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode == -signal.SIGKILL:
        raise AssertionError(f"{block.name} did not finish within {TIME_LIMIT:g}s:\n"
                             f"{out.read_text()}\n{err.read_text()}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(),
                                       err.read_text())


@pytest.mark.parametrize("block", RUN, ids=[b.name for b in RUN])
def test_doc_command_block_runs(block: Block, tmp_path: Path) -> None:
    if block.marker is not None:
        kind, argument = block.marker
        if kind == "skip":
            assert argument, f"{block.name}: a doc-test skip needs a reason"
            pytest.skip(f"{block.name}: {argument}")
        if kind == "needs" and shutil.which(argument) is None:
            pytest.skip(f"{block.name}: needs {argument}, which is not installed")
    done = run_block(block, scratch(tmp_path))
    assert done.returncode == 0, (f"{block.name} exited {done.returncode}:\n--- stdout\n"
                                  f"{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")


def test_every_doc_is_found_and_runnable_blocks_are_tagged_sh() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/operations.md", "docs/quickstart.md"} <= names
    untagged = [b.name for b in ALL if b.language in ("bash", "shell", "shell-session")]
    assert not untagged, f"tag runnable commands sh, shown ones text: {untagged}"
    stray = [b.name for b in ALL if b.marker is not None and b.language != "sh"]
    assert not stray, f"doc-test markers only apply to sh blocks: {stray}"
    assert len([b for b in RUN if b.marker is None]) >= 8  # the docs do show runnable commands
