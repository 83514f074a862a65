"""Committed trees of generated files: read one, compare it with a fresh generation (listing
what is missing, unexpected or changed, with a short diff), or write the fresh one in place.

Shared by the code generators (scripts/gen_protos.py for Python, scripts/gen_clients.py for
TypeScript and Go), so every language's freshness check reports the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _label(directory: Path) -> str:
    return directory.relative_to(ROOT).as_posix() if directory.is_relative_to(ROOT) else str(directory)


def read_tree(directory: Path, keep: Callable[[Path], bool] = lambda p: True) -> dict[str, str]:
    """{path relative to ``directory``: text} of the files under it that ``keep`` accepts."""
    files: dict[str, str] = {}
    if directory.is_dir():
        for path in sorted(directory.rglob("*")):
            if path.is_file() and keep(path):
                files[path.relative_to(directory).as_posix()] = path.read_text()
    return files


def check_tree(directory: Path, wanted: dict[str, str], have: dict[str, str], fix: str) -> int:
    """0 if ``have`` (the committed files) equals ``wanted``; else print what differs and how to
    ``fix`` it, and return 1."""
    label = _label(directory)
    added = sorted(set(wanted) - set(have))
    removed = sorted(set(have) - set(wanted))
    changed = sorted(p for p in set(wanted) & set(have) if wanted[p] != have[p])
    if not (added or removed or changed):
        print(f"ok: {label} is up to date ({len(wanted)} files)")
        return 0
    print(f"error: {label} is stale; run: {fix}")
    for p in added:
        print(f"  missing:    {p}")
    for p in removed:
        print(f"  unexpected: {p}")
    for p in changed:
        diff = list(
            difflib.unified_diff(
                have[p].splitlines(), wanted[p].splitlines(), f"committed/{p}", f"generated/{p}",
                lineterm="", n=1,
            )
        )
        print(f"  changed:    {p} ({sum(1 for d in diff if d[:1] in '+-') - 2} lines differ)")
        for line in diff[:20]:
            print(f"      {line[:160]}")
        if len(diff) > 20:
            print("      ...")
    return 1


def write_tree(directory: Path, wanted: dict[str, str], have: dict[str, str]) -> None:
    """Make ``directory`` hold exactly ``wanted`` (``have``: what it holds now)."""
    for rel in sorted(set(have) - set(wanted)):
        (directory / rel).unlink()
        print(f"removed {rel}")
    written = 0
    for rel, text in wanted.items():
        if have.get(rel) != text:
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            written += 1
    # Drop directories left empty by removed files.
    if directory.is_dir():
        for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    print(f"generated {len(wanted)} files in {_label(directory)} ({written} changed)")
