"""Fixtures of the acceptance suite: real ``legato worker`` processes and the CLI.

Tests drive Legato only from outside: the CLI as a subprocess and worker subprocesses running
``tests/flows/acceptance.py``. To wait for a condition they poll the database through a
store opened in the test process (much cheaper than a CLI call per poll); what they assert is
read back through the CLI's ``--json`` output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.support import Cluster


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], Cluster]]:
    """``make_cluster(db_url)``: workers and polling on that database, cleaned up after."""
    clusters: list[Cluster] = []

    def make(db_url: str) -> Cluster:
        cluster = Cluster(db_url, tmp_path)
        clusters.append(cluster)
        return cluster

    yield make
    failed = getattr(request.node, "report_call", None)
    for cluster in clusters:
        if failed is not None and failed.failed:
            print(cluster.worker_logs())  # shown with the failure report
        cluster.close()


@pytest.fixture
def cluster(make_cluster: Callable[[str], Cluster], db_url: str) -> Cluster:
    """A cluster on the parametrized database (SQLite, then PostgreSQL)."""
    return make_cluster(db_url)


@pytest.fixture
def pg_cluster(make_cluster: Callable[[str], Cluster], pg_url: str) -> Cluster:
    """A cluster on PostgreSQL only."""
    return make_cluster(pg_url)
