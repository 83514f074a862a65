"""OpenTelemetry metrics in the Prometheus text format, over a tiny HTTP endpoint.

Hand-written instead of ``opentelemetry-exporter-prometheus``: that package is still a beta
(0.x) pinned to one SDK patch release (``opentelemetry-sdk~=1.45.2``), pulls in
``prometheus_client`` and registers into its process-global registry (two servers in one
process, as in the tests, would collide), and serves from a thread. What Orion needs is small:
a ``MetricReader`` that collects on demand, ~60 lines rendering counters, gauges and
histograms in text format 0.0.4, and an asyncio endpoint in the server's own event loop (so
the gauges' callbacks read the engine on its thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricReader,
    MetricsData,
    Sum,
)

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")


class PrometheusReader(MetricReader):
    """A pull reader: ``render()`` collects now and returns the Prometheus text."""

    def __init__(self) -> None:
        super().__init__()
        self._latest: MetricsData | None = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        self._latest = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._latest = None

    def render(self) -> str:
        self._latest = None
        self.collect()
        return render_text(self._latest)


# ---------------------------------------------------------------------- text format
def metric_name(name: str) -> str:
    name = _NAME_BAD.sub("_", name)
    return f"_{name}" if name[:1].isdigit() else name


def _escape_label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(attributes: Mapping[str, Any] | None, extra: tuple[str, str] | None = None) -> str:
    pairs = [(metric_name(k), _escape_label(v)) for k, v in sorted((attributes or {}).items())]
    if extra is not None:
        pairs.append(extra)
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}" if pairs else ""


def render_text(data: MetricsData | None) -> str:
    """Counters (monotonic sums, named ``…_total``), gauges (gauges and up-down sums) and
    explicit-bucket histograms; one ``# HELP`` / ``# TYPE`` per family."""
    lines: list[str] = []
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                lines.extend(_family(metric.name, metric.description or "", metric.data))
    return "\n".join(lines) + "\n" if lines else ""


def _family(raw_name: str, description: str, data: Any) -> list[str]:
    name = metric_name(raw_name)
    if isinstance(data, Sum) and data.is_monotonic:
        name = name if name.endswith("_total") else f"{name}_total"
        kind = "counter"
    elif isinstance(data, Sum | Gauge):
        kind = "gauge"
    elif isinstance(data, Histogram):
        kind = "histogram"
    else:  # exponential histograms: not configured by Orion
        return []
    lines = [f"# HELP {name} {_escape_help(description)}", f"# TYPE {name} {kind}"]
    for point in data.data_points:
        if kind != "histogram":
            lines.append(f"{name}{_labels(point.attributes)} {_number(point.value)}")
            continue
        cumulative = 0
        for bound, count in zip([*point.explicit_bounds, math.inf], point.bucket_counts,
                                strict=True):
            cumulative += count
            lines.append(f"{name}_bucket{_labels(point.attributes, ('le', _number(float(bound))))} "
                         f"{cumulative}")
        lines.append(f"{name}_sum{_labels(point.attributes)} {_number(point.sum)}")
        lines.append(f"{name}_count{_labels(point.attributes)} {point.count}")
    return lines


# ---------------------------------------------------------------------- HTTP endpoint
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.1 (one request per connection), in the running loop."""

    def __init__(self, render: Callable[[], str], host: str = "127.0.0.1", port: int = 0,
                 path: str = "/metrics") -> None:
        self.render = render
        self.host = host
        self.port = port
        self.path = path
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=16 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError):
                await self._reply(writer, 400, "bad request\n")
                return
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, "only GET and HEAD\n", head_only=False,
                                  extra="Allow: GET, HEAD\r\n")
            elif path == self.path:
                try:
                    body = self.render()
                except Exception:
                    logger.exception("rendering metrics failed")
                    await self._reply(writer, 500, "metrics failed; see the server log\n")
                    return
                await self._reply(writer, 200, body, head_only=method == "HEAD",
                                  content_type=CONTENT_TYPE)
            elif path == "/":
                await self._reply(writer, 200, f"Orion server metrics: {self.path}\n",
                                  head_only=method == "HEAD")
            else:
                await self._reply(writer, 404, f"not found; metrics are at {self.path}\n")
        except (ConnectionError, OSError):
            pass  # the scraper went away
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, body: str, *,
                     head_only: bool = False, content_type: str = "text/plain; charset=utf-8",
                     extra: str = "") -> None:
        data = body.encode("utf-8")
        writer.write((f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                      f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n"
                      ).encode("latin-1") + (b"" if head_only else data))
        await writer.drain()
