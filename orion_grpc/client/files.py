"""Orion files and edit files: YAML or JSON in the proto's JSON mapping.

An *orion file* is what ``grpcurl -d @ … orion.v1.OrchestratorService/SubmitOrion`` takes: a
``SubmitOrionRequest`` (``{"orion": {...}, "assignmentStrategy": "..."}``) or just its
``TaskOrion``. Field names may be camelCase (``taskId``, what the JSON mapping prints) or the
proto's snake_case (``task_id``); enums are their names (``DEVICE_TYPE_LINUX``) or numbers;
durations are strings (``"90s"``). The engine's plain format (``orion validate``'s older input,
``"device_type": "linux"``) is still accepted. YAML is the same document, written as YAML.

An *edit file* is an ``EditOrionRequest`` (``{"operations": [...], "onTaskIds": [...]}``).

One leniency over the strict mapping: ``updateMask`` may list snake_case paths or be a list
(``update_mask: [task_data, priority]``); it is rewritten to the mapping's camelCase string.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ..api.convert import orion_from_pb, orion_to_pb
from ..core import InvalidArgumentError, TaskOrion
from ..core.spec import orion_from_spec
from ..gen.orion.v1 import orchestrator_service_pb2, orion_pb2, synchronizer_service_pb2


class DocumentError(ValueError):
    """A file that cannot be read or is not the document it should be."""


# ---------------------------------------------------------------------- reading
def _yaml() -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError as exc:  # a dependency, but be clear if someone removed it
        raise DocumentError("reading YAML needs PyYAML (pip install pyyaml); or write the "
                            "document as JSON") from exc
    return yaml


def parse_text(text: str, name: str = "<stdin>") -> Any:
    """JSON for ``*.json``, YAML for ``*.yaml``/``*.yml``; otherwise JSON, then YAML."""
    lower = name.lower()
    if lower.endswith((".yaml", ".yml")):
        return _parse_yaml(text, name)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if lower.endswith(".json"):
            raise DocumentError(f"{name}: not valid JSON: {exc}") from None
    return _parse_yaml(text, name)


def _parse_yaml(text: str, name: str) -> Any:
    yaml = _yaml()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DocumentError(f"{name}: not valid YAML: {exc}") from None


def read_document(path: str) -> Any:
    """The parsed file (``-`` = standard input)."""
    if path == "-":
        return parse_text(sys.stdin.read())
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_text(text, path)


# ---------------------------------------------------------------------- normalising
def _camel(path: str) -> str:
    return ".".join(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part)
                    for part in path.split("."))


def _fix_masks(value: Any) -> Any:
    """Rewrite snake_case / list update masks into the mapping's camelCase string."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ("updateMask", "update_mask"):
                paths = item if isinstance(item, list) else \
                    str(item).split(",") if isinstance(item, str) else None
                if paths is not None:
                    item = ",".join(_camel(str(p).strip()) for p in paths if str(p).strip())
            out[key] = _fix_masks(item)
        return out
    if isinstance(value, list):
        return [_fix_masks(v) for v in value]
    return value


_PROTO_ENUM = re.compile(r"^(DEVICE_TYPE|TASK_PRIORITY|DEPENDENCY_TYPE|ASSIGNMENT_STRATEGY)_")
_CAMEL_KEYS = {"taskId", "fromTaskId", "toTaskId", "dependencyType", "deviceType", "taskData",
               "retryCount", "requiredCapabilities", "targetDeviceId", "orionId",
               "assignmentStrategy", "lineId"}


def _looks_like_proto_json(value: Any) -> bool:
    if isinstance(value, dict):
        return any(k in _CAMEL_KEYS for k in value) or any(
            _looks_like_proto_json(v) for v in value.values())
    if isinstance(value, list):
        return any(_looks_like_proto_json(v) for v in value)
    return isinstance(value, str) and bool(_PROTO_ENUM.match(value))


def _parse(document: Any, message: Any, what: str) -> None:
    try:
        json_format.ParseDict(_fix_masks(document), message)
    except json_format.ParseError as exc:
        raise DocumentError(f"not a valid {what}: {exc}") from None


# ---------------------------------------------------------------------- orions
def submit_request(document: Any) -> orchestrator_service_pb2.SubmitOrionRequest:
    """An orion file as a SubmitOrionRequest: a whole request (``{"orion": …}``), a TaskOrion
    in the proto JSON mapping, or the engine's plain description."""
    if not isinstance(document, dict):
        raise DocumentError("an orion file must hold an object (a SubmitOrionRequest or a "
                            "TaskOrion)")
    request = orchestrator_service_pb2.SubmitOrionRequest()
    if "orion" in document:
        _parse(document, request, "orion.v1.SubmitOrionRequest")
        return request
    try:
        json_format.ParseDict(_fix_masks(document), request.orion)
    except json_format.ParseError as exc:
        try:
            request.orion.CopyFrom(orion_to_pb(orion_from_spec(document)))
        except InvalidArgumentError:
            if _looks_like_proto_json(document):  # say what is wrong in the format it is in
                raise DocumentError(f"not a valid orion.v1.TaskOrion: {exc}") from None
            raise
    return request


def orion_from_document(document: Any) -> tuple[TaskOrion, orchestrator_service_pb2.SubmitOrionRequest]:
    """The validated orion of an orion file (InvalidArgumentError lists every problem), and
    the request it came in."""
    request = submit_request(document)
    return orion_from_pb(request.orion), request


def load_orion(path: str) -> tuple[TaskOrion, orchestrator_service_pb2.SubmitOrionRequest]:
    return orion_from_document(read_document(path))


def strategy_name(request: orchestrator_service_pb2.SubmitOrionRequest) -> str:
    """``capability_match`` etc., or ``""`` when the file names none."""
    if not request.assignment_strategy:
        return ""
    return str(orion_pb2.AssignmentStrategy.Name(request.assignment_strategy)) \
        .removeprefix("ASSIGNMENT_STRATEGY_").lower()


# ---------------------------------------------------------------------- edits
def edit_request(document: Any, orion_id: str) -> synchronizer_service_pb2.EditOrionRequest:
    """An edit file as an EditOrionRequest for ``orion_id``. A bare list is the operations."""
    if isinstance(document, list):
        document = {"operations": document}
    if not isinstance(document, dict):
        raise DocumentError("an edit file must hold an EditOrionRequest object "
                            '({"operations": [...], "onTaskIds": [...]}) or a list of operations')
    request = synchronizer_service_pb2.EditOrionRequest()
    _parse(document, request, "orion.v1.EditOrionRequest")
    if request.orion_id and request.orion_id != orion_id:
        raise DocumentError(f"the edit file is for orion {request.orion_id!r}, not {orion_id!r}")
    request.orion_id = orion_id
    return request
