"""How a client or a device daemon reaches a server: TLS, a client certificate, a token.

``ChannelSecurity`` is what ``OrionClient`` and ``DeviceAgent`` dial with; the ``orion``
commands build it from ``--ca / --cert / --key / --tls / --token`` (``add_arguments``), each
with an environment fallback (``ORION_CA``, ``ORION_CERT``, ``ORION_KEY``, and
``ORION_TOKEN`` for clients, ``ORION_DEVICE_TOKEN`` for ``orion device``).

The token travels as ``authorization: Bearer <token>`` metadata on every call, added by a
client interceptor — on a TLS channel, or in plaintext (a server on loopback, or behind a
proxy that terminates TLS). With no setting at all the channel is plaintext and sends no
token: what a server on loopback without authentication (the default) expects.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

CLIENT_TOKEN_ENV, DEVICE_TOKEN_ENV = "ORION_TOKEN", "ORION_DEVICE_TOKEN"
# Every variable that sets TLS or credentials, for the server (ServerConfig) or a client.
SECURITY_ENV = frozenset({
    "ORION_TLS_CERT", "ORION_TLS_KEY", "ORION_TLS_CLIENT_CA", "ORION_TOKENS_FILE",
    "ORION_CLIENT_TOKENS", "ORION_DEVICE_TOKENS", "ORION_CA", "ORION_CERT", "ORION_KEY",
    "ORION_TLS", "ORION_SERVER_NAME", CLIENT_TOKEN_ENV, DEVICE_TOKEN_ENV})


class _Token:
    """Adds ``authorization: Bearer <token>`` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        metadata.add("authorization", f"Bearer {self._token}")
        return details._replace(metadata=metadata)  # type: ignore[attr-defined, no-any-return]


# grpc.aio files an interceptor object under one call kind only: one class per kind.
class _UnaryUnaryToken(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStreamToken(_Token, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamUnaryToken(_Token, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


class _StreamStreamToken(_Token, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


def token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send ``token`` with every call of a grpc.aio channel."""
    return [kind(token) for kind in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken,
                                     _StreamStreamToken)]


def read_pem(path: str, what: str, error: type[ValueError] = ValueError) -> bytes:
    """The bytes of a PEM file; ``error`` naming ``what`` (e.g. the flag) if unreadable."""
    try:
        with open(path, "rb") as pem:
            return pem.read()
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS and credentials of a channel to an Orion server.

    :param ca: PEM file of the CA that signed the server's certificate (TLS on).
    :param cert / key: this client's certificate and key, for mutual TLS (TLS on).
    :param tls: TLS with the system's trusted roots (a server with a public certificate).
    :param token: bearer token sent with every call (not in ``repr``).
    :param server_name: the name to check the server's certificate against, when it differs
        from the host dialled (e.g. dialling an IP address the certificate does not name).
    """

    ca: str = ""
    cert: str = ""
    key: str = ""
    tls: bool = False
    token: str = field(default="", repr=False)
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate needs its key: give both --cert and --key")

    @property
    def secure(self) -> bool:
        return bool(self.tls or self.ca or self.cert)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials (None: plaintext); ValueError if a file cannot be read."""
        if not self.secure:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, "--ca") if self.ca else None,
            private_key=read_pem(self.key, "--key") if self.key else None,
            certificate_chain=read_pem(self.cert, "--cert") if self.cert else None)

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return token_interceptors(self.token) if self.token else []

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = (),
                interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> grpc.aio.Channel:
        """A grpc.aio channel to ``target`` (create it inside the running event loop), with
        ``interceptors`` besides the token's."""
        all_options = [*options, *self.options()]
        credentials = self.credentials()
        chain = [*interceptors, *self.interceptors()] or None
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=all_options, interceptors=chain)
        return grpc.aio.secure_channel(target, credentials, options=all_options,
                                       interceptors=chain)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 token_env: str = CLIENT_TOKEN_ENV) -> ChannelSecurity:
        env = os.environ if env is None else env
        return cls(ca=env.get("ORION_CA", ""), cert=env.get("ORION_CERT", ""),
                   key=env.get("ORION_KEY", ""), tls=env.get("ORION_TLS", "") in ("1", "true"),
                   token=env.get(token_env, ""), server_name=env.get("ORION_SERVER_NAME", ""))

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None,
                  token_env: str = CLIENT_TOKEN_ENV) -> ChannelSecurity:
        """Flags (``add_arguments``) over the environment."""
        base = cls.from_env(env, token_env)
        return cls(ca=args.ca or base.ca, cert=args.cert or base.cert, key=args.key or base.key,
                   tls=bool(args.tls) or base.tls, token=args.token or base.token,
                   server_name=args.server_name or base.server_name)


def add_arguments(parser: argparse.ArgumentParser, token_env: str = CLIENT_TOKEN_ENV) -> None:
    """``--ca --cert --key --tls --server-name --token`` (each falls back to the environment)."""
    group = parser.add_argument_group("TLS and authentication (docs/operations.md)")
    group.add_argument("--ca", default=None, metavar="PEM",
                       help="CA certificate that signed the server's certificate: connect with "
                            "TLS (default $ORION_CA)")
    group.add_argument("--cert", default=None, metavar="PEM",
                       help="this client's (or device's) certificate, for mutual TLS "
                            "(default $ORION_CERT)")
    group.add_argument("--key", default=None, metavar="PEM",
                       help="key of --cert (default $ORION_KEY)")
    group.add_argument("--tls", action="store_true",
                       help="connect with TLS, trusting the system's CAs (ORION_TLS=1)")
    group.add_argument("--server-name", default=None, metavar="NAME",
                       help="name the server's certificate must carry, if not the host "
                            "dialled (default $ORION_SERVER_NAME)")
    group.add_argument("--token", default=None,
                       help=f"bearer token sent with every call (default ${token_env}; the "
                            "environment keeps it out of ps)")
