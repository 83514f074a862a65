"""Orion files and edit files: YAML or JSON in the proto JSON mapping, and the examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from orion_grpc.client.files import (
    DocumentError,
    edit_request,
    load_orion,
    orion_from_document,
    parse_text,
    read_document,
    strategy_name,
    submit_request,
)
from orion_grpc.core import DependencyType, InvalidArgumentError
from orion_grpc.demo import example_path
from orion_grpc.gen.orion.v1 import orchestrator_service_pb2

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.*"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"release_pipeline.json", "expense_report.yaml",
                                         "fanout_data_job.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_is_a_valid_submit_request_grpcurl_would_take(path: Path):
    document = read_document(str(path))
    # grpcurl -d @ parses the proto JSON mapping strictly: so does json_format, here.
    strict = json_format.ParseDict(json.loads(json.dumps(document)),
                                   orchestrator_service_pb2.SubmitOrionRequest())
    orion, request = orion_from_document(document)  # the server's validation: every problem
    assert request == strict
    assert orion.orion_id == path.stem and orion.task_count >= 8
    assert strategy_name(request) in ("capability_match", "load_balance")
    for task in orion.get_all_tasks():
        assert task.name and task.description and task.device_type is not None
        assert task.task_data.get("executor") == "sleep"  # runs on any stock daemon


def test_the_release_pipeline_uses_every_dependency_type_and_ships_with_the_package():
    orion, _ = load_orion(str(ROOT / "examples" / "release_pipeline.json"))
    assert {line.dependency_type for line in orion.get_all_dependencies()} == set(DependencyType)
    conditions = [line.condition for line in orion.get_all_dependencies() if line.condition]
    assert any("result." in c for c in conditions)  # on what a device reported
    packaged = Path(example_path()).read_bytes()  # what `orion demo` runs when installed
    assert packaged == (ROOT / "examples" / "release_pipeline.json").read_bytes()


def test_the_expense_report_branches_on_a_desktop_result_across_android_and_windows():
    orion, _ = load_orion(str(ROOT / "examples" / "expense_report.yaml"))
    assert {t.device_type.value for t in orion.get_all_tasks()} == {"android", "windows"}
    branches = {line.to_task_id: line.condition for line in orion.get_all_dependencies()
                if line.from_task_id == "fill_report" and line.condition}
    assert branches == {"request_approval": "success && result.total > 500",
                        "auto_submit": "success && result.total <= 500"}


def test_camel_case_and_snake_case_and_yaml_are_the_same_document():
    camel = {"orion": {"orionId": "o", "tasks": [
        {"taskId": "a", "deviceType": "DEVICE_TYPE_LINUX", "timeout": "90s",
         "taskData": {"n": 1}}, {"taskId": "b"}],
        "dependencies": [{"fromTaskId": "a", "toTaskId": "b",
                          "dependencyType": "DEPENDENCY_TYPE_CONDITIONAL",
                          "condition": {"expression": "result.n == 1"}}]},
        "assignmentStrategy": "ASSIGNMENT_STRATEGY_ROUND_ROBIN"}
    snake = {"orion": {"orion_id": "o", "tasks": [
        {"task_id": "a", "device_type": "DEVICE_TYPE_LINUX", "timeout": "90s",
         "task_data": {"n": 1}}, {"task_id": "b"}],
        "dependencies": [{"from_task_id": "a", "to_task_id": "b", "dependency_type": 4,
                          "condition": {"expression": "result.n == 1"}}]},
        "assignment_strategy": "ASSIGNMENT_STRATEGY_ROUND_ROBIN"}
    yaml_text = """
orion:
  orion_id: o
  tasks:
    - {task_id: a, device_type: DEVICE_TYPE_LINUX, timeout: 90s, task_data: {n: 1}}
    - task_id: b
  dependencies:
    - from_task_id: a
      to_task_id: b
      dependency_type: DEPENDENCY_TYPE_CONDITIONAL
      condition: {expression: "result.n == 1"}
assignment_strategy: ASSIGNMENT_STRATEGY_ROUND_ROBIN
"""
    requests = [submit_request(camel), submit_request(snake),
                submit_request(parse_text(yaml_text, "o.yaml"))]
    assert requests[0] == requests[1] == requests[2]
    assert requests[0].orion.tasks[0].timeout.seconds == 90
    # A bare TaskOrion is fine too (the request without its envelope).
    assert submit_request(camel["orion"]).orion == requests[0].orion


def test_the_engines_plain_format_is_still_accepted():
    request = submit_request({"orion_id": "p", "tasks": [
        {"task_id": "a", "device_type": "linux"}, {"task_id": "b"}],
        "dependencies": [{"from_task_id": "a", "to_task_id": "b",
                          "dependency_type": "success_only"}]})
    assert [t.task_id for t in request.orion.tasks] == ["a", "b"]


def test_problems_are_reported_in_the_format_the_file_is_in():
    with pytest.raises(DocumentError, match="orion.v1.TaskOrion.*DEVICE_TYPE_TOASTER"):
        submit_request({"tasks": [{"taskId": "a", "deviceType": "DEVICE_TYPE_TOASTER"}]})
    with pytest.raises(DocumentError, match="SubmitOrionRequest.*nope"):
        submit_request({"orion": {"tasks": []}, "nope": 1})
    with pytest.raises(InvalidArgumentError) as info:  # plain format: every problem
        submit_request({"tasks": [{"task_id": "a"}, {"task_id": "a", "device_type": "toaster"}]})
    assert len(info.value.violations) == 2
    with pytest.raises(InvalidArgumentError) as info:  # valid mapping, invalid orion
        orion_from_document({"orion": {"tasks": [{"taskId": "a"}, {"taskId": "a"}]}})
    assert [v.reason for v in info.value.violations] == ["DUPLICATE_TASK_ID"]
    with pytest.raises(DocumentError, match="must hold an object"):
        submit_request(["a"])


def test_unreadable_files_say_why(tmp_path: Path):
    bad_json = tmp_path / "x.json"
    bad_json.write_text("{nope")
    with pytest.raises(DocumentError, match="x.json: not valid JSON"):
        read_document(str(bad_json))
    bad_yaml = tmp_path / "x.yaml"
    bad_yaml.write_text("a: [1, 2\n")
    with pytest.raises(DocumentError, match="x.yaml: not valid YAML"):
        read_document(str(bad_yaml))
    with pytest.raises(DocumentError, match="cannot read"):
        read_document(str(tmp_path / "missing.json"))


def test_without_pyyaml_json_still_works_and_yaml_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    assert parse_text('{"a": 1}', "x.json") == {"a": 1}
    assert parse_text('{"a": 1}') == {"a": 1}
    with pytest.raises(DocumentError, match="pip install pyyaml"):
        parse_text("a: 1", "x.yaml")


def test_edit_files():
    request = edit_request({"operations": [
        {"addTask": {"task": {"taskId": "c", "description": "do c"}}},
        {"addDependency": {"dependency": {"fromTaskId": "b", "toTaskId": "c"}}},
        {"update_task": {"task": {"task_id": "b", "task_data": {"x": 1}},
                         "update_mask": ["task_data", "description"]}},
        {"updateDependency": {"dependency": {"lineId": "l1"}, "updateMask": "condition_description"}},
        {"removeTask": {"taskId": "old"}}, {"removeDependency": {"lineId": "l2"}}],
        "onTaskIds": ["a"]}, "o")
    assert request.orion_id == "o" and list(request.on_task_ids) == ["a"]
    assert [op.WhichOneof("operation") for op in request.operations] == [
        "add_task", "add_dependency", "update_task", "update_dependency", "remove_task",
        "remove_dependency"]
    assert list(request.operations[2].update_task.update_mask.paths) == ["task_data",
                                                                         "description"]
    assert list(request.operations[3].update_dependency.update_mask.paths) == [
        "condition_description"]
    bare = edit_request([{"removeTask": {"taskId": "x"}}], "o")  # just the operations
    assert bare.operations[0].remove_task.task_id == "x"
    with pytest.raises(DocumentError, match="for orion 'p', not 'o'"):
        edit_request({"orionId": "p", "operations": []}, "o")
    with pytest.raises(DocumentError, match="EditOrionRequest"):
        edit_request({"operations": [{"explode": {}}]}, "o")


def test_validate_json_prints_what_grpcurl_sends(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "orion_grpc.cli", "validate",
                          str(ROOT / "examples" / "expense_report.yaml"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    request = json_format.Parse(out.stdout, orchestrator_service_pb2.SubmitOrionRequest())
    assert request == submit_request(read_document(str(ROOT / "examples" /
                                                       "expense_report.yaml")))
    broken = tmp_path / "broken.yaml"
    broken.write_text("orion:\n  tasks:\n    - {taskId: a, deviceType: DEVICE_TYPE_TOASTER}\n")
    out = subprocess.run([sys.executable, "-m", "orion_grpc.cli", "validate", str(broken)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "DEVICE_TYPE_TOASTER" in out.stderr, out.stderr
