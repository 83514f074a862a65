"""JSON values in ``google.protobuf.Struct`` / ``Value``, set and read field by field.

Shared by the server (``api/convert.py``) and the device daemon: json_format's generic
ParseDict / MessageToDict cost 4-10x more, and these run for every event, assignment and
result. The encoding is the same (a test compares them). Struct's only number type is a
double: integral numbers come back as ``int`` (within ±2**53), so ``{"count": 3}`` survives
the round trip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from google.protobuf import struct_pb2

MAX_SAFE_INT = 2**53


def plain(value: Any) -> Any:
    """A JSON-native copy of ``value`` (what Struct/Value can carry)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, BaseException):
        return str(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return plain(to_dict())
    return str(value)


def set_value(msg: struct_pb2.Value, value: Any) -> None:
    """Set ``msg`` to ``value``; what JSON cannot carry becomes what ``plain`` makes of it."""
    if value is None:
        msg.null_value = struct_pb2.NULL_VALUE
    elif value is True or value is False:
        msg.bool_value = value
    elif isinstance(value, str):
        msg.string_value = value
    elif isinstance(value, int):
        msg.number_value = value
    elif isinstance(value, float) and math.isfinite(value):
        msg.number_value = value
    elif isinstance(value, Mapping):
        struct = msg.struct_value
        struct.SetInParent()
        fill_struct(struct, value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        values = msg.list_value
        values.SetInParent()
        add = values.values.add
        for item in value:
            set_value(add(), item)
    else:  # Enum, datetime, exception, non-finite float, object with to_dict, ...
        set_value(msg, plain(value))


def fill_struct(struct: struct_pb2.Struct, data: Mapping[Any, Any]) -> None:
    """Add ``data``'s entries to ``struct`` (keys as strings)."""
    fields = struct.fields
    for key, value in data.items():
        set_value(fields[key if isinstance(key, str) else str(key)], value)


def from_value(msg: struct_pb2.Value) -> Any:
    """The Python value of ``msg`` (integral numbers as ``int``; unset means None)."""
    kind = msg.WhichOneof("kind")
    if kind == "string_value":
        return msg.string_value
    if kind == "number_value":
        number = msg.number_value
        return int(number) if number.is_integer() and abs(number) <= MAX_SAFE_INT else number
    if kind == "bool_value":
        return msg.bool_value
    if kind == "struct_value":
        return {k: from_value(v) for k, v in msg.struct_value.fields.items()}
    if kind == "list_value":
        return [from_value(v) for v in msg.list_value.values]
    return None  # null_value, or no value at all


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {k: from_value(v) for k, v in struct.fields.items()}
