"""``orion graph``: DOT and Mermaid for an orion file (and, in tests/e2e, for an orion on a
server). The output is parsed back: every star and every line must be there, labelled and
coloured; with Graphviz installed the DOT is also rendered by ``dot``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orion_grpc.client.files import load_orion
from orion_grpc.client.graph import (
    STATUS_COLOURS,
    mermaid_ids,
    to_dot,
    to_mermaid,
)
from orion_grpc.core import TaskOrion, TaskStar, TaskStarLine
from orion_grpc.core.enums import TaskStatus

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "release_pipeline.json"
_DOT_STRING = r'"((?:[^"\\]|\\.)*)"'


def graph_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orion_grpc.cli", "graph", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, str, str]]]:
    """({node id: {label, fillcolor}}, [(from, to, label, style)]) of what to_dot writes."""
    nodes: dict[str, dict[str, str]] = {}
    edges = []
    for line in text.splitlines():
        edge = re.match(rf"\s*{_DOT_STRING} -> {_DOT_STRING} \[label={_DOT_STRING}, "
                        r"style=(\w+),", line)
        node = re.match(rf"\s*{_DOT_STRING} \[label={_DOT_STRING}, fillcolor=\"(#\w+)\"", line)
        if edge:
            edges.append((unquote(edge[1]), unquote(edge[2]), unquote(edge[3]), edge[4]))
        elif node:
            nodes[unquote(node[1])] = {"label": unquote(node[2]), "fillcolor": node[3]}
    return nodes, edges


def parse_mermaid(text: str) -> tuple[dict[str, str], list[tuple[str, str, str, str]],
                                      dict[str, str]]:
    """({node: label}, [(from, arrow, label, to)], {node: class}) of what to_mermaid writes."""
    nodes = dict(re.findall(r'^  (s_\w+)\["([^"]*)"\]$', text, re.M))
    edges = re.findall(r'^  (s_\w+) (-->|-\.->|==>)\|"([^"]*)"\| (s_\w+)$', text, re.M)
    classes = {}
    for members, name in re.findall(r"^  class ([\w,]+) (\w+)$", text, re.M):
        for member in members.split(","):
            classes[member] = name
    return nodes, edges, classes


def expected_edges(orion: TaskOrion) -> set[tuple[str, str, str]]:
    out = set()
    for line in orion.get_all_dependencies():
        label = line.dependency_type.value
        if line.condition:
            label += f": {line.condition}"
        out.add((line.from_task_id, line.to_task_id, label))
    return out


def test_dot_of_the_example_has_every_star_and_line_labelled() -> None:
    done = graph_cli(str(EXAMPLE), "--format", "dot")
    assert done.returncode == 0, done.stderr
    orion = load_orion(str(EXAMPLE))[0]
    nodes, edges = parse_dot(done.stdout)
    assert set(nodes) == {t.task_id for t in orion.get_all_tasks()}
    for task in orion.get_all_tasks():
        assert nodes[task.task_id]["label"].splitlines() == [task.name, task.task_id, "pending"]
        assert nodes[task.task_id]["fillcolor"] == STATUS_COLOURS[TaskStatus.PENDING][0]
    assert {(a, b, label) for a, b, label, _ in edges} == expected_edges(orion)
    styles = {label.split(":")[0]: style for _, _, label, style in edges}
    assert styles == {"success_only": "solid", "unconditional": "solid",
                      "conditional": "dotted", "completion_only": "dashed"}
    assert done.stdout.startswith('digraph "release_pipeline" {')


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")
def test_graphviz_renders_the_dot_and_reads_the_same_graph() -> None:
    text = graph_cli(str(EXAMPLE)).stdout  # dot is the default format
    rendered = subprocess.run(["dot", "-Tjson"], input=text, capture_output=True, text=True,
                              timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    graph = json.loads(rendered.stdout)
    names = {o["_gvid"]: o["name"] for o in graph["objects"]}
    assert set(names.values()) == set(parse_dot(text)[0])
    assert {(names[e["tail"]], names[e["head"]], e["label"]) for e in graph["edges"]} == \
        expected_edges(load_orion(str(EXAMPLE))[0])
    svg = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True,
                         timeout=60)
    assert svg.returncode == 0 and "<svg" in svg.stdout


def test_mermaid_of_the_example_has_every_star_line_and_status_class(tmp_path: Path) -> None:
    out = tmp_path / "release.mmd"
    done = graph_cli(str(EXAMPLE), "-o", str(out))  # .mmd: mermaid
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (mermaid)" in done.stderr
    text = out.read_text()
    orion = load_orion(str(EXAMPLE))[0]
    ids = mermaid_ids([t.task_id for t in orion.get_all_tasks()])
    back = {v: k for k, v in ids.items()}
    nodes, edges, classes = parse_mermaid(text)
    assert {back[n] for n in nodes} == {t.task_id for t in orion.get_all_tasks()}
    assert {(back[a], back[b], label.replace("#amp;", "&").replace("#124;", "|")
             .replace("#gt;", ">")) for a, _, label, b in edges} == expected_edges(orion)
    assert set(classes.values()) == {"pending"} and set(classes) == set(nodes)
    assert "classDef pending fill:#eeeeee" in text
    assert text.startswith('---\ntitle: "Nightly release across the fleet (ready)"\n---\n'
                           "flowchart LR\n")


def test_awkward_ids_and_labels_stay_inside_their_quotes() -> None:
    orion = TaskOrion("odd", name='a "quoted" name')
    orion.add_task(TaskStar("end", name='say "hi" | <b>', description="x"))
    orion.add_task(TaskStar("a-b", description="x"))
    orion.add_task(TaskStar("a_b", description="x"))
    orion.add_dependency(TaskStarLine("end", "a-b", "conditional", condition="result.n > 1"))
    orion.add_dependency(TaskStarLine("a-b", "a_b", "completion_only"))
    orion.get_task("end").start_execution()
    orion.get_task("end").complete_with_success({"n": 2})

    nodes, edges = parse_dot(to_dot(orion))
    assert nodes["end"]["label"].splitlines()[0] == 'say "hi" | <b>'
    assert nodes["end"]["fillcolor"] == STATUS_COLOURS[TaskStatus.COMPLETED][0]
    assert ("end", "a-b", "conditional: result.n > 1", "dotted") in edges

    ids = mermaid_ids(["end", "a-b", "a_b"])
    assert ids == {"end": "s_end", "a-b": "s_a_b", "a_b": "s_a_b_2"}  # no keyword, unique
    text = to_mermaid(orion)
    m_nodes, m_edges, classes = parse_mermaid(text)
    assert m_nodes["s_end"].startswith("say #quot;hi#quot; #124; #lt;b#gt;<br/>end")
    assert ("s_end", "==>", "conditional: result.n #gt; 1", "s_a_b") in m_edges
    assert ("s_a_b", "-.->", "completion_only", "s_a_b_2") in m_edges
    assert classes["s_end"] == "completed" and classes["s_a_b_2"] == "pending"
    assert 'title: "a \\"quoted\\" name (' in text


def test_an_unknown_orion_is_an_error_that_says_what_was_looked_for() -> None:
    done = graph_cli("no-such-orion", "--server", "127.0.0.1:1", "--timeout", "2")
    assert done.returncode == 2
    assert "no-such-orion is not a file here, and the server at 127.0.0.1:1" in done.stderr
