"""Small pieces the servicers share: idempotency keys and opaque page tokens."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from ..core import Violation
from ..core.journal import Journal
from .errors import ApiError

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


# ---------------------------------------------------------------------- idempotency
@dataclass
class _Entry:
    fingerprint: bytes
    future: asyncio.Future[Any]
    created: float


def _fingerprint(request: Message) -> bytes:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")  # type: ignore[arg-type]
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def _encode_answer(answer: Any) -> dict[str, Any] | None:
    if isinstance(answer, str):
        return {"kind": "text", "value": answer}
    if isinstance(answer, Message):
        return {"kind": "message", "type": answer.DESCRIPTOR.full_name,
                "data": base64.b64encode(answer.SerializeToString()).decode()}
    return None  # not storable: remembered by this process only


def _decode_answer(record: dict[str, Any]) -> Any:
    if record["kind"] == "text":
        return record["value"]
    cls = message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(record["type"]))
    return cls.FromString(base64.b64decode(record["data"]))


class IdempotencyCache:
    """Remembers the answer to each (method, request_id) for a while.

    A retry with the same id gets the first answer (or waits for it while the first call is
    still running) instead of acting twice; the same id with a *different* request is refused
    (INVALID_ARGUMENT, REQUEST_ID_REUSED). Only successes are remembered: after an error a retry
    runs again. Bounded by ``max_entries`` (oldest evicted) and ``ttl`` seconds.

    With a ``journal`` the answers are durable: each is journaled in the same loop step as
    the change that produced it (so a restart never finds the change without its answer, or
    the reverse), every answer is sent only once it is committed — with or without a
    request_id: "persisted before acknowledged" — and ``records`` (from the store) bring them
    back after a restart.
    """

    def __init__(self, max_entries: int = 4096, ttl: float = 3600.0, *,
                 journal: Journal | None = None,
                 records: Iterable[tuple[str, str, dict[str, Any]]] = ()) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.journal = journal
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._stored = 0
        now, wall = time.monotonic(), time.time()
        for method, request_id, record in records:
            age = wall - float(record.get("created", 0.0))
            if age > ttl or "answer" not in record:
                continue
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(_decode_answer(record["answer"]))
            self._entries[(method, request_id)] = _Entry(bytes.fromhex(record["fingerprint"]),
                                                         future, now - age)
        while len(self._entries) > max_entries:
            self._entries.popitem(last=False)

    async def _durable(self) -> None:
        if self.journal is not None:
            await self.journal.barrier()

    def _store(self, method: str, request_id: str, fingerprint: bytes, answer: Any) -> None:
        journal = self.journal
        encoded = _encode_answer(answer)
        if journal is None or encoded is None:
            return
        created = time.time()
        journal.request(method, request_id, {"fingerprint": fingerprint.hex(),
                                             "created": created, "answer": encoded})
        self._stored += 1
        if self._stored % 256 == 0:
            journal.trim_requests(created - self.ttl)

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, method: str, request: Message, produce: Callable[[], Awaitable[T]]) -> T:
        request_id: str = getattr(request, "request_id", "")
        if not request_id:
            answer = await produce()
            await self._durable()
            return answer
        key = (method, request_id)
        fingerprint = _fingerprint(request)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and now - entry.created > self.ttl:
            del self._entries[key]
            entry = None
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request_id {request_id!r} was already used for a different {method} "
                    "request; use a new request_id for a new request", "REQUEST_ID_REUSED",
                    [Violation("request_id", "already used for a different request",
                               "REQUEST_ID_REUSED")], {"request_id": request_id})
            answer = await asyncio.shield(entry.future)
            await self._durable()
            return answer  # type: ignore[no-any-return]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._entries[key] = _Entry(fingerprint, future, now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        try:
            result = await produce()
        except BaseException as exc:
            if self._entries.get(key) is not None and self._entries[key].future is future:
                del self._entries[key]
            if isinstance(exc, asyncio.CancelledError):
                exc = ApiError(grpc.StatusCode.ABORTED,
                               f"the first request with request_id {request_id!r} was cancelled "
                               "before it finished; retry it", "REQUEST_CANCELLED")
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        if not future.done():
            future.set_result(result)
        self._store(method, request_id, fingerprint, result)  # same loop step as the change
        await self._durable()
        return result


# ---------------------------------------------------------------------- pagination
def _bad_token(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_PAGE_TOKEN",
                    [Violation("page_token", message, "INVALID_PAGE_TOKEN")])


def _filter_key(filter_key: str) -> str:
    return hashlib.sha256(filter_key.encode()).hexdigest()[:12]


def encode_page_token(kind: str, index: int, last_id: str, filter_key: str = "") -> str:
    raw = json.dumps({"k": kind, "i": index, "a": last_id, "f": _filter_key(filter_key)},
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, kind: str, filter_key: str = "") -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        index, last_id = int(data["i"]), str(data["a"])
        token_kind, token_filter = data["k"], data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise _bad_token("page_token is not a token this server issued; pass the "
                         "next_page_token of the previous response unchanged") from exc
    if token_kind != kind:
        raise _bad_token(f"page_token belongs to another list ({token_kind}), not {kind}")
    if token_filter != _filter_key(filter_key):
        raise _bad_token("page_token was issued for a request with different filters; "
                         "keep the filters unchanged while paging")
    if index < 0:
        raise _bad_token("page_token is corrupt")
    return index, last_id


def page_size_of(requested: int) -> int:
    """AIP-158: 0 = default; above the maximum = the maximum; negative = an error."""
    if requested < 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative",
                       "INVALID_PAGE_SIZE", [Violation("page_size", "must be >= 0",
                                                       "INVALID_PAGE_SIZE")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def paginate(items: Sequence[T], key: Callable[[T], str], page_size: int, page_token: str,
             kind: str, filter_key: str = "") -> tuple[list[T], str]:
    """One page of ``items`` (a stable order) and the next token ("" on the last page).

    The token remembers the last id returned and its position: if items before it were
    removed meanwhile, the next page still starts right after that id.
    """
    size = page_size_of(page_size)
    start = 0
    if page_token:
        index, last_id = decode_page_token(page_token, kind, filter_key)
        start = min(index + 1, len(items))
        if not (0 <= index < len(items) and key(items[index]) == last_id):
            ids = [key(item) for item in items]
            if last_id in ids:
                start = ids.index(last_id) + 1
    page = list(items[start:start + size])
    end = start + len(page)
    next_token = ""
    if end < len(items) and page:
        next_token = encode_page_token(kind, end - 1, key(page[-1]), filter_key)
    return page, next_token
