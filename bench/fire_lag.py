"""Fire lag of scheduled jobs, idle worker memory, and the cost of jobs that are not due.

    .venv/bin/python bench/fire_lag.py [--seconds 20] [--warmup 3] [--workers 3]
                                       [--idle-jobs 1000] [--stores postgresql,sqlite]

Fire lag is ``time.time() - ctx.scheduled_at.timestamp()`` taken by the handler of a
``cron="* * * * * ?"`` job the moment it starts: from the scheduled instant to user code
running. Every worker is a real ``sluice worker`` process (library defaults: heartbeat 1 s,
concurrency 8, poll 1 s on PostgreSQL and 0.1 s on SQLite).

1. Cluster: ``--workers`` worker processes share one store for ``--seconds``; p50/p99/max of
   the lag, and a check that every instant fired exactly once.
2. Jobs that are not due: one worker with the every-second job alone, then one worker with it
   plus ``--idle-jobs`` cron jobs due at 03:00 (never during the run). Fire lag, CPU seconds
   (utime+stime from /proc/PID/stat) over ``--seconds``, and VmRSS / VmHWM at the end.

Targets: p99 ≤ 20 ms on PostgreSQL; idle worker RSS ≤ 80 MB (1000 jobs registered).
Creates and drops its own PostgreSQL database per scenario (127.0.0.1:5432, user postgres;
``BENCH_PG`` overrides the admin URL) and a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench._common import (
    cpu_seconds,
    machine_line,
    percentile,
    pg_database,
    processes,
    read_events,
    rss_mib,
    sluice_worker,
    verdict,
    wait_until,
)

APP = "bench.fire_app:app"
P99_TARGET_MS = 20.0
RSS_TARGET_MB = 80.0


@dataclass
class Result:
    name: str
    store: str
    workers: int
    idle_jobs: int
    lags_ms: list[float] = field(default_factory=list)
    expected: int = 0
    duplicates: int = 0
    startup_s: float = 0.0
    cpu_s: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    hwm_mib: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def lag(self, q: float) -> float:
        return percentile(self.lags_ms, q) if self.lags_ms else float("nan")


def _live_nodes(store: str, url: str) -> int:
    try:
        if store == "postgresql":
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM sluice_nodes WHERE state = 'live'"
                                   ).fetchone()
        else:
            conn2 = sqlite3.connect(url.split("://", 1)[1][1:], timeout=5)
            try:
                row = conn2.execute("SELECT count(*) FROM sluice_nodes WHERE state = 'live'"
                                    ).fetchone()
            finally:
                conn2.close()
        return int(row[0]) if row else 0
    except (psycopg.Error, sqlite3.Error):
        return 0  # schema not there yet


def run_scenario(name: str, store: str, url: str, workers: int, idle_jobs: int, seconds: float,
                 warmup: float, tmp: Path) -> Result:
    events = tmp / f"{name}.events"
    env = {"BENCH_EVENTS": str(events), "BENCH_IDLE_JOBS": str(idle_jobs)}
    res = Result(name=name, store=store, workers=workers, idle_jobs=idle_jobs, seconds=seconds)
    started = time.monotonic()
    procs = [sluice_worker(APP, url, tmp / f"{name}-{i}.log", env) for i in range(workers)]
    with processes(procs):
        wait_until(lambda: _live_nodes(store, url) >= workers, 120, 0.1, f"{workers} live nodes")
        wait_until(lambda: read_events(events), 60, 0.05, "the first firing")
        res.startup_s = time.monotonic() - started
        time.sleep(warmup)
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"worker {p.pid} died; see {p.log_path}")
        t0 = time.time()
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        time.sleep(seconds)
        t1 = time.time()
        res.cpu_s = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        res.rss_mib = [rss_mib(p.pid) for p in procs]
        res.hwm_mib = [rss_mib(p.pid, "VmHWM") for p in procs]
        time.sleep(1.0)  # let the last instant in the window fire and be recorded
    fired = [e for e in read_events(events) if "lag" in e and t0 <= e["at"] < t1]
    res.expected = math.ceil(t1) - math.ceil(t0)  # whole seconds in [t0, t1)
    ats = [e["at"] for e in fired]
    res.duplicates = len(ats) - len(set(ats))
    res.lags_ms = [e["lag"] * 1000 for e in fired]
    if any("idle" in e for e in read_events(events)):
        raise RuntimeError("an idle cron job fired during the run (started near 03:00?)")
    return res


def _store_url(store: str, tag: str, tmp: Path):  # type: ignore[no-untyped-def]
    if store == "postgresql":
        return pg_database(tag)

    class _File:
        def __enter__(self) -> str:
            return f"sqlite:///{tmp / f'{tag}.db'}"

        def __exit__(self, *exc: object) -> None:
            for suffix in ("", "-wal", "-shm"):
                (tmp / f"{tag}.db{suffix}").unlink(missing_ok=True)

    return _File()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per scenario")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds ignored after start")
    ap.add_argument("--workers", type=int, default=3, help="worker processes in the cluster run")
    ap.add_argument("--idle-jobs", type=int, default=1000, help="cron jobs that are never due")
    ap.add_argument("--stores", default="postgresql,sqlite",
                    help="comma separated: postgresql, sqlite")
    args = ap.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]

    print(machine_line())
    print(f"settings: {args.seconds:g} s measured per scenario after {args.warmup:g} s warm-up; "
          f"{args.workers} workers in the cluster runs; {args.idle_jobs} idle cron jobs\n",
          flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as d:
        tmp = Path(d)
        for store in stores:
            plan = [(f"{store}-cluster", args.workers, 0),
                    (f"{store}-1job", 1, 0),
                    (f"{store}-{args.idle_jobs}jobs", 1, args.idle_jobs)]
            for name, workers, idle in plan:
                print(f"running {name} ({workers} worker(s), {idle} idle job(s)) ...", flush=True)
                with _store_url(store, name.replace("-", "_"), tmp) as url:
                    results.append(run_scenario(name, store, url, workers, idle, args.seconds,
                                                args.warmup, tmp))
    print()
    _report(results, args)
    return 0


def _report(results: list[Result], args: argparse.Namespace) -> None:
    head = (f"{'scenario':<22}{'workers':>8}{'jobs':>6}{'fired':>11}{'dup':>5}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'start s':>9}{'CPU s':>8}{'CPU %':>7}"
            f"{'RSS MiB':>9}{'HWM MiB':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        cpu = sum(r.cpu_s) / len(r.cpu_s)
        fired = f"{len(r.lags_ms)}/{r.expected}"
        print(f"{r.name:<22}{r.workers:>8}{r.idle_jobs + 1:>6}{fired:>11}"
              f"{r.duplicates:>5}{r.lag(50):>9.1f}{r.lag(99):>9.1f}"
              f"{max(r.lags_ms, default=float('nan')):>9.1f}{r.startup_s:>9.1f}{cpu:>8.2f}"
              f"{100 * cpu / r.seconds:>7.1f}{max(r.rss_mib):>9.1f}{max(r.hwm_mib):>9.1f}")
    print("(CPU s and RSS: per worker process, mean CPU over the measured window, max RSS; "
          "jobs = declared jobs incl. the every-second one)\n")

    print("targets:")
    for r in results:
        if r.name.endswith("-cluster") and r.store == "postgresql":
            print(f"  fire lag p99 on PostgreSQL, {r.workers} workers: {r.lag(99):.1f} ms "
                  f"(target ≤ {P99_TARGET_MS:g} ms) {verdict(r.lag(99) <= P99_TARGET_MS)}")
    for r in results:
        if r.idle_jobs:
            rss = max(r.rss_mib)
            print(f"  idle worker RSS with {r.idle_jobs} cron jobs + 1 every-second job "
                  f"({r.store}): {rss:.1f} MiB = {rss * 1.048576:.1f} MB "
                  f"(target ≤ {RSS_TARGET_MB:g} MB) {verdict(rss * 1.048576 <= RSS_TARGET_MB)}")
    print("\njobs that are not due (one worker, 1 job vs "
          f"{args.idle_jobs + 1} jobs):")
    by = {r.name: r for r in results}
    for store in sorted({r.store for r in results}):
        one, many = by.get(f"{store}-1job"), by.get(f"{store}-{args.idle_jobs}jobs")
        if one is None or many is None:
            continue
        c1, cn = sum(one.cpu_s), sum(many.cpu_s)
        print(f"  {store}: CPU {c1:.2f} s → {cn:.2f} s over {args.seconds:g} s "
              f"(×{cn / c1 if c1 else float('nan'):.2f}); fire lag p50 {one.lag(50):.1f} → "
              f"{many.lag(50):.1f} ms, p99 {one.lag(99):.1f} → {many.lag(99):.1f} ms; "
              f"RSS {max(one.rss_mib):.1f} → {max(many.rss_mib):.1f} MiB; "
              f"start-up {one.startup_s:.1f} → {many.startup_s:.1f} s")
    for r in results:
        if r.duplicates:
            print(f"  WARNING {r.name}: {r.duplicates} instant(s) fired more than once")


if __name__ == "__main__":
    sys.exit(main())
