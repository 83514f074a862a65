"""``python -m orion_grpc.healthcheck``: exit 0 if the server on this machine is SERVING.

The container's ``HEALTHCHECK``. It asks the standard gRPC health service
(``grpc.health.v1.Health/Check``, which needs no token) at ``127.0.0.1:$ORION_PORT`` (default
50051), with the TLS settings of the environment: ``ORION_CA`` when the server has
``ORION_TLS_CERT`` (and ``ORION_SERVER_NAME`` if its certificate does not name 127.0.0.1),
``ORION_CERT`` / ``ORION_KEY`` too for mutual TLS. Exit 1 when the server is not serving or
does not answer within 3 seconds.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .transport import ChannelSecurity


def check(target: str, security: ChannelSecurity, timeout: float = 3.0) -> bool:
    credentials = security.credentials()
    options = security.options()
    channel = grpc.secure_channel(target, credentials, options=options) if credentials \
        else grpc.insecure_channel(target, options=options)
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> int:
    target = f"127.0.0.1:{os.environ.get('ORION_PORT', '50051')}"
    try:
        security = ChannelSecurity.from_env()
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    return 0 if check(target, security) else 1


if __name__ == "__main__":
    sys.exit(main())
