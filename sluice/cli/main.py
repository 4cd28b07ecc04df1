"""``sluice``: the command line. Tables for people, ``--json`` for scripts.

Exit codes: 0 done, 1 failed (e.g. the store is unreachable, a waited-for run failed), 2 bad
input (unknown job, bad value) with a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from sluice.cli import commands
from sluice.errors import ConfigError, SluiceError, StoreError, UnknownJobError


def load_app(spec: str) -> Any:
    """Import ``module:attribute`` (the current directory is importable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigError(f"app {spec!r}: expected module:app, e.g. myproject.jobs:app")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"app {spec!r}: cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr or "app", None)
    if app is None:
        raise ConfigError(f"app {spec!r}: module {module_name!r} has no attribute "
                          f"{attr or 'app'!r}")
    return app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice", description="Scheduled jobs and batch work "
                                "over a cluster of worker processes.")
    p.add_argument("--database-url", help="store URL (default: $SLUICE_DATABASE_URL, else "
                   "sqlite:///sluice.db)")
    p.add_argument("--app", help="module:app, to take the store URL and outboxes from an app")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="run worker processes for an app")
    w.add_argument("target", metavar="APP", help="module:app")
    w.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    w.add_argument("--group", help="node group (pipelines with groups=)")
    w.add_argument("--zone", help="node zone")
    w.add_argument("--concurrency", type=int, help="handler threads per process (default 8)")
    w.add_argument("--weight", type=float, help="share of rate-limited jobs' qps (default: "
                   "concurrency)")
    w.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 1)")
    w.add_argument("--node-ttl", type=float, help="seconds until a silent node is dead (5)")
    w.add_argument("--lease-ttl", type=float, help="seconds a claim lasts unrenewed (10)")
    w.add_argument("--drain-timeout", type=float, help="seconds to finish work on stop (30)")
    w.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port "
                   "(with --processes N, worker i uses port + i; default off)")

    for name, help_ in (("jobs", "list jobs"), ("nodes", "list live nodes")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true")
    r = sub.add_parser("runs", help="recent runs, of one job or all")
    r.add_argument("job", nargs="?")
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--json", action="store_true")
    t = sub.add_parser("trigger", help="start a run now")
    t.add_argument("job")
    t.add_argument("--wait", action="store_true", help="wait for the run and show progress")
    t.add_argument("--json", action="store_true")
    for name, help_ in (("pause", "stop firing a job"), ("resume", "fire a paused job again")):
        sub.add_parser(name, help=help_).add_argument("job")
    s = sub.add_parser("set", help="change a job's schedule or rate: sluice set JOB qps=12000")
    s.add_argument("job")
    s.add_argument("changes", nargs="+", metavar="FIELD=VALUE")
    d = sub.add_parser("dead", help="parked records of a pipeline")
    dsub = d.add_subparsers(dest="dead_command", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("job")
    dl.add_argument("--limit", type=int, default=50)
    dl.add_argument("--json", action="store_true")
    dr = dsub.add_parser("retry")
    dr.add_argument("job")
    dr.add_argument("ids", nargs="*", type=int)
    dr.add_argument("--all", action="store_true")
    st = sub.add_parser("status", help="overview of every job, or one job's counters")
    st.add_argument("job", nargs="?", help="one job: its latest run and pipeline counters")
    st.add_argument("--json", action="store_true")
    dash = sub.add_parser("dashboard", help="serve the web dashboard and /metrics")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    db = sub.add_parser("db", help="schema management")
    db.add_argument("db_command", choices=["upgrade"])
    demo = sub.add_parser("demo", help="the coupon-reminder pipeline on SQLite, end to end")
    demo.add_argument("--records", type=int, default=100_000)
    demo.add_argument("--dir", default=".sluice-demo", help="where the demo databases go")
    from sluice.outbox.cli import add_outbox_commands
    from sluice.rate.cli import add_rate_commands

    add_outbox_commands(sub, _outboxes)
    add_rate_commands(sub)
    return p


_APP: dict[str, str | None] = {"spec": None}


def _outboxes() -> list[Any]:
    """The outboxes of the app named by --app (``sluice --app mod:app outbox status``)."""
    if not _APP["spec"]:
        raise ConfigError("sluice outbox: name the app that declares the outbox: "
                          "sluice --app module:app outbox status")
    return list(load_app(_APP["spec"]).outboxes)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _APP["spec"] = args.app
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return commands.dispatch(args, argv if argv is not None else sys.argv[1:], load_app)
    except (UnknownJobError, ConfigError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"sluice: store error: {exc}", file=sys.stderr)
        return 1
    except SluiceError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
