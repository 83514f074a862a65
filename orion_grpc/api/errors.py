"""Domain errors -> gRPC statuses, in exactly one place.

Every handler is wrapped by ``@rpc_errors``. An ``OrionError`` (from the engine) or an
``ApiError`` (from this layer: bad page token, version conflict, expired resume token …) ends
the call with

* the status code of its category (``CODE_BY_CATEGORY``) or its own code,
* the message as the status details,
* a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer carrying an ``ErrorInfo``
  (reason, domain ``orion.v1``, metadata) and, when there are per-field problems, a
  ``BadRequest`` with one field violation per problem.

Clients decode it with ``grpc_status.rpc_status.from_call(call_or_error)``. Anything else is a
bug: it is logged with its traceback and reported as INTERNAL (reason ``INTERNAL``).
``asyncio.CancelledError`` (a BaseException) and ``grpc.aio.AbortError`` pass through untouched.

Trailers have a size limit (8 KiB by default on most clients), so a status with thousands of
violations keeps the first ones that fit and says how many were left out
(``ErrorInfo.metadata["violations_omitted"]``).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..core import ErrorCategory, OrionError, Violation

logger = logging.getLogger(__name__)

DOMAIN = "orion.v1"

CODE_BY_CATEGORY: dict[ErrorCategory, grpc.StatusCode] = {
    ErrorCategory.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCategory.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCategory.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCategory.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCategory.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCategory.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Serialized google.rpc.Status budget (it is base64-encoded into the trailer, x4/3).
STATUS_BYTES_BUDGET = 4096
MESSAGE_CHARS_BUDGET = 1024


class ApiError(Exception):
    """An error of the API layer itself, with an explicit status code."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str,
                 violations: Sequence[Violation] = (),
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.violations = list(violations)
        self.metadata = dict(metadata or {})


def status_code_for(exc: OrionError | ApiError) -> grpc.StatusCode:
    if isinstance(exc, ApiError):
        return exc.code
    return CODE_BY_CATEGORY.get(exc.category, grpc.StatusCode.UNKNOWN)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_status(code: grpc.StatusCode, message: str, reason: str,
                 violations: Sequence[Violation] = (),
                 metadata: Mapping[str, str] | None = None) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo (+ BadRequest), kept under the trailer budget."""
    message = _truncate(message, MESSAGE_CHARS_BUDGET)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    kept = list(violations)
    while True:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)
        extra = dict(meta)
        if len(kept) < len(violations):
            extra["violations_omitted"] = str(len(violations) - len(kept))
            extra["violations_total"] = str(len(violations))
        info.metadata.update(extra)
        status = status_pb2.Status(code=code.value[0], message=message)
        status.details.append(_pack(info))
        if kept:
            bad = error_details_pb2.BadRequest()
            for v in kept:
                bad.field_violations.add(field=v.field, description=_truncate(v.description, 400),
                                         reason=v.reason)
            status.details.append(_pack(bad))
        if status.ByteSize() <= STATUS_BYTES_BUDGET or not kept:
            return status
        kept = kept[: max(0, min(len(kept) - 1, len(kept) * 3 // 4))]


def status_for(exc: OrionError | ApiError) -> status_pb2.Status:
    return build_status(status_code_for(exc), exc.message, exc.reason, exc.violations,
                        exc.metadata)


def internal_status(exc: BaseException) -> status_pb2.Status:
    return build_status(grpc.StatusCode.INTERNAL,
                        f"internal error: {type(exc).__name__}: {exc}", "INTERNAL")


async def abort_with(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> NoReturn:
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


async def abort(context: grpc.aio.ServicerContext, exc: OrionError | ApiError) -> NoReturn:
    await abort_with(context, status_for(exc))


F = TypeVar("F", bound=Callable[..., Any])


def rpc_errors(handler: F) -> F:
    """Wrap a unary or server-streaming servicer method: domain errors become statuses."""
    if inspect.isasyncgenfunction(handler):
        @functools.wraps(handler)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[Any]:
            try:
                async for item in handler(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except (OrionError, ApiError) as exc:
                await abort(context, exc)
            except Exception as exc:
                logger.exception("unexpected error in %s", handler.__qualname__)
                await abort_with(context, internal_status(exc))
        return stream  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except (OrionError, ApiError) as exc:
            await abort(context, exc)
        except Exception as exc:
            logger.exception("unexpected error in %s", handler.__qualname__)
            await abort_with(context, internal_status(exc))
    return unary  # type: ignore[return-value]

