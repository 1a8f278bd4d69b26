"""Flows used by the engine benchmarks (``bench_engine.py``, ``profile_engine.py``).

Workers load this file with ``legato worker benchmarks/bench_flows.py:app --db URL``; the
database comes from ``--db`` or ``$LEGATO_DATABASE_URL`` like any other Legato app. The
benchmark driver builds its own :class:`App` per database with :func:`make_app`, so one
process can talk to several fresh databases in turn.
"""

from __future__ import annotations

from typing import Any

from legato import App


def make_app(database_url: str | None = None) -> App:
    """A fresh :class:`App` with the benchmark flows registered on it."""
    bench = App(database_url)

    @bench.step
    def nop_step(i: int) -> int:
        """A step that does nothing: what remains is the cost of its checkpoint."""
        return i

    @bench.flow
    def noop() -> None:
        """A run that does nothing: what remains is the engine's own cost per run."""
        return None

    @bench.flow
    def steps(n: int = 20) -> int:
        """``n`` no-op steps in a row (``n=0`` is the baseline of the checkpoint benchmark)."""
        for i in range(n):
            nop_step(i)
        return n

    return bench


app = make_app()

FLOWS: dict[str, Any] = app.flows
