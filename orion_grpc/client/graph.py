"""``orion graph``: an orion's DAG as Graphviz DOT or Mermaid, coloured by status.

Stars are boxes labelled with their name, id, device and status, filled by status (the legend
is ``STATUS_COLOURS``); lines are arrows labelled with their dependency type and, for
conditional ones, the condition. The arrow's style says the type as well: success_only solid,
completion_only dashed, conditional dotted (Mermaid: thick), unconditional solid grey.

The orion comes from a local orion file (its stars are all ``pending``) or, by id, from a
server (its live state: ``GetOrion``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..core import TaskOrion, TaskStar, TaskStarLine
from ..core.enums import DependencyType, TaskStatus

FORMATS = ("dot", "mermaid")
# status -> (fill, border)
STATUS_COLOURS = {
    TaskStatus.PENDING: ("#eeeeee", "#9e9e9e"),
    TaskStatus.WAITING_DEPENDENCY: ("#eeeeee", "#9e9e9e"),
    TaskStatus.RUNNING: ("#90caf9", "#1565c0"),
    TaskStatus.COMPLETED: ("#a5d6a7", "#2e7d32"),
    TaskStatus.FAILED: ("#ef9a9a", "#c62828"),
    TaskStatus.CANCELLED: ("#fff59d", "#9e9d24"),
}
# dependency type -> (DOT style, DOT colour, Mermaid arrow)
LINE_STYLES = {
    DependencyType.SUCCESS_ONLY: ("solid", "#212121", "-->"),
    DependencyType.COMPLETION_ONLY: ("dashed", "#212121", "-.->"),
    DependencyType.CONDITIONAL: ("dotted", "#6a1b9a", "==>"),
    DependencyType.UNCONDITIONAL: ("solid", "#757575", "-->"),
}


def star_lines(task: TaskStar) -> list[str]:
    """A star's label, line by line: name; id and device; status."""
    lines = [task.name or task.task_id]
    detail = [task.task_id] if task.name and task.name != task.task_id else []
    if task.target_device_id:
        detail.append(f"on {task.target_device_id}")
    if detail:
        lines.append(" ".join(detail))
    lines.append(task.status.value.replace("_", " "))
    return lines


def line_label(line: TaskStarLine) -> str:
    label = line.dependency_type.value
    if line.dependency_type is DependencyType.CONDITIONAL:
        condition = line.condition or line.condition_description
        if condition:
            label += f": {condition}"
    return label


def _ordered(orion: TaskOrion) -> tuple[list[TaskStar], list[TaskStarLine]]:
    """Stars in topological order (ties by insertion), lines by (from, to)."""
    tasks = orion.get_all_tasks()
    try:
        order = {task_id: i for i, task_id in enumerate(orion.get_topological_order())}
        tasks = sorted(tasks, key=lambda t: order.get(t.task_id, len(order)))
    except Exception:  # a cyclic orion cannot exist, but never fail a drawing over it
        pass
    position = {t.task_id: i for i, t in enumerate(tasks)}
    lines = sorted(orion.get_all_dependencies(),
                   key=lambda d: (position.get(d.from_task_id, 0), position.get(d.to_task_id, 0)))
    return tasks, lines


# ---------------------------------------------------------------------- Graphviz DOT
def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(orion: TaskOrion) -> str:
    tasks, lines = _ordered(orion)
    title = orion.name or orion.orion_id
    out = [f"digraph {_dot_string(orion.orion_id)} {{",
           f"  label={_dot_string(f'{title} ({orion.state.value})')};",
           "  labelloc=t;", "  rankdir=LR;", '  fontname="Helvetica";',
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
           '  edge [fontname="Helvetica", fontsize=9];']
    for task in tasks:
        fill, border = STATUS_COLOURS[task.status]
        out.append(f"  {_dot_string(task.task_id)} [label={_dot_string(chr(10).join(star_lines(task)))}, "
                   f'fillcolor="{fill}", color="{border}"];')
    for line in lines:
        style, colour, _ = LINE_STYLES[line.dependency_type]
        out.append(f"  {_dot_string(line.from_task_id)} -> {_dot_string(line.to_task_id)} "
                   f"[label={_dot_string(line_label(line))}, style={style}, "
                   f'color="{colour}", fontcolor="{colour}"];')
    out.append("}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- Mermaid
_MERMAID_BAD = re.compile(r"[^A-Za-z0-9_]")


def mermaid_ids(task_ids: list[str]) -> dict[str, str]:
    """Mermaid node ids: star ids reduced to [A-Za-z0-9_] with an ``s_`` prefix (so a star
    called ``end`` or ``graph`` is not a keyword), made unique."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for task_id in task_ids:
        base = "s_" + _MERMAID_BAD.sub("_", task_id)
        candidate, n = base, 2
        while candidate in used:
            candidate, n = f"{base}_{n}", n + 1
        used.add(candidate)
        ids[task_id] = candidate
    return ids


def _mermaid_text(text: str) -> str:
    """A quoted Mermaid label: entity codes for what would end or break it."""
    return '"' + (text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;")
                  .replace(">", "#gt;").replace("|", "#124;")) + '"'


def to_mermaid(orion: TaskOrion) -> str:
    tasks, lines = _ordered(orion)
    ids = mermaid_ids([t.task_id for t in tasks])
    title = orion.name or orion.orion_id
    out = ["---", f"title: {json.dumps(f'{title} ({orion.state.value})', ensure_ascii=False)}",
           "---",
           "flowchart LR"]
    for task in tasks:
        label = "<br/>".join(_mermaid_text(part)[1:-1] for part in star_lines(task))
        out.append(f'  {ids[task.task_id]}["{label}"]')
    for line in lines:
        arrow = LINE_STYLES[line.dependency_type][2]
        out.append(f"  {ids[line.from_task_id]} {arrow}|{_mermaid_text(line_label(line))}| "
                   f"{ids[line.to_task_id]}")
    by_status: dict[TaskStatus, list[str]] = {}
    for task in tasks:
        by_status.setdefault(task.status, []).append(ids[task.task_id])
    for status, members in by_status.items():
        fill, border = STATUS_COLOURS[status]
        out.append(f"  classDef {status.value} fill:{fill},stroke:{border},color:#000")
        out.append(f"  class {','.join(members)} {status.value}")
    return "\n".join(out) + "\n"


def render(orion: TaskOrion, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown graph format {fmt!r}; use {' or '.join(FORMATS)}")
    return to_dot(orion) if fmt == "dot" else to_mermaid(orion)


# ---------------------------------------------------------------------- the command
def format_for(path: str | None, given: str | None) -> str:
    """``--format``, else the output file's extension (.mmd/.mermaid -> mermaid), else dot."""
    if given:
        return given
    if path and Path(path).suffix.lower() in (".mmd", ".mermaid"):
        return "mermaid"
    return "dot"


async def load(source: str, server: str, timeout: float) -> TaskOrion:
    """A local orion file if ``source`` is one, else the orion with that id on ``server``."""
    from ..core import NotFoundError, UnavailableError
    from .client import OrionClient
    from .files import load_orion

    if Path(source).is_file() or source == "-":
        return load_orion(source)[0]
    async with OrionClient(server, timeout=timeout) as client:
        try:
            orion = await client.get_orion(source)
        except UnavailableError as exc:
            raise UnavailableError(f"{source} is not a file here, and the server at {server} "
                                   f"could not be asked for an orion of that id: {exc.message}",
                                   exc.reason) from exc
    if orion is None:
        raise NotFoundError(f"Orion {source} not found on {server} (and no file of that "
                            f"name here)", "ORION_NOT_FOUND")
    return orion


async def cmd_graph(args: argparse.Namespace) -> int:
    fmt = format_for(args.output, args.format)
    text = render(await load(args.orion, args.server, args.timeout), fmt)
    if args.output and args.output != "-":
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({fmt})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("orion", help="an orion file (YAML/JSON), or the id of an orion on the "
                                      "server (drawn with its live status)")
    parser.add_argument("--format", choices=FORMATS,
                        help="dot (Graphviz) or mermaid (default: from -o's extension, "
                             ".mmd/.mermaid = mermaid, else dot)")
    parser.add_argument("-o", "--output", help="write to this file (default: stdout)")
