"""Latency of the REST API's read endpoints over a large history (see ``seed_history.py``).

The API runs in-process (Starlette's test client over the ASGI app, so no network and no
uvicorn in the figures, but routing, auth, validation, SQL and JSON all count). Each
endpoint is called ``--requests`` times after a warm-up; the table shows p50, p95 and max
in milliseconds, and flags p95 over the target (50 ms).

    python benchmarks/bench_api.py --url 'postgresql://postgres@127.0.0.1/test?schema=api_1m'
    python benchmarks/bench_api.py --url sqlite:////tmp/api_100k.db --json results.json

A viewer token is created for the run and revoked afterwards, so the figures include the
token check every real request pays.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from legato.api import create_app
from legato.client import Client, _encode_cursor
from legato.config import Settings
from legato.store import open_store, parse_url

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TARGET_MS = 50.0
API = "/api/v1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="a database seeded by seed_history.py")
    parser.add_argument("--requests", type=int, default=200, help="timed calls per endpoint")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    parser.add_argument("--only", help="comma-separated endpoint labels (substring match)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    parsed = parse_url(args.url)
    store = open_store(args.url)
    client = Client(store, Settings.from_env())
    rng = random.Random(1)
    total = int(store._read("SELECT COUNT(*) AS n FROM runs")[0]["n"])
    if total == 0:
        parser.error("no runs: seed the database with benchmarks/seed_history.py first")
    p = "%(v)s" if parsed.backend == "postgresql" else ":v"
    # Run ids to look up: spread over the whole history.
    span = store._read("SELECT MIN(created_at) AS lo, MAX(created_at) AS hi FROM runs")[0]
    ids: list[str] = []
    for _ in range(200):
        at = rng.randint(span["lo"], span["hi"])
        rows = store._read(
            f"SELECT id FROM runs WHERE created_at >= {p} ORDER BY created_at LIMIT 1", {"v": at}
        )
        ids.extend(r["id"] for r in rows)
    failed = store._read(
        "SELECT id FROM runs WHERE status = 'failed' ORDER BY created_at DESC LIMIT 50"
    )
    ids.extend(r["id"] for r in failed)
    # A cursor halfway down the history (page ~total/100 of 50 runs, newest first).
    middle = store._read(
        f"SELECT id, created_at FROM runs ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET {p}",
        {"v": total // 2},
    )[0]
    deep_cursor = _encode_cursor("-created_at", middle["created_at"], middle["id"])
    flow_middle = store._read(
        f"SELECT id, created_at FROM runs WHERE flow = 'flow_03' "
        f"ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET {p}",
        {"v": total // 60},
    )
    flow_cursor = (
        _encode_cursor("-created_at", flow_middle[0]["created_at"], flow_middle[0]["id"])
        if flow_middle
        else None
    )
    finished_middle = store._read(
        f"SELECT id, finished_at FROM runs WHERE finished_at IS NOT NULL "
        f"ORDER BY finished_at DESC, id DESC LIMIT 1 OFFSET {p}",
        {"v": total // 2},
    )[0]
    finished_cursor = _encode_cursor(
        "-finished_at", finished_middle["finished_at"], finished_middle["id"]
    )

    token = client.create_token(f"bench-{int(time.time())}", "viewer")
    headers = {"Authorization": f"Bearer {token['token']}"}
    app = create_app(store, Settings.from_env())

    endpoints: list[tuple[str, Callable[[], str]]] = [
        ("runs: first page", lambda: f"{API}/runs?limit=50"),
        ("runs: flow filter", lambda: f"{API}/runs?flow=flow_{rng.randrange(20):02d}&limit=50"),
        (
            "runs: flow+status=failed",
            lambda: f"{API}/runs?flow=flow_{rng.randrange(20):02d}&status=failed",
        ),
        ("runs: status=failed", lambda: f"{API}/runs?status=failed&limit=50"),
        ("runs: queue=etl since 24h", lambda: f"{API}/runs?queue=etl&since=24h&limit=50"),
        ("runs: trigger=retry", lambda: f"{API}/runs?trigger=retry&limit=50"),
        ("runs: busy flow, running", lambda: f"{API}/runs?flow=flow_00&status=running"),
        ("runs: trigger=event (none)", lambda: f"{API}/runs?trigger=event&limit=50"),
        ("runs: unknown queue", lambda: f"{API}/runs?queue=nosuch&limit=50"),
        ("runs: queue+status", lambda: f"{API}/runs?queue=reports&status=cancelled&limit=50"),
        ("runs: subflows of a run", lambda: f"{API}/runs?parent_id={rng.choice(ids)}"),
        ("runs: deep keyset page", lambda: f"{API}/runs?limit=50&cursor={deep_cursor}"),
        ("runs: deep page, flow", lambda: f"{API}/runs?flow=flow_03&limit=50&cursor={flow_cursor}"),
        ("runs: by finished_at", lambda: f"{API}/runs?sort=-finished_at&limit=50"),
        (
            "runs: finished_at deep",
            lambda: f"{API}/runs?sort=-finished_at&limit=50&cursor={finished_cursor}",
        ),
        ("runs: finished, rare flow", lambda: f"{API}/runs?sort=-finished_at&flow=flow_19"),
        ("runs: finished, no match", lambda: f"{API}/runs?sort=-finished_at&queue=nosuch"),
        ("runs: window a week ago", lambda: f"{API}/runs?since=8d&until=7d&status=failed"),
        ("runs: oldest first", lambda: f"{API}/runs?sort=created_at&limit=50"),
        ("run detail", lambda: f"{API}/runs/{rng.choice(ids)}"),
        ("run logs", lambda: f"{API}/runs/{rng.choice(ids)}/logs"),
        ("stats 5m", lambda: f"{API}/stats?since=5m"),
        ("stats 1h", lambda: f"{API}/stats?since=1h"),
        ("stats 24h", lambda: f"{API}/stats?since=24h"),
        ("stats 24h, one flow", lambda: f"{API}/stats?since=24h&flow=flow_00"),
        ("stats series 24h", lambda: f"{API}/stats/series?since=24h"),
        ("flows", lambda: f"{API}/flows"),
        ("queues", lambda: f"{API}/queues"),
        ("metrics", lambda: "/metrics"),
    ]
    if flow_cursor is None:
        endpoints = [e for e in endpoints if e[0] != "runs: deep page, flow"]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        endpoints = [e for e in endpoints if any(w in e[0] for w in wanted)]

    log(f"{parsed.redacted()}: {total:,} runs; {args.requests} calls per endpoint")
    results: list[dict[str, Any]] = []
    try:
        with TestClient(app) as http:
            for label, make_path in endpoints:
                for _ in range(args.warmup):
                    response = http.get(make_path(), headers=headers)
                    assert response.status_code == 200, (label, response.text[:300])
                times = []
                for _ in range(args.requests):
                    path = make_path()
                    t0 = time.perf_counter()
                    response = http.get(path, headers=headers)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200, (label, response.text[:300])
                p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
                results.append(
                    {
                        "endpoint": label,
                        "p50_ms": round(p50, 2),
                        "p95_ms": round(p95, 2),
                        "max_ms": round(max(times), 2),
                        "mean_ms": round(statistics.fmean(times), 2),
                    }
                )
                log(f"{label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    finally:
        client.revoke_token(token["id"])
        store.close()

    print(f"\n{parsed.backend}, {total:,} runs, {args.requests} calls each (ms)\n")
    print(f"| {'endpoint':<28} | {'p50':>7} | {'p95':>7} | {'max':>7} |   |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 9}|{'-' * 9}|---|")
    for r in results:
        flag = "!" if r["p95_ms"] > TARGET_MS else ""
        print(
            f"| {r['endpoint']:<28} | {r['p50_ms']:>7.1f} | {r['p95_ms']:>7.1f} | "
            f"{r['max_ms']:>7.1f} | {flag:1} |"
        )
    print(f"\n! = p95 over the {TARGET_MS:g} ms target")
    if args.json:
        args.json.write_text(
            json.dumps({"backend": parsed.backend, "runs": total, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
