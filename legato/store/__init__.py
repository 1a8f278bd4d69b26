"""Storage backends behind one interface (:class:`~legato.store.base.Store`)."""

from __future__ import annotations

from ..config import Settings
from .base import Store
from .records import TERMINAL, WAITING, ClaimedRun, FlowRecord, LogLine, NewRun, RunFilter
from .url import DatabaseURL, parse_url

__all__ = [
    "TERMINAL",
    "WAITING",
    "ClaimedRun",
    "DatabaseURL",
    "FlowRecord",
    "LogLine",
    "NewRun",
    "RunFilter",
    "Store",
    "open_store",
    "parse_url",
]


def open_store(
    url: str, *, migrate: bool = True, pool_size: int = 10, settings: Settings | None = None
) -> Store:
    """Open the store named by ``url`` and, unless told not to, bring its schema up to date.

    ``settings`` (default: from the environment) sets the connection timeouts.
    """
    parsed = parse_url(url)
    store: Store
    if parsed.backend == "sqlite":
        from .sqlite import SQLiteStore

        store = SQLiteStore(parsed, settings=settings)
    else:
        from .postgres import PostgresStore

        store = PostgresStore(parsed, pool_size=pool_size, settings=settings)
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
