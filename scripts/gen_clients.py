#!/usr/bin/env python3
"""Generate the TypeScript and Go client code from proto/ (``buf generate`` with buf.gen.yaml).

Writes, from ``proto/orion/v1/*.proto``, the committed copies:

* ``clients/typescript/src/gen/`` — protobuf-es messages and service descriptors
  (``@bufbuild/protoc-gen-es``, pinned in ``clients/typescript/package-lock.json``);
* ``clients/go/src/orion/gen/`` — Go messages and gRPC stubs (``protoc-gen-go`` and
  ``protoc-gen-go-grpc``, from Debian's packages of the same names).

buf runs the plugins locally (no remote plugin is reachable) into a temporary directory; the
result replaces (or, with ``--check``, is compared with) the committed copies.

Usage::

    python scripts/gen_clients.py           # regenerate in place
    python scripts/gen_clients.py --check   # exit 1 if a committed copy is stale

The output depends on the plugin versions: they must match the pins below (protoc-gen-es: the
package-lock). ``npm ci`` in clients/typescript installs the pinned protoc-gen-es; this script
runs it when node_modules is missing or older than the lock. ``--allow-version-mismatch``
generates with other versions anyway (the result will not pass ``--check`` on a pinned
machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gentree import check_tree, read_tree, write_tree

ROOT = Path(__file__).resolve().parent.parent
TS_DIR = ROOT / "clients" / "typescript"
GO_DIR = ROOT / "clients" / "go"

# The generated trees (relative to ROOT), as buf.gen.yaml writes them.
TREES = (
    Path("clients/typescript/src/gen"),
    Path("clients/go/src/orion/gen"),
)

# Debian bookworm's protoc-gen-go (1.28.1-3) and protoc-gen-go-grpc (1.33.3-2, which reports
# itself as 1.0): `--version` output of each. Bump with the Debian packages and regenerate.
GO_PLUGIN_PINS = {
    "protoc-gen-go": "protoc-gen-go v1.28.1",
    "protoc-gen-go-grpc": "protoc-gen-go-grpc 1.0",
}
PROTOC_GEN_ES = TS_DIR / "node_modules" / "@bufbuild" / "protoc-gen-es"


def ensure_node_modules() -> None:
    """``npm ci`` in clients/typescript when node_modules is missing or older than the lock."""
    lock = TS_DIR / "package-lock.json"
    installed = TS_DIR / "node_modules" / ".package-lock.json"  # npm writes it on install
    if installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("error: npm not found; install Node.js and npm (apt-get install nodejs npm)")
    print("npm ci (clients/typescript)", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=TS_DIR,
                   check=True)


def plugin_problems() -> list[str]:
    problems = []
    lock = json.loads((TS_DIR / "package-lock.json").read_text())
    wanted_es = lock["packages"]["node_modules/@bufbuild/protoc-gen-es"]["version"]
    try:
        have_es = json.loads((PROTOC_GEN_ES / "package.json").read_text())["version"]
    except FileNotFoundError:
        have_es = None
    if have_es != wanted_es:
        problems.append(f"@bufbuild/protoc-gen-es {wanted_es} is locked but {have_es or 'nothing'}"
                        " is installed (run: npm ci in clients/typescript)")
    for plugin, wanted in GO_PLUGIN_PINS.items():
        path = shutil.which(plugin)
        if path is None:
            problems.append(f"{plugin} not found (Debian: apt-get install {plugin})")
            continue
        have = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
        if have != wanted:
            problems.append(f"{plugin}: '{wanted}' is pinned but '{have}' is installed")
    return problems


def find_buf() -> str:
    local = ROOT / "node_modules" / ".bin" / "buf"  # where scripts/test installs it
    found = shutil.which("buf") or (str(local) if local.is_file() else None)
    if found is None:
        sys.exit("error: buf not found; run scripts/test once, or: npm install --no-save "
                 "@bufbuild/buf (see scripts/test for the pinned version)")
    return found


def generate() -> dict[Path, dict[str, str]]:
    """Run buf generate into a temporary directory; {tree: {relative path: text}}."""
    with tempfile.TemporaryDirectory(prefix="orion-clients-") as tmp:
        env = {**os.environ, "PATH": os.pathsep.join([str(TS_DIR / "node_modules" / ".bin"),
                                                      os.environ.get("PATH", "")])}
        proc = subprocess.run([find_buf(), "generate", "--template", "buf.gen.yaml", "--output", tmp],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            sys.exit(f"error: buf generate failed with exit code {proc.returncode}")
        out = Path(tmp)
        produced = read_tree(out)
        trees = {tree: read_tree(out / tree) for tree in TREES}
        stray = sorted(p for p in produced
                       if not any(Path(p).is_relative_to(tree) for tree in TREES))
        if stray:
            sys.exit("error: buf generate wrote files outside the known trees (update TREES in "
                     f"scripts/gen_clients.py): {', '.join(stray)}")
        return trees


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if a committed copy is stale; write nothing")
    parser.add_argument("--allow-version-mismatch", action="store_true",
                        help="generate even if the plugin versions differ from the pins")
    args = parser.parse_args(argv)
    ensure_node_modules()
    problems = plugin_problems()
    if problems:
        message = "\n".join(f"  - {p}" for p in problems)
        if not args.allow_version_mismatch:
            sys.exit(f"error: code generator plugins differ from the pins:\n{message}")
        print(f"warning: code generator plugins differ from the pins:\n{message}", file=sys.stderr)
    status = 0
    for tree, wanted in generate().items():
        directory = ROOT / tree
        have = read_tree(directory)
        if args.check:
            status |= check_tree(directory, wanted, have, "python3 scripts/gen_clients.py")
        else:
            write_tree(directory, wanted, have)
    return status


if __name__ == "__main__":
    sys.exit(main())
