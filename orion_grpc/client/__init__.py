"""Async Python client of an Orion server (``OrionClient``)."""

from .client import EditResult, OrionClient, RpcError, default_target, domain_error

__all__ = ["EditResult", "OrionClient", "RpcError", "default_target", "domain_error"]
