"""Who is calling, and what they may call: tokens, client certificates, roles.

Two roles:

* **client** — every service except DeviceService (Orchestrator, Manager, Synchronizer,
  Event, reflection);
* **device** — DeviceService only, and only as the device id its credential names (checked
  against ``hello.device_id`` by the DeviceService, through ``current_principal()``).

Health (``grpc.health.v1.Health``) is open: load balancers and orchestrators probe it without
credentials, and it reveals nothing but "serving".

Credentials:

* bearer tokens, sent as ``authorization: Bearer <token>`` metadata, from a tokens file
  and/or ``--client-tokens`` / ``--device-tokens`` (``Tokens.load``). Only their SHA-256
  digests are kept; a presented token is compared with ``hmac.compare_digest`` against every
  entry, so the time taken says nothing about which entry matched or how much of it. Tokens
  are never logged and never echoed in an error.
* with mutual TLS (``--tls-client-ca``), a verified client certificate names a device: its
  subject common name (or, without one, its first subject alternative name) is the device id.

Authentication is required as soon as the server has a token. Without tokens every RPC is
open (the default: a loopback server for one user) — except that a device presenting a client
certificate may still only connect as the device its certificate names.

Refusals: UNAUTHENTICATED (``MISSING_CREDENTIALS``, ``INVALID_TOKEN``) when the caller is not
known, PERMISSION_DENIED (``WRONG_ROLE``, ``DEVICE_ID_MISMATCH``) when it is known but may
not do this.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ..core.spec import id_problem
from .errors import ApiError

CLIENT, DEVICE = "client", "device"
ROLES = (CLIENT, DEVICE)
MIN_TOKEN_LENGTH = 16
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class SecurityConfigError(ValueError):
    """The TLS or token configuration is unusable (the server refuses to start)."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``name`` labels it in logs and per-client limits; it is never
    the token."""

    role: str
    name: str
    device_id: str = ""

    @property
    def key(self) -> str:
        return f"{self.role}:{self.name}"


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "orion_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled (None when authentication is off)."""
    return _CURRENT.get()


def set_current_principal(principal: Principal | None) -> None:
    _CURRENT.set(principal)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# ---------------------------------------------------------------------- the token table
class Tokens:
    """Token digests and whom they stand for."""

    def __init__(self, entries: Iterable[tuple[bytes, Principal]] = ()) -> None:
        self._entries = list(entries)
        seen: set[bytes] = set()
        for token_digest, principal in self._entries:
            if token_digest in seen:
                raise SecurityConfigError(f"the same token is given twice (second time for "
                                          f"{principal.role} {principal.name})")
            seen.add(token_digest)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        presented = digest(token)
        found = None
        for token_digest, principal in self._entries:  # no early exit: constant time
            if hmac.compare_digest(token_digest, presented):
                found = principal
        return found

    @classmethod
    def load(cls, tokens_file: str = "", client_tokens: str = "", device_tokens: str = ""
             ) -> Tokens:
        """The table from a tokens file, ``--client-tokens T1,T2`` and
        ``--device-tokens ID=T,ID2=T2``; SecurityConfigError says what is wrong (never which
        token)."""
        entries: list[tuple[bytes, Principal]] = []
        if tokens_file:
            entries.extend(_read_tokens_file(tokens_file))
        for i, token in enumerate(t.strip() for t in client_tokens.split(",") if t.strip()):
            entries.append((_checked(token, f"--client-tokens entry {i + 1}"),
                            Principal(CLIENT, f"client-token-{i + 1}")))
        for i, item in enumerate(t.strip() for t in device_tokens.split(",") if t.strip()):
            device_id, sep, token = item.partition("=")
            where = f"--device-tokens entry {i + 1}"
            if not sep or not device_id.strip():
                raise SecurityConfigError(f"{where}: expected DEVICE_ID=TOKEN")
            entries.append((_checked(token.strip(), where),
                            _device(device_id.strip(), where)))
        return cls(entries)


def _checked(token: str, where: str) -> bytes:
    if len(token) < MIN_TOKEN_LENGTH:
        raise SecurityConfigError(f"{where}: a token must be at least {MIN_TOKEN_LENGTH} "
                                  "characters long (e.g. `python3 -c 'import secrets; "
                                  "print(secrets.token_urlsafe(32))'`)")
    return digest(token)


def _device(device_id: str, where: str) -> Principal:
    problem = id_problem(device_id)
    if problem is not None:
        raise SecurityConfigError(f"{where}: device_id {problem}")
    return Principal(DEVICE, device_id, device_id)


def _read_tokens_file(path: str) -> list[tuple[bytes, Principal]]:
    import yaml  # a dependency already (orion files); JSON is YAML too

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SecurityConfigError(f"tokens file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SecurityConfigError(f"tokens file {path}: not YAML or JSON ({exc})") from exc
    items = data.get("tokens") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        raise SecurityConfigError(f"tokens file {path}: expected a mapping with a 'tokens' "
                                  "list (see docs/operations.md, 'TLS and authentication')")
    entries = []
    for i, item in enumerate(items):
        where = f"tokens file {path}, tokens[{i}]"
        if not isinstance(item, Mapping):
            raise SecurityConfigError(f"{where}: expected a mapping")
        unknown = sorted(set(item) - {"token", "sha256", "role", "name", "device_id"})
        if unknown:
            raise SecurityConfigError(f"{where}: unknown key(s) {unknown}")
        role = item.get("role")
        if role not in ROLES:
            raise SecurityConfigError(f"{where}: role must be 'client' or 'device'")
        if ("token" in item) == ("sha256" in item):
            raise SecurityConfigError(f"{where}: give either 'token' or 'sha256' (its "
                                      "SHA-256, hex)")
        if "sha256" in item:
            hex_digest = str(item["sha256"])
            if not _HEX64.fullmatch(hex_digest):
                raise SecurityConfigError(f"{where}: sha256 must be 64 hex digits")
            token_digest = bytes.fromhex(hex_digest)
        else:
            token_digest = _checked(str(item["token"]), where)
        if role == DEVICE:
            if not item.get("device_id"):
                raise SecurityConfigError(f"{where}: a device token needs the device_id it "
                                          "may connect as")
            principal = _device(str(item["device_id"]), where)
            if item.get("name"):
                principal = Principal(DEVICE, str(item["name"]), principal.device_id)
        else:
            if item.get("device_id"):
                raise SecurityConfigError(f"{where}: a client token has no device_id")
            principal = Principal(CLIENT, str(item.get("name") or f"client-{i}"))
        entries.append((token_digest, principal))
    return entries


# ---------------------------------------------------------------------- deciding
def method_role(method: str) -> str | None:
    """The role a method needs (``/package.Service/Method``); None: open to anyone."""
    if method.startswith("/grpc.health.v1.Health/"):
        return None
    if method.startswith("/orion.v1.DeviceService/"):
        return DEVICE
    return CLIENT


def _unauthenticated(reason: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, message, reason)


def _denied(reason: str, message: str, metadata: Mapping[str, str] | None = None) -> ApiError:
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, message, reason, metadata=metadata)


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header (None without one)."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("INVALID_TOKEN", "the authorization metadata must be "
                                   "'Bearer <token>'")
        return token.strip()
    return None


def certificate_principal(auth_context: Mapping[str, Sequence[bytes]] | None
                          ) -> Principal | None:
    """The device a verified client certificate names (its CN, else its first SAN)."""
    context = auth_context or {}
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = context.get(key) or []
        if values:
            raw = values[0]
            name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            return Principal(DEVICE, name, name)
    return None


_HINTS = {
    CLIENT: "send 'authorization: Bearer <token>' metadata with a client token (orion "
            "commands: --token or ORION_TOKEN; OrionClient(token=...))",
    DEVICE: "send a device token as 'authorization: Bearer <token>' (orion device: --token or "
            "ORION_DEVICE_TOKEN) or, with mutual TLS, a client certificate naming the device",
}


class Authenticator:
    """Decides, for each call, who the caller is and whether it may call the method."""

    def __init__(self, tokens: Tokens | None = None, device_certificates: bool = False) -> None:
        self.tokens = tokens or Tokens()
        self.device_certificates = device_certificates

    @property
    def required(self) -> bool:
        return len(self.tokens) > 0

    def authenticate(self, method: str, metadata: Sequence[tuple[str, Any]] | None,
                     auth_context: Mapping[str, Sequence[bytes]] | None) -> Principal | None:
        """The caller of ``method``; ApiError (UNAUTHENTICATED / PERMISSION_DENIED) if it may
        not call it."""
        role = method_role(method)
        if role is None:
            return None
        principal = None
        token = bearer_token(metadata) if self.required else None
        if token is not None:
            principal = self.tokens.lookup(token)
            if principal is None:
                raise _unauthenticated("INVALID_TOKEN", "the bearer token is not valid on this "
                                       f"server; {_HINTS[role]}")
        if principal is None and self.device_certificates:
            principal = certificate_principal(auth_context)
        if not self.required:
            # Nothing is required, but a certificate still binds a device to its id.
            return principal if principal is not None and role == DEVICE else None
        if principal is None:
            raise _unauthenticated("MISSING_CREDENTIALS", f"{method.lstrip('/')} needs "
                                   f"{role} credentials: {_HINTS[role]}")
        if principal.role != role:
            raise _denied("WRONG_ROLE", f"{principal.role} credentials ({principal.name}) "
                          f"cannot call {method.lstrip('/')}: it needs {role} credentials; "
                          f"{_HINTS[role]}", {"role": principal.role, "required_role": role})
        return principal


def check_device_id(principal: Principal | None, device_id: str) -> None:
    """A device credential may only act as the device it names."""
    if principal is not None and principal.role == DEVICE and principal.device_id != device_id:
        raise _denied("DEVICE_ID_MISMATCH",
                      f"these credentials name device {principal.device_id}; they cannot "
                      f"connect as device {device_id} (run the daemon with --id "
                      f"{principal.device_id}, or use that device's own credentials)",
                      {"credential_device_id": principal.device_id, "device_id": device_id})
