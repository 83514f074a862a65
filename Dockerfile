# syntax=docker/dockerfile:1
# Orion server image. Build: docker build -t orion .   Run: docker run -p 50051:50051 orion
# Configuration is by ORION_* environment variables (docs/operations.md, `orion serve --help`).
# tests/test_dockerfile.py checks this file and runs its install and entry-point steps as
# plain commands (no Docker engine in CI).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/orion
COPY pyproject.toml README.md ./
COPY orion_grpc ./orion_grpc
# [otlp]: OTEL_TRACES_EXPORTER=otlp works in the container (tracing stays off by default).
RUN /opt/orion/bin/pip install --no-cache-dir ".[otlp]"

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin orion \
    && mkdir -p /data && chown orion /data
COPY --from=build /opt/orion /opt/orion
ENV PATH=/opt/orion/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORION_HOST=0.0.0.0 \
    ORION_PORT=50051 \
    ORION_STORE=/data/orion.db \
    ORION_METRICS_HOST=0.0.0.0
USER orion
WORKDIR /data
# Durable state — the SQLite store (orions, stars' states, event history, request ids) —
# lives here: keep the volume and a restarted container resumes every orion.
VOLUME ["/data"]
# gRPC; and Prometheus metrics once ORION_METRICS_PORT=9464 is set (off by default).
# Logs are JSON lines on stderr (no terminal); --log-format / ORION_LOG_FORMAT changes that.
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "orion_grpc.healthcheck"]
ENTRYPOINT ["orion"]
CMD ["serve"]
