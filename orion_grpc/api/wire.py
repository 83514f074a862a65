"""Protobuf framing by hand, for the hot streams: encode a message once, send the bytes.

On the wire a message is the concatenation of its fields, and a message-typed field is
``tag, varint length, encoded message``. So "a ConnectResponse whose ``assignment`` is A" is
``field(2, A.SerializeToString())``, and a batch of such responses is
``field(6, field(1, r1) + field(1, r2) + ...)`` — no intermediate message objects, no copies.
The streams that send such bytes are registered with ``passthrough`` serializers, which leave
bytes alone and serialize messages as usual (so handlers may yield either).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TAGS = {n: varint(n << 3 | 2) for n in range(1, 64)}


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a message, bytes or string) ``number`` holding ``payload``."""
    tag = _TAGS.get(number) or varint(number << 3 | 2)
    return tag + varint(len(payload)) + payload


def passthrough(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A response serializer that sends pre-encoded ``bytes`` as they are."""
    def serializer(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serialize(message)
    return serializer
