"""Observability: OpenTelemetry tracing (``tracing``), metrics (``metrics``, served in the
Prometheus text format by ``prometheus``) and structured logs (``logs``).

Nothing here is imported by the engine: the engine exposes ``TracerHooks`` and the server and
the device daemon install the OpenTelemetry implementations only when asked to.
"""

from .hooks import chain_hooks
from .metrics import MetricsHooks, OrionMetrics
from .prometheus import MetricsEndpoint, PrometheusReader, render_text
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

__all__ = ["MetricsEndpoint", "MetricsHooks", "OrionMetrics", "OrionSpans", "PrometheusReader",
           "Tracing", "TracingConfigError", "TracingServerInterceptor", "chain_hooks",
           "exporters_from_env", "format_trace_tree", "parse_console_spans", "render_text",
           "span_to_dict"]
