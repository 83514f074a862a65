"""Fault tests: real ``orion serve`` and ``orion device`` processes, real gRPC over loopback,
and faults injected from outside — signals, a TCP proxy that breaks the network
(net_proxy.py), a skewed clock. Helpers shared with the e2e tests live in
tests/e2e/e2e_support.py; what only faults need, in fault_support.py."""

from __future__ import annotations

import sys
from pathlib import Path

_E2E = str(Path(__file__).resolve().parents[1] / "e2e")
if _E2E not in sys.path:
    sys.path.insert(0, _E2E)
