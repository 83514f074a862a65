"""Server interceptors that wrap a method's behaviour (the guard, tracing) rebuild its
``RpcMethodHandler``: which of the four kinds it is, and the grpc builder for that kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

BUILDERS = (("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler))


def behavior_of(handler: grpc.RpcMethodHandler[Any, Any]
                ) -> tuple[str, Callable[..., Any], Callable[..., Any]] | None:
    """``(kind, behaviour, builder)`` of ``handler``, e.g. ``("unary_stream", the handler
    function, grpc.unary_stream_rpc_method_handler)``; None if it has no behaviour."""
    for kind, build in BUILDERS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return kind, behavior, build
    return None
