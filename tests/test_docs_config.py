"""docs/operations.md's configuration reference is generated from the code that reads the
configuration (scripts/gen_config_reference.py): a new or changed setting without a
regenerated reference fails here."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from orion_grpc.api.server import ServerConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_fresh() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    done = subprocess.run([sys.executable, "scripts/gen_config_reference.py", "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr


def test_every_server_setting_is_in_the_reference_as_flag_and_variable() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for f in dataclasses.fields(ServerConfig):
        row = f"| `--{f.name.replace('_', '-')}` | `{ServerConfig.env_name(f.name)}` |"
        assert row in text, f"{f.name} is missing from docs/operations.md"
