"""The rate part of ``sluice status NAME`` (a job's rate as it runs) and ``sluice plan NAME``
(a dry run)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sluice.config import Settings
from sluice.rate import report
from sluice.store import Store


def add_rate_commands(sub: Any) -> None:
    """``sluice plan``. (The rate part of ``sluice status NAME`` is :func:`print_status`.)"""
    pl = sub.add_parser("plan", help="dry run: per-node rate, per-shard load size and drain "
                        "time for a cluster size (defaults from the job)")
    pl.add_argument("job")
    pl.add_argument("--nodes", type=int, required=True, help="live nodes serving the job")
    pl.add_argument("--shards", type=int, required=True, help="shards per run")
    pl.add_argument("--qps", type=float, help="cluster rate (default: the job's)")
    pl.add_argument("--interval", type=float, help="seconds between runs (default: the job's)")
    pl.add_argument("--backlog", type=int, help="records to drain (default: one interval's)")
    pl.add_argument("--json", action="store_true")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def rate_status(store: Store, job: str) -> dict[str, Any]:
    """The rate report of a job that has a target rate (``sluice.rate.report.status``)."""
    return report.status(store, job, Settings.load().node_ttl)


def print_status(s: dict[str, Any]) -> None:
    """The rate lines of ``sluice status NAME``."""
    from sluice.cli.commands import table

    target = "none (no qps)" if s["target"] is None else f"{_fmt(s['target'])}/s"
    print(f"{s['job']}: target {target}, mode {s['mode']}, warm-up {s['warmup']:g} s, "
          f"interval {s['interval']:g} s")
    print(f"achieved (last 10 s): {_fmt(s['achieved_10s'], '/s')} over {len(s['nodes'])} "
          "live node(s)")
    print(f"backlog: {_fmt(s['backlog'])} record(s) loaded, not yet executed; "
          f"{s['open_loaders']} loader(s) open over {s['shards']} shard(s)")
    print(f"loader size: classic {_fmt(s['loader_classic'])} per shard "
          f"(qps × interval / shards), last used {_fmt(s['loader_last'])}")
    print(table(s["nodes"], ["node", "group", "weight", "share", "achieved", "loader",
                             "heartbeat_age"]))


def plan(args: argparse.Namespace, store: Store) -> int:
    row = store.job_get(args.job)
    if row is None:
        report.status(store, args.job, 0.0)  # raises UnknownJobError naming the known jobs
        return 2
    job = report.rate_settings(row)
    qps = args.qps if args.qps is not None else job["qps"]
    if qps is None:
        from sluice.errors import ConfigError

        raise ConfigError(f"sluice plan {args.job}: the job has no qps; give --qps")
    p = report.plan(qps, args.nodes, args.shards,
                    args.interval if args.interval is not None else job["interval"],
                    args.backlog, job["warmup"], len(job["groups"]))
    if args.json:
        print(json.dumps(p, indent=1))
        return 0
    spread = "" if p["per_node"] == p["per_node_min"] else \
        f" (from {_fmt(p['per_node_min'])}/s: groups differ in size)"
    print(f"{args.job} at {_fmt(float(p['qps']))}/s over {p['nodes']} node(s), "
          f"{p['shards']} shard(s), interval {p['interval']:g} s")
    print(f"per-node rate:        {_fmt(float(p['per_node']))}/s{spread}")
    print(f"per-shard load size:  {_fmt(p['load_size'])} record(s) "
          f"(max(1, qps × interval / shards)); {_fmt(p['records_per_interval'])} per interval")
    print(f"drain {_fmt(p['backlog'])} record(s): {p['drain_seconds']:g} s at full rate, "
          f"{p['drain_seconds_cold']:g} s from cold (warm-up {job['warmup']:g} s)")
    return 0


RATE_COMMANDS = {"plan": plan}
