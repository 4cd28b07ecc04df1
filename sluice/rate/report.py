"""What ``sluice status`` and ``sluice plan`` compute: a job's rate as it runs, and a dry run.

Both read only what is already stored: the job's declaration and ``sluice set`` overrides, the
live node rows (each carries its weight, its share and its achieved rate in its heartbeat
``info``), and the backlog of the job's active runs.
"""

from __future__ import annotations

from typing import Any

from sluice.errors import ConfigError, UnknownJobError
from sluice.job import interval_of
from sluice.rate.limiter import NS, SmoothLimiter
from sluice.rate.share import Member, shares
from sluice.rate.sizing import classic_limit
from sluice.schedule.triggers import from_spec
from sluice.store import Store


def cold_drain(qps: float, warmup: float, records: int) -> float:
    """Seconds a cold limiter at ``qps`` takes to hand out ``records`` permits: the warm-up
    curve's integral, asked of the limiter itself (pay-later: the next permit waits for them)."""
    if records <= 0:
        return 0.0
    limiter = SmoothLimiter(qps, warmup=warmup, clock=lambda: 0)
    limiter.reserve(records)
    return limiter.reserve(1) / NS


def _job(store: Store, name: str) -> dict[str, Any]:
    row = store.job_get(name)
    if row is None:
        known = ", ".join(sorted(j["name"] for j in store.job_list())) or "none registered yet"
        raise UnknownJobError(f"unknown job {name!r}; known jobs: {known}")
    return row


def rate_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The job's qps (after ``sluice set``), warm-up, mode, interval and groups."""
    spec, overrides = row["spec"], row["overrides"]
    sched = {k: v for k, v in overrides.items()
             if k in ("cron", "fixed_rate", "fixed_delay", "timezone")} or spec.get("schedule")
    schedule = from_spec(f"job {row['name']!r}", sched) if sched else None
    return {"qps": overrides.get("qps", spec.get("qps")), "warmup": spec.get("warmup", 1.0),
            "mode": spec.get("rate_mode", "local"), "interval": interval_of(schedule),
            "groups": spec.get("groups") or [], "kind": row["kind"]}


def status(store: Store, name: str, node_ttl: float) -> dict[str, Any]:
    """Target and achieved rate, live nodes with their shares, backlog and loader size."""
    row = _job(store, name)
    rate = rate_settings(row)
    nodes = []
    for n in store.node_list_live(node_ttl):
        info = (n["info"].get("rate") or {})
        job = (info.get("jobs") or {}).get(name)
        if name not in (info.get("serves") or []) or job is None:
            continue
        nodes.append({"node": n["id"], "group": n["grp"], "weight": info.get("weight"),
                      "share": job.get("share"), "achieved": job.get("achieved"),
                      "loader": job.get("loader"), "heartbeat_age": round(n["age"], 2)})
    reported = [n["achieved"] for n in nodes if n["achieved"] is not None]
    backlog, loaders = store.rate_backlog(name)
    runs = [r for r in store.run_list(name, 5) if r["state"] in ("pending", "running")]
    shards = max((r["shards"] for r in runs), default=0)
    used = [n["loader"] for n in nodes if n["loader"]]
    return {
        "job": name, "target": rate["qps"], "mode": rate["mode"], "warmup": rate["warmup"],
        "interval": rate["interval"], "achieved_10s": round(sum(reported), 2) if reported else None,
        "nodes": nodes, "backlog": backlog, "open_loaders": loaders, "shards": shards,
        "loader_classic": classic_limit(rate["qps"], rate["interval"], shards)
        if rate["qps"] and shards else None,
        "loader_last": max(used) if used else None,
    }


def plan(qps: float, nodes: int, shards: int, interval: float, backlog: int | None = None,
         warmup: float = 1.0, groups: int = 0) -> dict[str, Any]:
    """The dry run: each node's rate, each shard's load size and the time to drain a backlog
    (default: one interval's worth, the most the loaders keep loaded)."""
    for field, value, low in (("--qps", qps, 0), ("--interval", interval, 0)):
        if not isinstance(value, int | float) or value <= low:
            raise ConfigError(f"sluice plan: {field} must be a number > 0, got {value!r}")
    for field, count in (("--nodes", nodes), ("--shards", shards)):
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"sluice plan: {field} must be an integer >= 1, got {count!r}")
    if backlog is not None and backlog < 0:
        raise ConfigError(f"sluice plan: --backlog must be >= 0, got {backlog}")
    names = [chr(ord("A") + i) for i in range(groups)] if groups > 1 else []
    members = [Member(id=f"n{i:04d}", weight=1.0, group=names[i % len(names)] if names else None)
               for i in range(nodes)]
    per_node = shares(qps, members, names)
    pending = int(qps * interval) if backlog is None else backlog
    drain = pending / qps
    return {
        "qps": qps, "nodes": nodes, "shards": shards, "interval": interval,
        "per_node": round(max(per_node.values()), 3),
        "per_node_min": round(min(per_node.values()), 3),
        "load_size": classic_limit(qps, interval, shards),
        "records_per_interval": int(qps * interval),
        "backlog": pending, "drain_seconds": round(drain, 3),
        "drain_seconds_cold": round(cold_drain(qps, warmup, pending), 3),
    }
