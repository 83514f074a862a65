"""The server's gate: one interceptor that every call passes before its handler runs.

In order, for each call it

0. authenticates the caller and checks its role (``auth.Authenticator``: UNAUTHENTICATED /
   PERMISSION_DENIED), and makes it ``auth.current_principal()`` for the handler — before
   anything of the request is looked at;
1. reads the request leniently: bytes that are not a valid message (a string that is not
   UTF-8, messages nested beyond protobuf's depth limit) end the call with INVALID_ARGUMENT,
   reason ``MALFORMED_REQUEST``, instead of grpc's bare ``UNKNOWN`` "Exception
   deserializing request";
2. checks the JSON values the request carries (``limits.json_problems``: INVALID_ARGUMENT,
   reason ``INVALID_JSON``, one violation each);
3. holds a stream slot for streaming calls (``limits.StreamSlots``; RESOURCE_EXHAUSTED,
   ``TOO_MANY_STREAMS``) until the stream ends.

Requests of client-streaming calls (DeviceService.Connect) are read by their handler, message
by message; they keep grpc's own decoding. Errors carry ErrorInfo like every other status
(``errors.build_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from .auth import Authenticator, Principal, method_role, set_current_principal
from .errors import ApiError, abort, abort_with, build_status
from .handlers import behavior_of
from .limits import StreamSlots, json_problems

logger = logging.getLogger(__name__)

_DRAIN_SECONDS = 1.0  # how long a refused client stream may take to send its first message

class Undecodable:
    """What the lenient deserializer hands on instead of a request it could not parse."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error

    def status(self) -> Any:
        text = str(self.error)
        if "UTF-8" in text:
            problem, hint = "a string field holds bytes that are not UTF-8", \
                "protobuf strings must be valid UTF-8; send binary data base64-encoded"
        elif "MaxDepth" in text or "recursion" in text.lower():
            problem, hint = "messages are nested too deeply", \
                "protobuf parsers stop at 100 nested messages; keep JSON values shallow"
        else:
            problem, hint = "the bytes do not parse", \
                "check that client and server use the same orion.v1 protos"
        return build_status(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid {self.type_name}: {problem} ({hint})",
                            "MALFORMED_REQUEST", metadata={"message_type": self.type_name})


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request message")

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, RecursionError, ...: the caller's bytes
            return Undecodable(type_name, exc)
    return decode


def peer_host(peer: str) -> str:
    """The address part of a grpc peer string (``ipv4:10.0.0.7:53412`` -> ``10.0.0.7``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0] if ":" in rest else rest
    return peer or "unknown"


async def _refuse(context: grpc.aio.ServicerContext, exc: ApiError,
                  streaming_request: bool) -> None:
    """End the call with ``exc``'s status. Ending a client stream before reading any of it
    races with the client's first write: about one refusal in ten then reached the client as
    INTERNAL ("Internal error from Core") instead of its status. So take (and drop) the first
    message of a client stream first — briefly: a refused caller holds nothing for long."""
    if streaming_request:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(context.read(), _DRAIN_SECONDS)
    await abort(context, exc)


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring. A stream slot is counted for the caller's credential (its
    ``Principal.key``), else for the peer's address."""

    def __init__(self, slots: StreamSlots, authenticator: Authenticator | None = None) -> None:
        self.slots = slots
        self.authenticator = authenticator or Authenticator()

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]  # unknown method: UNIMPLEMENTED
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        found = behavior_of(handler)
        if found is None:
            return handler
        kind, behavior, build = found
        unary_request = kind.startswith("unary")
        wrapped = self._wrap(method, behavior, unary_request, kind.endswith("stream"))
        if wrapped is None:  # a synchronous handler: it cannot be guarded
            if self.authenticator.required and method_role(method) is not None:
                logger.error("%s has a synchronous handler, which would bypass "
                             "authentication: refused (UNIMPLEMENTED)", method)
                return None  # type: ignore[return-value]
            return handler
        deserializer = handler.request_deserializer
        return build(wrapped,  # type: ignore[no-any-return]
                     request_deserializer=_lenient(deserializer) if unary_request
                     else deserializer,
                     response_serializer=handler.response_serializer)

    async def _authenticate(self, method: str, context: grpc.aio.ServicerContext,
                            streaming_request: bool = False) -> Principal | None:
        """Who calls (set as ``current_principal()`` for the handler); aborts the call with
        UNAUTHENTICATED / PERMISSION_DENIED if they may not call ``method``."""
        authenticator = self.authenticator
        if not authenticator.required and not authenticator.device_certificates:
            set_current_principal(None)
            return None  # the default: nothing to check, nothing to read
        try:
            principal = authenticator.authenticate(
                method, context.invocation_metadata(),
                context.auth_context() if authenticator.device_certificates else None)
        except ApiError as exc:
            await _refuse(context, exc, streaming_request)
        set_current_principal(principal)
        return principal

    async def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, Undecodable):
            await abort_with(context, request.status())
        if isinstance(request, Message):
            problems = json_problems(request)
            if problems:
                await abort_with(context, build_status(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request carries {len(problems)} JSON value(s) that are not valid: "
                    + "; ".join(f"{v.field}: {v.description}" for v in problems[:5]),
                    "INVALID_JSON", problems))

    async def _take_slot(self, principal: Principal | None, context: grpc.aio.ServicerContext,
                         streaming_request: bool) -> str:
        client = principal.key if principal is not None else peer_host(context.peer() or "")
        try:
            self.slots.acquire(client)
        except ApiError as exc:
            await _refuse(context, exc, streaming_request)
        return client

    def _wrap(self, method: str, behavior: Callable[..., Any], unary_request: bool,
              streaming: bool) -> Callable[..., Any] | None:
        slots, admit, take_slot = self.slots, self._admit, self._take_slot
        authenticate = self._authenticate

        if inspect.isasyncgenfunction(behavior):
            async def stream(request: Any, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[Any]:
                principal = await authenticate(method, context, not unary_request)
                if unary_request:
                    await admit(request, context)
                client = await take_slot(principal, context, not unary_request)
                responses = behavior(request, context)
                try:
                    async for response in responses:
                        yield response
                finally:
                    slots.release(client)
                    await responses.aclose()  # closed early by grpc: close the handler too
            return stream

        if inspect.iscoroutinefunction(behavior):
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                principal = await authenticate(method, context, not unary_request)
                if unary_request:
                    await admit(request, context)
                if not streaming:
                    return await behavior(request, context)
                client = await take_slot(principal, context, not unary_request)
                try:
                    return await behavior(request, context)
                finally:
                    slots.release(client)
            return call
        return None
