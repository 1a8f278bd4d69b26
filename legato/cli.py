"""The ``legato`` command line (SPEC §3).

Read commands take ``--json`` and then print exactly the SPEC's JSON on stdout. Bad input
ends with one ``error: …`` line on stderr and exit status 1, before anything is written.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from typer.exceptions import TyperException

from . import __version__
from .client import Client
from .config import Settings, database_url
from .errors import LegatoError
from .store import TERMINAL, Store, open_store
from .timeutil import parse_duration, parse_iso, to_ms

cli = typer.Typer(
    name="legato",
    help="Legato: define, execute and observe durable Python flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_cli = typer.Typer(help="List, inspect, cancel and retry runs.", no_args_is_help=True)
flows_cli = typer.Typer(help="Registered flows.", no_args_is_help=True)
workers_cli = typer.Typer(help="Workers.", no_args_is_help=True)
queues_cli = typer.Typer(help="Queues.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
schedules_cli = typer.Typer(
    help="Schedules: list, upcoming fires, pause, resume, backfill.", no_args_is_help=True
)
cli.add_typer(schedules_cli, name="schedules")
events_cli = typer.Typer(help="Events that start subscribed flows.", no_args_is_help=True)
cli.add_typer(events_cli, name="events")
cli.add_typer(runs_cli, name="runs")
cli.add_typer(flows_cli, name="flows")
cli.add_typer(workers_cli, name="workers")
cli.add_typer(queues_cli, name="queues")
cli.add_typer(db_cli, name="db")
tokens_cli = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
cli.add_typer(tokens_cli, name="tokens")
limits_cli = typer.Typer(
    help="Named concurrency and rate limits shared by flows.", no_args_is_help=True
)
cli.add_typer(limits_cli, name="limits")

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL [default: $LEGATO_DATABASE_URL, sqlite:///legato.db]"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON only.")]

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    "running": "cyan",
    "queued": "yellow",
    "scheduled": "blue",
    "retrying": "yellow",
    "sleeping": "blue",
}


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _fail(message: str) -> NoReturn:
    raise CliError(message)


def _store(db: str | None) -> Store:
    return open_store(database_url(db))


def _client(db: str | None) -> Client:
    return Client(_store(db), Settings.from_env())


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _styled(status: str | None) -> str:
    if status is None:
        return "-"
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _short_time(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else "-"


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _since_ms(client: Client, since: str) -> int:
    try:
        return client.store.now_ms() - int(parse_duration(since).total_seconds() * 1000)
    except ValueError:
        pass
    try:
        return to_ms(parse_iso(since))
    except ValueError:
        _fail(f"invalid --since {since!r}: use a duration (5m, 2h, 1d) or an ISO 8601 time")


def _parse_params(params: str | None, pairs: list[str], option: str = "--params") -> dict[str, Any]:
    values: dict[str, Any] = {}
    if params:
        try:
            decoded = json.loads(params)
        except json.JSONDecodeError as exc:
            _fail(f"invalid JSON in {option}: {exc.msg} at position {exc.pos}")
        if not isinstance(decoded, dict):
            _fail(f'{option} must be a JSON object, e.g. \'{{"day": "2026-11-24"}}\'')
        values.update(decoded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            _fail(f"invalid --param {pair!r}: use key=value")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


# -- worker -----------------------------------------------------------------------------------


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("legato")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _serve(app_spec: str, db: str | None, queues: list[str], concurrency: int) -> None:
    from .loader import load_app
    from .worker import Worker

    app = load_app(app_spec)
    if db:
        app.database_url = database_url(db)
    _configure_logging()
    Worker(app, queues=queues or ["default"], concurrency=concurrency).run()
    app.close()


@cli.command()
def worker(
    app: Annotated[str, typer.Argument(help="module:app or path/to/file.py[:app]")],
    queue: Annotated[
        list[str], typer.Option("--queue", "-q", help="Queue to serve (repeatable).")
    ] = [],  # noqa: B006
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Run slots.")] = 8,
    db: DbOption = None,
) -> None:
    """Run a worker: claims runs from its queues and executes them."""
    _serve(app, db, queue, concurrency)


InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Serve beyond loopback without any API token (anyone reaching it can act).",
    ),
]


@cli.command()
def up(
    app: Annotated[str, typer.Argument(help="module:app or path/to/file.py[:app]")],
    host: Annotated[str, typer.Option(help="API address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    queue: Annotated[list[str], typer.Option("--queue", "-q")] = [],  # noqa: B006
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 8,
    insecure: InsecureOption = False,
    db: DbOption = None,
) -> None:
    """Everything in one process: the worker, its scheduler, the REST API and the dashboard."""
    from .api import create_app
    from .api.server import ServerThread, make_server, require_auth
    from .loader import load_app
    from .worker import Worker

    application = load_app(app)
    if db:
        application.database_url = database_url(db)
    _configure_logging()
    store = application.store
    try:
        needs_auth = require_auth(Client(store, application.settings), host, insecure)
        api = create_app(store, application.settings, require_auth=needs_auth)
        server = ServerThread(make_server(api, host, port, log_level="warning"))
        server.start()
    except BaseException:
        application.close()
        raise
    base = f"http://{_url_host(host)}:{port}"
    console.print(f"Legato dashboard on {base}/")
    console.print(f"Legato API on {base}/api/v1 (docs: {base}/api/v1/docs)")
    try:
        Worker(application, queues=queue or ["default"], concurrency=concurrency).run()
    finally:
        server.stop()
        application.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@cli.command()
def server(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    insecure: InsecureOption = False,
    db: DbOption = None,
) -> None:
    """Serve the REST API (no flow code needed). Beyond loopback it requires API tokens."""
    from .api import create_app
    from .api.server import bind, make_server, require_auth

    _configure_logging()
    settings = Settings.from_env()
    store = _store(db)
    try:
        needs_auth = require_auth(Client(store, settings), host, insecure)
        api = create_app(store, settings, require_auth=needs_auth)
        sock = bind(host, port)
        base = f"http://{_url_host(host)}:{port}"
        console.print(f"Legato dashboard on {base}/")
        console.print(f"Legato API on {base}/api/v1 (docs: {base}/api/v1/docs)")
        make_server(api, host, port).run(sockets=[sock])
    finally:
        store.close()


# -- submit -----------------------------------------------------------------------------------


@cli.command()
def submit(
    flow: Annotated[str, typer.Argument(help="Flow name.")],
    params: Annotated[
        str | None, typer.Option("--params", help="Parameters as a JSON object.")
    ] = None,
    param: Annotated[
        list[str],
        typer.Option("--param", "-p", help="key=value (value parsed as JSON if it can be)."),
    ] = [],  # noqa: B006
    queue: Annotated[str | None, typer.Option(help="Queue override.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Start at this ISO 8601 time.")] = None,
    in_: Annotated[
        str | None, typer.Option("--in", help="Start after a delay: 30s, 10m, 2h.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Same key, same run.")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the run; exit 0 if it succeeded.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after N seconds.")
    ] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Create a run of FLOW and print its id."""
    values = _parse_params(params, param)
    if at and in_:
        _fail("use either --at or --in, not both")
    start = None
    delay = None
    if at:
        try:
            start = parse_iso(at)
        except ValueError as exc:
            _fail(str(exc))
    if in_:
        try:
            delay = parse_duration(in_).total_seconds()
        except ValueError as exc:
            _fail(str(exc))
    client = _client(db)
    run, _created = client.submit(
        flow,
        values,
        queue=queue,
        at=start,
        delay_seconds=delay,
        idempotency_key=idempotency_key,
        priority=priority,
    )
    if not wait:
        if as_json:
            _print_json(run)
        else:
            sys.stdout.write(run["id"] + "\n")
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.01
    while client.store.get_run_status(run["id"]) not in TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            _fail(f"run {run['id']} did not finish within {timeout:g}s")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)
    final = client.run(run["id"])
    if as_json:
        _print_json(final)
    else:
        console.print(f"{final['id']} {_styled(final['status'])}")
        if final["status"] == "failed":
            console.print(f"[red]{final['error']}[/]")
    raise typer.Exit(0 if final["status"] == "succeeded" else 1)


# -- runs ---------------------------------------------------------------------------------------


@runs_cli.command("list")
def runs_list(
    flow: Annotated[str | None, typer.Option(help="Only this flow.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Created within: 5m, 2h, 1d or ISO time.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most N runs.")] = 50,
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """List runs, newest first."""
    client = _client(db)
    since_ms = _since_ms(client, since) if since else None
    runs = client.runs(flow=flow, status=status, since_ms=since_ms, limit=limit, queue=queue)
    if as_json:
        _print_json(runs)
        return
    if not runs:
        console.print("no runs yet: submit one with [bold]legato submit FLOW[/]")
        return
    table = Table("id", "flow", "status", "attempts", "trigger", "created", "duration", "error")
    for r in runs:
        table.add_row(
            r["id"],
            r["flow"],
            _styled(r["status"]),
            f"{r['attempts']}/{r['max_attempts']}",
            r["trigger"],
            _short_time(r["created_at"]),
            _duration(r["duration_ms"]),
            (r["error"] or "")[:60],
        )
    console.print(table)


@runs_cli.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """One run with its steps, attempts, error and stack trace."""
    run = _client(db).run(run_id)
    if as_json:
        _print_json(run)
        return
    console.print(
        f"[bold]run {run['id']}[/]  flow [bold]{run['flow']}[/]  {_styled(run['status'])}"
    )
    for label, key in (
        ("params", "params"),
        ("result", "result"),
        ("trigger", "trigger"),
        ("queue", "queue"),
        ("worker", "worker"),
        ("parent", "parent_id"),
        ("created", "created_at"),
        ("scheduled for", "scheduled_for"),
        ("started", "started_at"),
        ("finished", "finished_at"),
    ):
        value = run[key]
        if value is not None:
            shown = json.dumps(value) if key in ("params", "result") else str(value)
            console.print(f"  {label:<14} {shown}", markup=False)
    console.print(
        f"  {'attempts':<14} {run['attempts']} of {run['max_attempts']}"
        + (f" ({run['recoveries']} recovered after a worker died)" if run["recoveries"] else "")
    )
    if run["duration_ms"] is not None:
        console.print(f"  {'duration':<14} {_duration(run['duration_ms'])}")
    if run.get("waiting"):
        console.print(f"  {'waiting':<14} {run['waiting']['message']}", markup=False)
        for other in run["waiting"]["reasons"][1:]:
            console.print(f"  {'':<14} also: {other['message']}", markup=False)
    if run["steps"]:
        table = Table("#", "step", "status", "attempts", "started", "duration", "error")
        for s in run["steps"]:
            dur = None
            if s["started_at"] and s["finished_at"]:
                dur = to_ms(parse_iso(s["finished_at"])) - to_ms(parse_iso(s["started_at"]))
            table.add_row(
                str(s["position"] + 1),
                s["name"],
                _styled(s["status"]),
                str(s["attempts"]),
                _short_time(s["started_at"]),
                _duration(dur),
                (s["error"] or "")[:60],
            )
        console.print(table)
    if run["error"]:
        where = f" in step {run['failed_step']!r}" if run["failed_step"] else ""
        console.print(f"[bold red]error{where}:[/] {run['error']}", markup=True)
        if run["traceback"]:
            console.print(run["traceback"].rstrip(), markup=False)


@runs_cli.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    db: DbOption = None,
) -> None:
    """Cancel a queued run at once, or a running run at its next step."""
    status = _client(db).cancel(run_id)
    if status == "cancelled":
        console.print(f"{run_id} cancelled")
    elif status == "running":
        console.print(f"{run_id} is running: it stops at its next step boundary")
    else:
        _fail(f"run {run_id} already ended ({status}); nothing to cancel")


@runs_cli.command("retry")
def runs_retry(
    run_id: Annotated[str, typer.Argument(help="Run id of a finished run.")],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Run a finished run again, as a new run with the same parameters."""
    run = _client(db).retry(run_id)
    if as_json:
        _print_json(run)
    else:
        sys.stdout.write(run["id"] + "\n")


# -- logs -----------------------------------------------------------------------------------------


@cli.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """The run's log lines (logging records and print output)."""
    client = _client(db)
    run_id = client.resolve_run(run_id)
    collected: list[dict[str, Any]] = []
    last = 0
    while True:
        ended = client.store.get_run_status(run_id) in TERMINAL
        lines = client.logs(run_id, after_id=last)
        for line in lines:
            last = line["id"]
            if as_json:
                collected.append(line)
            else:
                step = f" [{line['step']}]" if line["step"] else ""
                sys.stdout.write(
                    f"{line['ts']} {line['level']:<7} #{line['attempt']}{step} {line['message']}\n"
                )
        sys.stdout.flush()
        if not follow or (ended and not lines):
            break
        if not lines:
            time.sleep(0.2)
    if as_json:
        _print_json([{k: v for k, v in line.items() if k != "id"} for line in collected])


# -- flows --------------------------------------------------------------------------------------


@flows_cli.command("list")
def flows_list(as_json: JsonOption = False, db: DbOption = None) -> None:
    """Registered flows with their last status and next scheduled fire."""
    flows = _client(db).flows()
    if as_json:
        _print_json(flows)
        return
    if not flows:
        console.print("no flows yet: start a worker with [bold]legato worker path/to/app.py[/]")
        return
    table = Table(
        "flow",
        "queue",
        "version",
        "retries",
        "timeout",
        "last status",
        "last run",
        "next fire",
        "description",
    )
    for f in flows:
        last = f["last_run"]
        table.add_row(
            f["name"],
            f["queue"],
            f["version"] or "-",
            str(f["max_attempts"] - 1),
            f"{f['timeout']:g}s" if f["timeout"] else "-",
            _styled(f["last_status"]),
            _short_time(last["created_at"]) if last else "-",
            _short_time(f["next_fire_at"]) if f.get("next_fire_at") else "-",
            f["description"] or "",
        )
    console.print(table)


@flows_cli.command("show")
def flows_show(
    flow: Annotated[str, typer.Argument(help="Flow name.")],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """One flow with its options, parameters and recent runs."""
    detail = _client(db).flow_detail(flow)
    if as_json:
        _print_json(detail)
        return
    console.print(f"[bold]{detail['name']}[/]  {detail['description'] or ''}")
    console.print(
        f"  queue {detail['queue']}, priority {detail['priority']}, "
        f"attempts {detail['max_attempts']}, timeout {detail['timeout'] or '-'}"
    )
    params = ", ".join(
        p["name"] + ("" if p.get("required") else "=" + json.dumps(p.get("default")))
        for p in detail["parameters"]
    )
    console.print(f"  parameters ({params})", markup=False)
    if detail.get("flow_control"):
        control = {k: v for k, v in detail["flow_control"].items() if k != "flow"}
        console.print(f"  flow control {json.dumps(control)}", markup=False)
    for r in detail["recent_runs"]:
        console.print(f"  {r['id']} {_styled(r['status'])} {_short_time(r['created_at'])}")


# -- stats, workers, queues ---------------------------------------------------------------------


@cli.command()
def stats(
    since: Annotated[str, typer.Option(help="Window: 5m, 1h, 1d or an ISO time.")] = "5m",
    flow: Annotated[str | None, typer.Option(help="Only this flow.")] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Runs by status: finished within the window, and active now."""
    client = _client(db)
    result = client.stats(_since_ms(client, since), flow)
    if as_json:
        _print_json(result)
        return
    console.print(f"since {result['since']} until {result['until']}")
    table = Table("flow", *STATUS_STYLE)
    rows = dict(result["by_flow"])
    rows["[bold]all[/]"] = result["counts"]
    for name, counts in rows.items():
        table.add_row(name, *(str(counts.get(s, 0)) for s in STATUS_STYLE))
    console.print(table)


@workers_cli.command("list")
def workers_list(as_json: JsonOption = False, db: DbOption = None) -> None:
    """Workers with their queues, slots, running runs and last heartbeat."""
    workers = _client(db).workers()
    if as_json:
        _print_json(workers)
        return
    if not workers:
        console.print("no workers: start one with [bold]legato worker path/to/app.py[/]")
        return
    table = Table("worker", "alive", "queues", "running", "slots", "last heartbeat", "started")
    for w in workers:
        table.add_row(
            w["id"],
            "[green]yes[/]" if w["alive"] else "[red]no[/]",
            ",".join(w["queues"]),
            str(w["running"]),
            str(w["concurrency"]),
            _short_time(w["last_heartbeat"]),
            _short_time(w["started_at"]),
        )
    console.print(table)


@queues_cli.command("list")
def queues_list(as_json: JsonOption = False, db: DbOption = None) -> None:
    """Queues with queued and running runs and the live workers serving them."""
    client = _client(db)
    queues = client.queues()
    if as_json:
        _print_json(queues)
        return
    if not queues:
        console.print("no queues yet: submit a run or start a worker")
        return
    slots = {w["id"]: w for w in client.workers()}
    table = Table(
        "queue", "queued", "running", "scheduled", "oldest queued", "workers", "load", "control"
    )
    for q in queues:
        load = ", ".join(
            f"{slots[w]['running']}/{slots[w]['concurrency']}" for w in q["workers"] if w in slots
        )
        control = [
            label
            for label, on in (
                ("[red]paused[/]", q.get("paused")),
                ("strict", q.get("strict")),
                (f"max {q.get('concurrency')}", q.get("concurrency") is not None),
            )
            if on
        ]
        table.add_row(
            q["name"],
            str(q["queued"]),
            str(q["running"]),
            str(q["scheduled"]),
            _short_time(q["oldest_queued_at"]),
            str(len(q["workers"])),
            load or "-",
            ", ".join(control) or "-",
        )
    console.print(table)


@queues_cli.command("pause")
def queues_pause(queue: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Stop starting runs from a queue (running runs finish; waiting runs stay queued)."""
    _client(db).set_queue(queue, paused=True)
    console.print(f"queue {queue} paused", markup=False)


@queues_cli.command("resume")
def queues_resume(queue: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Start runs from a paused queue again."""
    _client(db).set_queue(queue, paused=False)
    console.print(f"queue {queue} resumed", markup=False)


@queues_cli.command("set")
def queues_set(
    queue: Annotated[str, typer.Argument()],
    strict: Annotated[
        bool | None,
        typer.Option("--strict/--no-strict", help="One run at a time, in submission order."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="At most N running from the queue.")
    ] = None,
    no_concurrency: Annotated[
        bool, typer.Option("--no-concurrency", help="Remove the queue's concurrency limit.")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Make a queue strict (FIFO, one at a time) or give it a concurrency limit."""
    if concurrency is not None and no_concurrency:
        _fail("give --concurrency N or --no-concurrency, not both")
    client = _client(db)
    if no_concurrency:
        state = client.set_queue(queue, strict=strict, concurrency=None)
    elif concurrency is not None:
        state = client.set_queue(queue, strict=strict, concurrency=concurrency)
    else:
        state = client.set_queue(queue, strict=strict)
    if as_json:
        _print_json(state)
        return
    console.print(
        f"queue {queue}: {'paused' if state['paused'] else 'active'}, "
        f"{'strict (FIFO, one at a time)' if state['strict'] else 'best-effort order'}, "
        f"concurrency {state['concurrency'] if state['concurrency'] is not None else 'unlimited'}",
        markup=False,
    )


# -- limits -------------------------------------------------------------------------------------


@limits_cli.command("set")
def limits_set(
    name: Annotated[str, typer.Argument(help="The limit's name, as in @app.flow(limits=[...]).")],
    size: Annotated[int | None, typer.Argument(help="At most N runs hold it at once.")] = None,
    rate: Annotated[
        str | None, typer.Option("--rate", help="At most N starts per period: 10/s, 100/1m.")
    ] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Create or resize a named limit shared by every flow that lists it."""
    limit = _client(db).set_limit(name, size, rate)
    if as_json:
        _print_json(limit)
        return
    console.print(f"limit {name}: {_limit_size(limit)}", markup=False)


@limits_cli.command("list")
def limits_list(as_json: JsonOption = False, db: DbOption = None) -> None:
    """Every limit (flows' own and named ones) with its size and current use."""
    limits = _client(db).limits()
    if as_json:
        _print_json(limits)
        return
    if not limits:
        console.print("no limits: declare them on flows or run 'legato limits set NAME N'")
        return
    table = Table("limit", "kind", "size", "running", "busiest keys")
    for item in limits:
        busiest = sorted(item["running_by_key"].items(), key=lambda kv: -kv[1])[:3]
        table.add_row(
            item["name"],
            item["kind"],
            _limit_size(item),
            str(item["running"]),
            ", ".join(f"{k or '-'}: {n}" for k, n in busiest) or "-",
        )
    console.print(table)


@limits_cli.command("delete")
def limits_delete(name: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Remove a named limit (flows listing it are then unlimited by it)."""
    _client(db).delete_limit(name)
    console.print(f"limit {name} deleted", markup=False)


def _limit_size(item: dict[str, Any]) -> str:
    parts = []
    if item["concurrency"] is not None:
        parts.append(f"{item['concurrency']} at once")
    if item["rate"] is not None:
        parts.append(f"{item['rate']} starts per {item['period_seconds']:g}s")
    return ", ".join(parts) or "unlimited"


# -- schedules ----------------------------------------------------------------------------------


def _parse_time(value: str, option: str) -> int:
    try:
        return to_ms(parse_iso(value))
    except ValueError:
        _fail(f"invalid {option} {value!r}: use an ISO 8601 time such as 2026-11-30T23:59:59Z")


@schedules_cli.command("list")
def schedules_list(
    flow: Annotated[str | None, typer.Option(help="Only this flow.")] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Each schedule with its next fire, policies and whether it is paused."""
    items = _client(db).schedules(flow)
    if as_json:
        _print_json(items)
        return
    if not items:
        console.print("no schedules: add schedule=... to @app.flow and start a worker")
        return
    table = Table("flow", "schedule", "next fire", "last fire", "catch-up", "overlap", "paused")
    for s in items:
        table.add_row(
            s["flow"],
            s["schedule"],
            _short_time(s["next_fire_at"]),
            _short_time(s["last_fire_at"]),
            s["catchup"],
            s["overlap"],
            "[yellow]paused[/]" if s["paused"] else "no",
        )
    console.print(table)


@schedules_cli.command("upcoming")
def schedules_upcoming(
    flow: Annotated[str | None, typer.Option(help="Only this flow.")] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to this ISO time [default: 24 h from now].")
    ] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Fire times due up to a moment (e.g. "what runs at the end of the month")."""
    client = _client(db)
    until_ms = _parse_time(until, "--until") if until else client.store.now_ms() + 86_400_000
    fires = client.upcoming(until_ms, flow)
    if as_json:
        _print_json(fires)
        return
    if not fires:
        console.print("nothing scheduled in that window")
        return
    table = Table("fire at (UTC)", "flow", "schedule")
    for f in fires:
        table.add_row(_short_time(f["fire_at"]), f["flow"], f["schedule"])
    console.print(table)


@schedules_cli.command("pause")
def schedules_pause(flow: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Stop firing a flow's schedules (recorded in the database)."""
    _client(db).set_paused(flow, True)
    console.print(f"schedules of {flow} paused")


@schedules_cli.command("resume")
def schedules_resume(flow: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Fire a flow's schedules again; missed fires follow each schedule's catch-up policy."""
    _client(db).set_paused(flow, False)
    console.print(f"schedules of {flow} resumed")


@schedules_cli.command("backfill")
def schedules_backfill(
    flow: Annotated[str, typer.Argument()],
    from_: Annotated[str, typer.Option("--from", help="ISO start (inclusive).")],
    to: Annotated[str, typer.Option("--to", help="ISO end (inclusive).")],
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            "--max-concurrent", min=1, help="Submit in waves of N, waiting for each wave to end."
        ),
    ] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Create the runs the flow's schedules would have created between two times."""
    client = _client(db)
    start, end = _parse_time(from_, "--from"), _parse_time(to, "--to")
    if max_concurrent is None:
        results = client.backfill(flow, start, end)
    else:
        results = []
        fires = client.backfill_fires(flow, start, end)
        for i in range(0, len(fires), max_concurrent):
            wave = client.backfill(flow, fires[i], fires[min(i + max_concurrent, len(fires)) - 1])
            results.extend(wave)
            console.print(f"wave {i // max_concurrent + 1}: {len(wave)} run(s)", style="dim")
            pending = [rid for rid, _ in wave]
            while any(client.store.get_run_status(rid) not in TERMINAL for rid in pending):
                time.sleep(0.2)
    if as_json:
        _print_json([{"id": rid, "created": created} for rid, created in results])
        return
    created = sum(1 for _, c in results if c)
    console.print(
        f"{len(results)} fire time(s): {created} run(s) created, "
        f"{len(results) - created} already existed"
    )


@events_cli.command("emit")
def events_emit(
    name: Annotated[str, typer.Argument(help="Event name, e.g. order.created.")],
    payload: Annotated[str | None, typer.Option(help="Payload as a JSON object.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Emit once per key.")
    ] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Start one run per flow subscribed to the event; print the run ids."""
    values = _parse_params(payload, [], "--payload")
    runs = _client(db).emit(name, values, idempotency_key=idempotency_key)
    if as_json:
        _print_json(runs)
        return
    if not runs:
        console.print(f"no flow is subscribed to {name!r} (or no filter matched)")
    for run in runs:
        sys.stdout.write(f"{run['id']} {run['flow']}\n")


@db_cli.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Apply pending schema migrations."""
    from .store import parse_url
    from .store.migrate import upgrade

    url = parse_url(database_url(db))
    store = open_store(url.raw, migrate=False)
    store.close()
    upgrade(url)
    console.print(f"database {url.redacted()} is up to date")


# -- API tokens ------------------------------------------------------------------------------


@tokens_cli.command("create")
def tokens_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the token.")],
    role: Annotated[
        str, typer.Option("--role", help="viewer (reads), operator (also acts), admin (tokens).")
    ],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Create an API token; it is printed this once (only its hash is stored)."""
    token = _client(db).create_token(name, role)
    if as_json:
        _print_json(token)
        return
    sys.stderr.write(
        f"token {token['id']} ({token['name']}, {token['role']}) created; "
        "it is shown only this once:\n"
    )
    sys.stdout.write(token["token"] + "\n")


@tokens_cli.command("list")
def tokens_list(as_json: JsonOption = False, db: DbOption = None) -> None:
    """API tokens (never the tokens themselves)."""
    items = _client(db).tokens()
    if as_json:
        _print_json(items)
        return
    if not items:
        console.print(
            "no tokens: create one with [bold]legato tokens create --name N --role admin[/]"
        )
        return
    table = Table("id", "name", "role", "created", "last used", "state")
    for t in items:
        table.add_row(
            t["id"],
            t["name"],
            t["role"],
            _short_time(t["created_at"]),
            _short_time(t["last_used_at"]),
            "[green]active[/]" if t["active"] else f"revoked {_short_time(t['revoked_at'])}",
        )
    console.print(table)


@tokens_cli.command("revoke")
def tokens_revoke(
    token: Annotated[str, typer.Argument(help="Token id or name.")],
    db: DbOption = None,
) -> None:
    """Revoke a token: requests carrying it are refused from now on."""
    revoked = _client(db).revoke_token(token)
    console.print(f"token {revoked['id']} ({revoked['name']}) revoked")


@cli.command()
def version() -> None:
    """Print Legato's version."""
    sys.stdout.write(__version__ + "\n")


def main() -> None:
    """Entry point: run the CLI, turning every expected failure into one line on stderr."""
    try:
        code = cli(standalone_mode=False)
    except TyperException as exc:  # usage errors: missing argument, unknown option or command
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = " ".join(str(getattr(exc, "format_message", exc.__str__)()).split())
        sys.stderr.write(f"error: {message}{where}\n")
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("error: aborted\n")
        sys.exit(130)
    except (CliError, LegatoError, ValueError, TypeError, sqlite3.Error) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(1)
    except Exception as exc:
        if type(exc).__module__.startswith("psycopg"):
            sys.stderr.write(f"error: database: {str(exc).strip().splitlines()[0]}\n")
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
