#!/usr/bin/env python3
"""Generate the Python code for the Orion protobuf contract.

Runs ``grpc_tools.protoc`` (pinned in ``requirements-codegen.txt``) over every
``proto/**/*.proto`` file and writes, into the committed package
``orion_grpc/gen/``:

* ``*_pb2.py`` messages and ``*_pb2_grpc.py`` service stubs (grpcio-tools),
* ``*_pb2.pyi`` / ``*_pb2_grpc.pyi`` typed stubs (mypy-protobuf),
* the ``__init__.py`` files of ``orion_grpc/gen``, ``gen/orion`` and ``gen/orion/v1``.

protoc emits absolute imports that follow the proto package
(``from orion.v1 import task_star_pb2``); they are rewritten to
``from orion_grpc.gen.orion.v1 import task_star_pb2`` so the code lives inside
``orion_grpc``. The descriptors keep their proto file names
(``orion/v1/task_star.proto``), so reflection and other languages see the same
contract. ``*_pb2_grpc`` modules are only kept for files that define a service.

Usage::

    python scripts/gen_protos.py           # regenerate orion_grpc/gen in place
    python scripts/gen_protos.py --check   # exit 1 if the committed copy is stale

The generator versions must match the pins (the output depends on them); pass
``--allow-version-mismatch`` to generate anyway (the result will not pass
``--check`` on a pinned machine).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

from gentree import check_tree, read_tree, write_tree

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
GEN_PACKAGE = "orion_grpc.gen"
GEN_DIR = ROOT / "orion_grpc" / "gen"
REQUIREMENTS = ROOT / "requirements-codegen.txt"

# Generator packages whose versions change the output, as named in REQUIREMENTS.
PINNED = ("grpcio-tools", "mypy-protobuf")

INIT_TEXT = '"""Generated from proto/ by scripts/gen_protos.py. Do not edit by hand."""\n'

_IMPORT_RE = re.compile(r"^from orion\.v1 import ", re.MULTILINE)
_IMPORT_MODULE_RE = re.compile(r"^import orion\.v1\.", re.MULTILINE)
_BUILDER_RE = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'orion\.v1\.")
_SERVICE_RE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)


def read_pins() -> dict[str, str]:
    """Return {package: version} for the exact pins in requirements-codegen.txt."""
    pins: dict[str, str] = {}
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            pins[name.lower()] = version
    return pins


def check_versions(allow_mismatch: bool) -> None:
    pins = read_pins()
    problems = []
    for name in PINNED:
        wanted = pins.get(name)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if wanted is None:
            problems.append(f"{name} is not pinned in {REQUIREMENTS.name}")
        elif installed != wanted:
            problems.append(f"{name}=={wanted} is pinned but {installed or 'nothing'} is installed")
    if problems:
        message = "\n".join(f"  - {p}" for p in problems)
        hint = f"install the pins with: pip install -r {REQUIREMENTS.relative_to(ROOT)}"
        if allow_mismatch:
            print(f"warning: generator versions differ from the pins:\n{message}", file=sys.stderr)
        else:
            sys.exit(f"error: generator versions differ from the pins:\n{message}\n{hint}")


def find_plugin(name: str) -> str:
    """Locate a protoc plugin installed next to this Python interpreter."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / name,
        Path(sys.executable).parent / name,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    sys.exit(f"error: {name} not found; install mypy-protobuf (pip install -r {REQUIREMENTS.name})")


def run_protoc(protos: list[Path], out: Path) -> None:
    import grpc_tools  # imported here so --help works without it

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={find_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={find_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    proc = subprocess.run(args, cwd=PROTO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.exit(f"error: protoc failed with exit code {proc.returncode}")


def rewrite(text: str) -> str:
    """Point generated absolute imports at the orion_grpc.gen package."""
    text = _IMPORT_RE.sub(f"from {GEN_PACKAGE}.orion.v1 import ", text)
    text = _IMPORT_MODULE_RE.sub(f"import {GEN_PACKAGE}.orion.v1.", text)
    # Module name given to the generated classes (their __module__), so that
    # pickling and reprs name the importable module.
    return _BUILDER_RE.sub(rf"\1'{GEN_PACKAGE}.orion.v1.", text)


def generate() -> dict[str, str]:
    """Generate everything; return {path relative to GEN_DIR: file text}."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        sys.exit(f"error: no .proto files under {PROTO_ROOT}")
    with_services = {
        p.relative_to(PROTO_ROOT).with_suffix("").as_posix()
        for p in protos
        if _SERVICE_RE.search(p.read_text())
    }
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="orion-gen-") as tmp:
        out = Path(tmp)
        run_protoc(protos, out)
        for path in sorted(out.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(out).as_posix()
            stem = rel.split(".", 1)[0]
            if stem.endswith("_pb2_grpc") and stem[: -len("_pb2_grpc")] not in with_services:
                continue  # protoc writes an empty grpc module for service-less files
            files[rel] = rewrite(path.read_text())
    packages = {""}
    for rel in files:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            packages.add("/".join(parts[:i]))
    for package in packages:
        files[f"{package}/__init__.py" if package else "__init__.py"] = INIT_TEXT
    return dict(sorted(files.items()))


def existing() -> dict[str, str]:
    return read_tree(GEN_DIR, lambda p: "__pycache__" not in p.parts and p.suffix != ".pyc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if orion_grpc/gen is stale; write nothing")
    parser.add_argument(
        "--allow-version-mismatch", action="store_true",
        help="generate even if the generator versions differ from the pins",
    )
    args = parser.parse_args(argv)
    check_versions(args.allow_version_mismatch)
    wanted = generate()
    if args.check:
        return check_tree(GEN_DIR, wanted, existing(), "python scripts/gen_protos.py")
    write_tree(GEN_DIR, wanted, existing())
    return 0


if __name__ == "__main__":
    sys.exit(main())
