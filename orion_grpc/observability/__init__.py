"""Observability: OpenTelemetry tracing (``orion_grpc.observability.tracing``).

Nothing here is imported by the engine: the engine exposes ``TracerHooks`` and the server and
the device daemon install the OpenTelemetry implementation only when tracing is on.
"""

from .tracing import (
    OrionSpans,
    Tracing,
    TracingConfigError,
    TracingServerInterceptor,
    exporters_from_env,
    format_trace_tree,
    parse_console_spans,
    span_to_dict,
)

__all__ = ["OrionSpans", "Tracing", "TracingConfigError", "TracingServerInterceptor",
           "exporters_from_env", "format_trace_tree", "parse_console_spans", "span_to_dict"]
