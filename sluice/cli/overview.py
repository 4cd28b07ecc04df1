"""``sluice status [JOB]`` and the live progress of ``sluice trigger JOB --wait``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from sluice.app import stored_schedule
from sluice.errors import ConfigError, UnknownJobError
from sluice.pipeline.progress import target_rate
from sluice.store import Store

FINAL = ("succeeded", "failed", "lost", "cancelled", "skipped", "missed")


def _ago(now: float, ts: float | None) -> str | None:
    if ts is None:
        return None
    delta = now - ts
    return f"in {-delta:.0f}s" if delta < 0 else f"{delta:.0f}s ago"


def _schedule(job: dict[str, Any]) -> str:
    try:
        schedule = stored_schedule(job)
    except ConfigError:
        return "invalid"
    return schedule.describe() if schedule is not None else "manual"


def status(args: argparse.Namespace, store: Store) -> int:
    """One line per job (no name), or the counters of one job's latest run and pipeline."""
    if getattr(args, "job", None):
        return job_status(args, store)
    from sluice.cli.commands import emit

    now, latest, parked = store.clock(), store.run_latest_by_job(), store.dead_count_by_job()
    rows = []
    for j in store.job_list():
        last = latest.get(j["name"]) or {}
        progress = None
        if last.get("loaded"):
            progress = f"{last['executed'] + last['parked']:,}/{last['loaded']:,}"
        rows.append({"job": j["name"], "kind": j["kind"], "schedule": _schedule(j),
                     "paused": "paused" if j["paused"] else "",
                     "next_fire": None if j["paused"] else _ago(now, j["next_fire_at"]),
                     "last_run": last.get("id"), "state": last.get("state"),
                     "when": _ago(now, last.get("scheduled_at")), "progress": progress,
                     "qps": target_rate(j), "parked": parked.get(j["name"]) or None})
    emit(args, rows, ["job", "kind", "schedule", "paused", "next_fire", "last_run", "state",
                      "when", "progress", "qps", "parked"])
    return 0


def job_status(args: argparse.Namespace, store: Store) -> int:
    job = store.job_get(args.job)
    if job is None:
        raise UnknownJobError(f"unknown job {args.job!r}")
    runs = store.run_list(args.job, 1)
    run = runs[0] if runs else None
    now = store.clock()
    out: dict[str, Any] = {
        "job": job["name"], "kind": job["kind"], "schedule": _schedule(job),
        "paused": job["paused"], "next_fire_at": job["next_fire_at"],
        "target_qps": target_rate(job), "parked": store.dead_count_by_job().get(job["name"], 0)}
    if run is not None:
        end = run["finished_at"] or now
        took = end - run["started_at"] if run["started_at"] else None
        out["run"] = {k: run[k] for k in ("id", "state", "trigger", "shards", "loaded",
                                          "executed", "failed", "parked", "reexecuted",
                                          "stale", "error")}
        out["run"]["seconds"] = took
        out["run"]["achieved_qps"] = run["executed"] / took if took else None
    rate = None
    if out["target_qps"] is not None:
        from sluice.rate.cli import rate_status

        rate = rate_status(store, args.job)  # target, achieved, shares, backlog, loader
    if getattr(args, "json", False):
        print(json.dumps({**(rate or {}), **out}, default=str, indent=1))
        return 0
    for key, value in out.items():
        if key != "run":
            print(f"{key:<17} {'-' if value is None else value}")
    for key, value in (out.get("run") or {}).items():
        shown = f"{value:,.1f}" if isinstance(value, float) else value
        print(f"{'run.' + key:<17} {'-' if value is None else shown}")
    if rate is not None:
        from sluice.rate.cli import print_status

        print()
        print_status(rate)
    return 0


def progress_line(run: dict[str, Any], rate: float | None, elapsed: float,
                  width: int = 28) -> str:
    """``run 7 running [#####.....] 12,345/50,000  2,310 rec/s  ETA 0:16``."""
    done, total = run["executed"] + run["parked"], run["loaded"]
    head = f"run {run['id']} {run['state']:<9}"
    if not total:
        return f"{head} {elapsed:6.1f}s"
    filled = min(width, int(width * done / total))
    eta = "-"
    if rate and rate > 0 and total > done:
        seconds = int((total - done) / rate)
        eta = f"{seconds // 60}:{seconds % 60:02d}"
    rate_text = "-" if rate is None else f"{rate:,.0f}"
    return (f"{head} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} loaded  "
            f"{rate_text} rec/s  ETA {eta}  failed {run['failed']:,} parked {run['parked']:,}")


def wait_with_progress(store: Store, run_id: int, out: TextIO = sys.stderr,
                       every: float = 0.5) -> int:
    """Show the run's progress until it ends; 0 if it succeeded, 1 otherwise."""
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    tty = out.isatty()
    last_print = 0.0
    while True:
        run = store.run_get(run_id)
        if run is None:
            raise UnknownJobError(f"run {run_id} disappeared")
        now = time.monotonic()
        samples.append((now, run["executed"] + run["parked"]))
        samples = [s for s in samples if s[0] >= now - 5.0]
        span = samples[-1][0] - samples[0][0]
        rate = (samples[-1][1] - samples[0][1]) / span if span > 0 else None
        line = progress_line(run, rate, now - started)
        final = run["state"] in FINAL
        if tty:
            print("\r" + line + "\x1b[K", end="\n" if final else "", file=out, flush=True)
        elif final or now - last_print >= 5.0:  # a log file gets a line every few seconds
            print(line, file=out, flush=True)
            last_print = now
        if final:
            if run["error"]:
                print(f"run {run_id} {run['state']}: {run['error']}", file=out)
            return 0 if run["state"] == "succeeded" else 1
        time.sleep(every)
