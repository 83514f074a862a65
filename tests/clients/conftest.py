"""Fixtures of the client tests: the TypeScript and Go clients built once per session, and a
fleet (a real ``orion serve`` process plus daemons) per test. Helpers: clients_support.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from clients_support import (
    GO_DIR,
    SERVER_FLAGS,
    TS_DIR,
    Fleet,
    ServerProcess,
    go_env,
    require,
    run_build,
)


@pytest.fixture(scope="session")
def ts_dist() -> Path:
    """clients/typescript compiled to dist/ (what ``npm run build`` does)."""
    require("node", "npm")
    if not (TS_DIR / "node_modules" / ".package-lock.json").is_file():
        run_build(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], TS_DIR)
    run_build(["npm", "run", "--silent", "build"], TS_DIR)
    return TS_DIR / "dist"


@pytest.fixture(scope="session")
def go_submit() -> Path:
    """The Go example, ``orion-submit``, built from clients/go as its README says."""
    require("go")
    run_build(["go", "build", "-o", "bin/orion-submit", "orion/cmd/orion-submit"], GO_DIR,
              go_env())
    return GO_DIR / "bin" / "orion-submit"


@pytest.fixture
async def fleet(ts_dist: Path) -> AsyncIterator[Fleet]:
    f = Fleet(ServerProcess(*SERVER_FLAGS), ts_dist)
    try:
        yield f
    finally:
        for child in f.children:
            await child.close()
        f.server.kill()
