"""Storage engines for the engine's ``Store`` interface (``orion_grpc.core.store``).

``open_store(path)`` opens the default engine, SQLite (stdlib ``sqlite3``; no server, no
setup): a file path, or ``:memory:`` for a store that lives as long as the process.
"""

from .sqlite import SQLiteStore, StoreError, StoreLockedError, open_store

__all__ = ["SQLiteStore", "StoreError", "StoreLockedError", "open_store"]
