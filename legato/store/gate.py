"""The gated claim: runs subject to a limit, and runs of limited queues, admitted in the database.

Runs without limits in plain queues never come here: the ordinary claim (one statement)
takes them. Everything else — runs with ``limit_keys`` (flow, per-key and named concurrency
or rate limits) and every run of a *strict* or concurrency-limited queue — is admitted by
:func:`claim_gated`, inside one write transaction that is serialised across all workers
(``BEGIN IMMEDIATE`` on SQLite, a transaction-level advisory lock on PostgreSQL). Inside it:

1. read what holds limits now (running runs with limits or in limited queues), the limit
   sizes, the queue settings and the recent starts of rate-limited keys;
2. read candidates in claim order, page by page, leaving out groups of runs already known
   to be blocked (runs of one flow and key share the same ``limit_keys`` text);
3. admit candidates in order while every limit they are subject to has room (a strict queue
   stops at its first blocked run: FIFO), then claim the admitted ids in one statement.

Because the counts are read and the claims written under the same lock, two workers can
never both take the last slot of a limit.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Row, Store, Tx

PAGE = 64
MAX_PAGES = 8
MAX_EXCLUDED = 500

LimitKey = tuple[str, str]


def parse_limit_keys(text: str | None) -> tuple[LimitKey, ...]:
    """``[[name, key], ...]`` as stored in ``runs.limit_keys``."""
    if not text:
        return ()
    return _parse(text)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[LimitKey, ...]:
    return tuple((str(name), str(key)) for name, key in json.loads(text))


@dataclass
class QueueSettings:
    name: str
    paused: bool = False
    strict: bool = False
    concurrency: int | None = None

    @property
    def limited(self) -> bool:
        return self.strict or self.concurrency is not None

    @property
    def cap(self) -> int | None:
        """How many of its runs may run at once (``None``: no cap)."""
        if self.strict:
            return 1 if self.concurrency is None else min(1, self.concurrency)
        return self.concurrency


@dataclass
class LimitState:
    """Sizes and current use of every limit, as read in the claim transaction."""

    sizes: dict[str, Row] = field(default_factory=dict)
    held: Counter[LimitKey] = field(default_factory=Counter)
    started: Counter[LimitKey] = field(default_factory=Counter)
    queue_running: Counter[str] = field(default_factory=Counter)
    running_keys: set[str] = field(default_factory=set)  # distinct limit_keys texts running

    def blocked_by(self, keys: Sequence[LimitKey]) -> LimitKey | None:
        """The first limit of ``keys`` with no room left, if any."""
        for lk in keys:
            size = self.sizes.get(lk[0])
            if size is None:
                continue
            if size["concurrency"] is not None and self.held[lk] >= size["concurrency"]:
                return lk
            if size["rate"] is not None and self.started[lk] >= size["rate"]:
                return lk
        return None

    def take(self, keys: Sequence[LimitKey], queue: str) -> list[LimitKey]:
        """Count a start; returns the rate-limited keys whose start must be recorded."""
        rated = []
        for lk in keys:
            self.held[lk] += 1
            size = self.sizes.get(lk[0])
            if size is not None and size["rate"] is not None:
                self.started[lk] += 1
                rated.append(lk)
        self.queue_running[queue] += 1
        return rated


def read_state(store: Store, tx: Tx) -> tuple[dict[str, QueueSettings], LimitState]:
    """Queue settings and the state of every limit, in one query."""
    settings: dict[str, QueueSettings] = {}
    state = LimitState()
    for row in tx.read(store.sql("GATED_STATE")):
        kind = row["kind"]
        if kind == "running":
            for lk in parse_limit_keys(row["keys"]):
                state.held[lk] += 1
            state.queue_running[row["name"]] += 1
            if row["keys"] is not None:
                state.running_keys.add(row["keys"])
        elif kind == "limit":
            state.sizes[row["name"]] = {
                "concurrency": row["a"],
                "rate": row["b"],
                "period_ms": row["c"],
            }
        elif kind == "queue":
            settings[row["name"]] = QueueSettings(
                row["name"], bool(row["a"]), bool(row["b"]), row["c"]
            )
        else:  # "started"
            state.started[(row["name"], row["keys"])] = int(row["a"])
    return settings, state


def claim_gated(
    store: Store,
    worker_id: str,
    queues: Sequence[str],
    limit: int,
    lease_ms: int,
    executing: bool = False,
) -> list[Row]:
    """Admit and claim up to ``limit`` gated runs from ``queues``; returns the CLAIM rows."""
    if limit <= 0:
        return []
    # The first page of each queue's gated runs is read before taking the lock, to keep the
    # serialised part short. It may be stale: a run another worker claimed meanwhile is
    # counted as admitted here (conservative) and then not claimed (its status changed).
    early = {q: _candidates(store, _Reader(store), q, "1", None, set()) for q in queues}
    with store._gated_transaction() as tx:
        settings, state = read_state(store, tx)
        served = [q for q in queues if not (q in settings and settings[q].paused)]
        # Groups of runs (same limit_keys text) that cannot start now: skipped in SQL.
        excluded = {
            text
            for text in state.running_keys
            if state.blocked_by(parse_limit_keys(text)) is not None
        }
        admitted: list[str] = []
        rate_inserts: list[dict[str, Any]] = []
        for queue in served:
            qs = settings.get(queue)
            lanes = ["1", "0"] if qs is not None and qs.limited else ["1"]
            _admit_from_queue(
                store,
                tx,
                queue,
                qs,
                lanes,
                state,
                excluded,
                admitted,
                rate_inserts,
                limit,
                None if qs is not None and qs.limited else early.get(queue),
            )
            if len(admitted) >= limit:
                break
        if not admitted:
            return []
        params: dict[str, Any] = {
            "worker_id": worker_id,
            "lease_ms": lease_ms,
            "executing": int(executing),
        }
        pick = _listed(store, admitted, "c", params)
        rows = tx.read(store.sql("CLAIM_GATED", claim_pick=pick), params)
        claimed = {r["id"] for r in rows}
        inserts = [r for r in rate_inserts if r["run_id"] in claimed]
        if inserts:
            tx.write_many(store.sql("INSERT_RATE_START"), inserts)
        return rows


def _admit_from_queue(
    store: Store,
    tx: Tx,
    queue: str,
    qs: QueueSettings | None,
    lanes: list[str],
    state: LimitState,
    excluded: set[str],
    admitted: list[str],
    rate_inserts: list[dict[str, Any]],
    limit: int,
    first_page: list[Row] | None = None,
) -> None:
    cap = qs.cap if qs is not None else None
    strict = qs is not None and qs.strict
    after: tuple[int, int] | None = None
    for _ in range(MAX_PAGES):
        if cap is not None and state.queue_running[queue] >= cap:
            return
        candidates: list[Row] = []
        full = False
        for lane in lanes:
            if first_page is not None and after is None and lanes == ["1"]:
                rows = [r for r in first_page if r["limit_keys"] not in excluded]
                full = full or len(first_page) == PAGE
                candidates.extend(rows)
                continue
            # A strict queue reads every run: skipping a blocked group would let a later
            # run overtake the head.
            rows = _candidates(store, tx, queue, lane, after, set() if strict else excluded)
            full = full or len(rows) == PAGE
            candidates.extend(rows)
        if not candidates:
            return
        candidates.sort(key=lambda r: (r["claim_key"], r["seq"]))
        if len(lanes) > 1 and full:
            # Two lanes read a page each: only the part both cover is in true order.
            candidates = candidates[:PAGE]
        for row in candidates:
            after = (row["claim_key"], row["seq"])
            if cap is not None and state.queue_running[queue] >= cap:
                return
            keys = parse_limit_keys(row["limit_keys"])
            if state.blocked_by(keys) is not None:
                if strict:
                    return  # FIFO: nothing overtakes the head of a strict queue
                if row["limit_keys"] is not None and len(excluded) < MAX_EXCLUDED:
                    excluded.add(row["limit_keys"])
                continue
            for lk in state.take(keys, queue):
                rate_inserts.append({"name": lk[0], "key": lk[1], "run_id": row["id"]})
            admitted.append(row["id"])
            if len(admitted) >= limit:
                return
        if not full:
            return


def _candidates(
    store: Store,
    tx: Tx | _Reader,
    queue: str,
    lane: str,
    after: tuple[int, int] | None,
    excluded: set[str],
) -> list[Row]:
    params: dict[str, Any] = {"queue": queue, "limit": PAGE}
    after_sql = ""
    if after is not None:
        after_sql = f"AND ({_KEY} > :after_key OR ({_KEY} = :after_key AND {store.dialect.seq} > :after_seq))"
        params["after_key"], params["after_seq"] = after
    exclude_sql = ""
    if excluded and lane == "1":
        exclude_sql = f"AND limit_keys NOT IN ({_listed(store, sorted(excluded), 'x', params)})"
    sql = store.sql("GATED_CANDIDATES", gated=lane, after=after_sql, exclude=exclude_sql)
    return tx.read(sql, params)


_KEY = "claim_at"


class _Reader:
    """Reads outside any transaction (the store's own connection handling)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self.store._read(sql, params)


def _listed(store: Store, values: Sequence[str], name: str, params: dict[str, Any]) -> str:
    """The inside of ``IN (...)`` for ``values``: one array parameter on PostgreSQL (the same
    statement text whatever their number, so it is prepared once), else one per value."""
    if store.dialect.arrays:
        params[name] = list(values)
        return f"SELECT unnest(CAST(:{name} AS text[]))"
    for i, value in enumerate(values):
        params[f"{name}_{i}"] = value
    return ", ".join(f":{name}_{i}" for i in range(len(values)))
