"""No Docker engine runs in CI, so check the Dockerfile by parsing it and running its install
and entry-point steps as plain commands in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "Dockerfile").read_text(encoding="utf-8")
LINES = re.sub(r"\\\n\s*", " ", TEXT).splitlines()  # join continuation lines


def _instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in LINES if line.startswith(name + " ")]


def test_base_image_is_pinned_slim_and_multi_stage() -> None:
    args = dict(a.split("=", 1) for a in _instructions("ARG") if "=" in a)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", image), image  # exact patch + distro
    froms = _instructions("FROM")
    assert len(froms) == 2 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert "--from=build" in TEXT


def test_runs_as_non_root_with_healthcheck_entrypoint_and_volume() -> None:
    assert _instructions("USER") == ["orion"]
    assert json.loads(_instructions("ENTRYPOINT")[0]) == ["orion"]
    assert json.loads(_instructions("CMD")[0]) == ["serve"]
    assert _instructions("VOLUME") and _instructions("EXPOSE") == ["50051 9464"]
    assert _instructions("HEALTHCHECK")


@pytest.mark.timeout(600)
def test_install_and_entrypoint_steps_work_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "opt-orion"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = next(r for r in _instructions("RUN") if "pip install" in r)
    spec = install.split()[-1].strip('"').replace(".", str(ROOT), 1)  # ".[otlp]" -> ROOT[otlp]
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", spec]
    subprocess.run(pip, check=True, timeout=540)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    for assignment in _instructions("ENV")[0].split():
        key, value = assignment.split("=", 1)
        env[key] = value.replace("$PATH", os.environ["PATH"]).replace("/opt/orion", str(venv))
    env["ORION_PORT"] = "0"  # the image uses 50051; a free port keeps the test independent
    assert env["ORION_STORE"] == "/data/orion.db"  # the store lives on the volume
    env["ORION_STORE"] = str(tmp_path / "orion.db")  # ... which this machine does not have
    assert env["ORION_METRICS_HOST"] == "0.0.0.0" and "ORION_METRICS_PORT" not in env  # off
    env["ORION_METRICS_PORT"] = "0"  # as `docker run -e ORION_METRICS_PORT=9464` turns it on
    entry = json.loads(_instructions("ENTRYPOINT")[0]) + json.loads(_instructions("CMD")[0])
    server = subprocess.Popen([str(venv / "bin" / entry[0]), *entry[1:]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"listening on (\S+):(\d+)", first)
        assert match, first + server.stderr.read()  # type: ignore[union-attr]
        assert match.group(1) == "0.0.0.0"
        metrics = re.search(r"metrics on http://0\.0\.0\.0:(\d+)/metrics",
                            server.stdout.readline())  # type: ignore[union-attr]
        assert metrics, "the metrics endpoint did not start"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.group(1)}/metrics",
                                    timeout=30) as page:
            assert "orion_stars_dispatched_total 0" in page.read().decode()
        health = json.loads(re.search(r"CMD (\[.*\])", _instructions("HEALTHCHECK")[0]).group(1))
        check_env = {**env, "ORION_PORT": match.group(2)}
        healthcheck = [str(venv / "bin" / health[0]), *health[1:]]
        assert subprocess.run(healthcheck, timeout=30, env=check_env).returncode == 0
        exporter = subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import opentelemetry.exporter.otlp.proto.grpc"], timeout=60)
        assert exporter.returncode == 0  # the image can export traces over OTLP
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    # ... and it fails once the server is gone.
    assert subprocess.run(healthcheck, timeout=30, env=check_env,
                          capture_output=True).returncode != 0
