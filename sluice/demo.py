"""``sluice demo``: the coupon-reminder pipeline end to end on SQLite, with a node killed."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from sluice.store import Store

PIPELINE = "remind_expiring_coupons"
SHARDS = 25


def build_coupons(path: Path, records: int) -> None:
    from sluice.demo_app import coupons

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    per = records // SHARDS
    next_id = 1
    for shard in range(SHARDS):
        count = per + (1 if shard < records % SHARDS else 0)
        table = f"coupon_{shard:02d}"
        conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, '
                     f"expires_at TEXT NOT NULL, {coupons.state_ddl()})")
        conn.execute(f'CREATE INDEX "{table}_status" ON "{table}" (status, id)')
        rows = [(i, 1_000_000 + i, f"2026-12-{1 + i % 28:02d}")
                for i in range(next_id, next_id + count)]
        conn.executemany(f'INSERT INTO "{table}" (id, user_id, expires_at) VALUES (?, ?, ?)', rows)
        next_id += count
    conn.commit()
    conn.close()


def count_states(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path, timeout=60)
    totals: dict[str, int] = {}
    for shard in range(SHARDS):
        for status, n in conn.execute(f'SELECT status, count(*) FROM "coupon_{shard:02d}" '
                                      "GROUP BY status"):
            totals[status] = totals.get(status, 0) + n
    conn.close()
    return totals


def bar(done: int, total: int, rate: float, width: int = 32) -> str:
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:>7,}/{total:,}  {rate:>7,.0f} rec/s"


def run_demo(records: int = 100_000, folder: str = ".sluice-demo") -> int:
    base = Path(folder).resolve()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    data, store_url = base / "coupons.db", f"sqlite:///{base / 'sluice.db'}"
    print(f"sluice demo: {records:,} coupons in {SHARDS} shard tables ({data})")
    build_coupons(data, records)
    store = Store.open(store_url)
    env = {**os.environ, "SLUICE_DATABASE_URL": store_url, "SLUICE_DEMO_DATA": str(data)}
    procs = []
    for i in range(2):
        log = open(base / f"worker-{i + 1}.log", "wb")  # noqa: SIM115 - lives as long as the child
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sluice", "worker", "sluice.demo_app:app",
             "--concurrency", "64"], env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        return _drive(store, data, records, procs, base)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        store.close()


def _drive(store: Store, data: Path, records: int, procs: list, base: Path) -> int:
    deadline = time.monotonic() + 30
    while len(store.node_list_live(3.0)) < 2:
        if time.monotonic() > deadline:
            print(f"workers did not start; see {base}/worker-*.log", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print("2 worker processes up; triggering the pipeline")
    run_id = store.run_trigger(PIPELINE)
    assert run_id is not None
    started, killed = time.monotonic(), False
    last, last_t = 0, started
    while True:
        run = store.run_get(run_id)
        assert run is not None
        now = time.monotonic()
        rate = (run["executed"] - last) / max(1e-6, now - last_t)
        last, last_t = run["executed"], now
        print("\r" + bar(run["executed"], records, rate), end="", flush=True)
        if not killed and run["executed"] >= records * 0.3:
            victim = procs[0]
            victim.send_signal(signal.SIGKILL)
            killed = True
            print(f"\n  killed worker pid {victim.pid} with SIGKILL at "
                  f"{100 * run['executed'] / records:.0f}%: its leases lapse within 5 s and the "
                  "other worker takes over its chunks")
        if run["state"] in ("succeeded", "failed", "lost", "cancelled"):
            break
        time.sleep(0.25)
    took = time.monotonic() - started
    states = count_states(data)
    done = states.get("DONE", 0)
    print(f"\n\nrun {run_id} {run['state']} in {took:.1f}s ({run['executed'] / took:,.0f} "
          "records/s)")
    print(f"  shards {run['shards']}, loaded {run['loaded']:,}, executed {run['executed']:,}, "
          f"failed {run['failed']}, parked {run['parked']}")
    print(f"  records re-run after the kill (at most the killed node's in-flight work): "
          f"{run['reexecuted']}; stale completions rejected: {run['stale']}")
    print(f"  coupon rows DONE: {done:,}/{records:,}  other states: "
          f"{ {k: v for k, v in states.items() if k != 'DONE'} or 'none'}")
    ok = run["state"] == "succeeded" and done == records
    print("  every coupon processed, none lost." if ok else "  MISMATCH: see the worker logs in "
          f"{base}")
    return 0 if ok else 1
