"""What each ``sluice`` command does; ``main`` only parses arguments."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sluice.app import resume_job, set_job, stored_schedule
from sluice.cli import overview
from sluice.config import DEFAULT_DATABASE_URL, Settings
from sluice.errors import ConfigError, UnknownJobError
from sluice.rate.cli import RATE_COMMANDS
from sluice.store import Store


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(ln.rstrip() for ln in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(rows, default=str, indent=1))
    else:
        print(table(rows, columns))


def open_store(args: argparse.Namespace, load_app: Callable[[str], Any]) -> Store:
    url = args.database_url or os.environ.get("SLUICE_DATABASE_URL")
    if not url and args.app:
        url = load_app(args.app).settings.database_url
    return Store.open(url or DEFAULT_DATABASE_URL)


def dispatch(args: argparse.Namespace, argv: list[str],
             load_app: Callable[[str], Any]) -> int:
    if args.command == "worker":
        return worker(args, argv, load_app)
    if args.command == "demo":
        from sluice.demo import run_demo

        return run_demo(records=args.records, folder=args.dir)
    if args.command == "outbox":
        return int(args.func(args) or 0)
    if args.command == "dashboard":
        from sluice.web.serve import serve

        return serve(args, open_store(args, load_app), load_app)
    store = open_store(args, load_app)
    try:
        handler = COMMANDS[args.command]
        return handler(args, store) or 0
    finally:
        store.close()


def worker(args: argparse.Namespace, argv: list[str], load_app: Callable[[str], Any]) -> int:
    if args.processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {args.processes}")
    if args.processes > 1:
        from sluice.worker.process import supervise

        child = _without(_without(argv, "--processes"), "--metrics-port")
        port = args.metrics_port if args.metrics_port is not None else \
            Settings.load().metrics_port  # the environment's, split over the children too
        return supervise(child, args.processes, metrics_port=port)
    app = load_app(args.target)
    settings = app.settings.with_(
        database_url=args.database_url, group=args.group, zone=args.zone,
        concurrency=args.concurrency, weight=args.weight, heartbeat=args.heartbeat,
        node_ttl=args.node_ttl, lease_ttl=args.lease_ttl, drain_timeout=args.drain_timeout,
        metrics_port=args.metrics_port)
    from sluice.worker.process import exit_now, run_foreground

    run_foreground(app, settings)
    exit_now(0)
    return 0


def _without(argv: list[str], flag: str) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def jobs(args: argparse.Namespace, store: Store) -> int:
    rows = []
    for j in store.job_list():
        schedule = stored_schedule(j)
        desc = schedule.describe() if schedule is not None else "manual"
        rows.append({"name": j["name"], "kind": j["kind"], "schedule": desc,
                     "routing": j["spec"].get("routing"), "paused": j["paused"],
                     "next_fire": when(j["next_fire_at"]),
                     "qps": j["overrides"].get("qps", j["spec"].get("qps"))})
    emit(args, rows, ["name", "kind", "schedule", "routing", "paused", "next_fire", "qps"])
    return 0


def runs(args: argparse.Namespace, store: Store) -> int:
    if args.job and store.job_get(args.job) is None:
        raise UnknownJobError(f"unknown job {args.job!r}")
    rows = store.run_list(args.job, args.limit)
    for r in rows:
        r["scheduled"] = when(r["scheduled_at"])
        r["duration"] = (r["finished_at"] - r["started_at"]
                         if r["finished_at"] and r["started_at"] else None)
        if r["state"] == "missed":
            r["error"] = f"{r['stats'].get('missed')} firing(s) missed"
    columns = ["id", "job", "scheduled", "trigger", "state", "duration", "error"]
    if any(r["loaded"] for r in rows):
        columns[-1:-1] = ["shards", "loaded", "executed", "failed", "parked", "reexecuted",
                          "stale"]
    emit(args, rows, columns)
    return 0


def nodes(args: argparse.Namespace, store: Store) -> int:
    ttl = Settings.load().node_ttl
    rows = store.node_list_live(ttl)
    for r in rows:
        r["heartbeat_age"] = round(r.pop("age"), 2)
        r["running"] = ", ".join(f"{k}×{v}" for k, v in r["info"].get("running", {}).items())
        r["group"] = r.pop("grp")
    emit(args, rows, ["id", "group", "zone", "concurrency", "heartbeat_age", "state", "running"])
    return 0


def trigger(args: argparse.Namespace, store: Store) -> int:
    _known(store, args.job)
    run_id = store.run_trigger(args.job)
    if not args.wait:
        print(json.dumps({"run_id": run_id}) if args.json else f"run {run_id} of {args.job} "
              "triggered")
        return 0
    from sluice.cli.overview import wait_with_progress

    assert run_id is not None
    return wait_with_progress(store, run_id)


def _known(store: Store, name: str) -> None:
    if store.job_get(name) is None:
        known = ", ".join(sorted(j["name"] for j in store.job_list())) or "none registered yet"
        raise UnknownJobError(f"unknown job {name!r}; known jobs: {known}")


def pause(args: argparse.Namespace, store: Store) -> int:
    _known(store, args.job)
    store.job_set_paused(args.job, True)
    print(f"{args.job} paused")
    return 0


def resume(args: argparse.Namespace, store: Store) -> int:
    _known(store, args.job)
    resume_job(store, args.job)
    print(f"{args.job} resumed")
    return 0


def set_(args: argparse.Namespace, store: Store) -> int:
    _known(store, args.job)
    changes: dict[str, Any] = {}
    for item in args.changes:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"sluice set: expected FIELD=VALUE, got {item!r}")
        changes[key] = value
    overrides = set_job(store, args.job, changes)
    print(f"{args.job}: {json.dumps(overrides)}")
    return 0


def dead(args: argparse.Namespace, store: Store) -> int:
    _known(store, args.job)
    if args.dead_command == "list":
        rows = store.dead_list(args.job, args.limit)
        for r in rows:
            r["parked"] = when(r.pop("created_at"))
            r["record"] = json.dumps(r["record"])[:60]
        emit(args, rows, ["id", "run_id", "shard", "attempts", "parked", "error", "record"])
        return 0
    if not args.all and not args.ids:
        raise ConfigError("sluice dead retry: give record ids or --all")
    from sluice.pipeline.runtime import retry_dead

    run_id, count = retry_dead(store, args.job, None if args.all else args.ids)
    print(f"{count} record(s) of {args.job} queued for retry in run {run_id}")
    return 0


def db(args: argparse.Namespace, store: Store) -> int:
    print(f"schema at version {store.migrate()}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Store], int]] = {
    "jobs": jobs, "runs": runs, "nodes": nodes, "trigger": trigger, "pause": pause,
    "resume": resume, "set": set_, "dead": dead, "db": db, "status": overview.status,
    **RATE_COMMANDS,
}
