"""Pipeline throughput: no-op records end to end, sluice beside PgQueuer, procrastinate and a
raw ``FOR UPDATE SKIP LOCKED`` loop, all on the same PostgreSQL.

    .venv/bin/python bench/pipeline_throughput.py [--records 200000] [--shards 25]
        [--processes 2] [--only raw,pgqueuer,procrastinate,sluice-table,sluice-memory,...]
        [--repeat N] [--profile DIR]

Each contender gets a fresh database and ``--processes`` worker processes (default 2, for this
2-core machine) and works through ``--records`` no-op records:

- sluice-table: a generic pipeline (``app.pipeline`` + ``@execute``) whose split and load come
  from ``sluice.TableSource`` over 25 tables ``bench_rec_00..24`` (records/25 rows each), run by
  ``sluice worker --concurrency 100`` processes: at most 100 records in flight each, the same
  bound as PgQueuer's batch of 100 jobs per dequeue. Load batch 1000 records, chunks as
  sluice cuts them (100 records, then a share of the batch per node once records are fast).
  Timed from ``trigger`` to the run's end (both on the database clock).
- sluice-memory: the same, with a generic ``@load`` that makes its records in memory (a cursor
  row per shard in PostgreSQL), so the business-table writes drop out and what is left is
  sluice's own coordination cost.
- sluice-table-batch (diagnostic): sluice-table with ``@execute_batch`` instead of
  ``@execute``: a chunk's records are acknowledged in one write instead of one durable write
  per record, which shows what the per-record acknowledgement costs.
- pgqueuer: ``QueueManager.run(batch_size=100, mode=drain)`` on psycopg (uvloop, as its CLI),
  async no-op entrypoint; jobs enqueued beforehand in batches.
- procrastinate: ``run_worker_async(concurrency=N, wait=False)`` with an async no-op task
  (concurrency 10 by default, pool sized to it); jobs batch-deferred beforehand.
- raw: a psycopg loop per process: claim 100 rows with ``FOR UPDATE SKIP LOCKED`` (one
  transaction), run the no-op, mark them done (a second transaction).

With ``--repeat N`` the contenders run in N interleaved rounds and each one's median run is
compared (its best is printed too): on a shared machine a slow spell then falls on all of
them. Every run prints the machine's busy CPU per record and the time stolen by the
hypervisor, which tells such spells apart.

Peers are timed from their first dequeue to their last completion (enqueueing excluded). They
come with the ``bench`` extra (``./scripts/bench pipeline_throughput`` installs it).

Targets printed: sluice ≥ 1.5 × the faster of PgQueuer and procrastinate; sluice ≥ 50 % of the
raw floor. ``--profile DIR`` also samples one sluice worker with py-spy during sluice-table
and counts store calls, and prints where the time goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench._common import (
    PostgresCpu,
    Proc,
    cpu_times,
    machine_line,
    pg_database,
    processes,
    sluice_worker,
    verdict,
    wait_until,
)

HERE = Path(__file__).resolve()
PEERS = {"pgqueuer": "pgqueuer", "procrastinate": "procrastinate"}
CONTENDERS = ["raw", "pgqueuer", "procrastinate", "sluice-table", "sluice-memory",
              "sluice-table-batch"]
JOBS = {"sluice-table": "bench_table", "sluice-memory": "bench_memory",
        "sluice-table-batch": "bench_table_batch"}


def ensure_installed(modules: dict[str, str]) -> None:
    """The peers (module -> package) must be installed: they come with the ``bench`` extra."""
    missing = [pkg for mod, pkg in modules.items() if importlib.util.find_spec(mod) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run ./scripts/bench pipeline_throughput, or "
                 "pip install -e '.[bench]' first")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# -- roles run in child processes ------------------------------------------------------------


class Barrier:
    """Children say they are ready (connected, imported) and wait for the parent's go."""

    def __init__(self, folder: str, name: str) -> None:
        self.folder = Path(folder)
        self.name = name

    def ready_and_wait(self) -> None:
        (self.folder / f"ready-{self.name}-{os.getpid()}").touch()
        while not (self.folder / "go").exists():
            time.sleep(0.005)


def role_raw(url: str, out: str, barrier: Barrier, batch: int) -> None:
    claim = ("WITH c AS (SELECT id FROM raw_jobs WHERE status = 'pending' ORDER BY id "
             "LIMIT %s FOR UPDATE SKIP LOCKED) UPDATE raw_jobs j SET status = 'running', "
             "owner = %s, attempts = attempts + 1 FROM c WHERE j.id = c.id "
             "RETURNING j.id, j.payload")
    done = "UPDATE raw_jobs SET status = 'done', owner = NULL WHERE id = ANY(%s)"
    count, first = 0, None
    owner = f"raw:{os.getpid()}"
    with psycopg.connect(url) as conn:
        barrier.ready_and_wait()
        while True:
            with conn.transaction():
                rows = conn.execute(claim, (batch, owner)).fetchall()
            if not rows:
                break
            if first is None:
                first = time.time()
            for _row in rows:  # the no-op "execute"
                pass
            with conn.transaction():
                conn.execute(done, ([r[0] for r in rows],))
            count += len(rows)
    Path(out).write_text(json.dumps({"first": first, "end": time.time(), "count": count}))


def role_pgqueuer(url: str, out: str, barrier: Barrier, batch: int) -> None:
    import asyncio

    from pgqueuer import PsycopgDriver, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    state: dict[str, Any] = {"count": 0, "first": None}

    async def run() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        qm = QueueManager(Queries(PsycopgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            if state["first"] is None:
                state["first"] = time.time()
            state["count"] += 1

        await asyncio.get_running_loop().run_in_executor(None, barrier.ready_and_wait)
        await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    Path(out).write_text(json.dumps({"first": state["first"], "end": time.time(),
                                     "count": state["count"]}))


def role_procrastinate(url: str, out: str, barrier: Barrier, concurrency: int) -> None:
    import asyncio

    import procrastinate

    state: dict[str, Any] = {"count": 0, "first": None}
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=url, min_size=2, max_size=concurrency + 2))

    @app.task(name="noop")
    async def noop(n: int) -> None:
        if state["first"] is None:
            state["first"] = time.time()
        state["count"] += 1

    async def run() -> None:
        async with app.open_async():
            await asyncio.get_running_loop().run_in_executor(None, barrier.ready_and_wait)
            await app.run_worker_async(concurrency=concurrency, wait=False,
                                       install_signal_handlers=False)

    asyncio.run(run())
    Path(out).write_text(json.dumps({"first": state["first"], "end": time.time(),
                                     "count": state["count"]}))


ROLES = {"raw": role_raw, "pgqueuer": role_pgqueuer, "procrastinate": role_procrastinate}


# -- setting up and running each contender ---------------------------------------------------


def _exec(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for st in statements:
            conn.execute(st.encode())


def _settle(url: str) -> None:
    """Same start for everyone: statistics fresh, dirty pages written."""
    _exec(url, "VACUUM ANALYZE", "CHECKPOINT")


def setup_raw(url: str, records: int) -> None:
    _exec(url,
          "CREATE TABLE raw_jobs (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT "
          "'pending', owner text, attempts int NOT NULL DEFAULT 0, payload jsonb NOT NULL)",
          "CREATE INDEX raw_jobs_pending ON raw_jobs (id) WHERE status = 'pending'",
          f"INSERT INTO raw_jobs (payload) SELECT jsonb_build_object('n', g) "
          f"FROM generate_series(1, {records}) g")


def setup_pgqueuer(url: str, records: int) -> None:
    import asyncio

    from pgqueuer import PsycopgDriver, Queries

    async def go() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        q = Queries(PsycopgDriver(conn))
        await q.install()
        step = 10_000
        for start in range(0, records, step):
            n = min(step, records - start)
            await q.enqueue(["noop"] * n, [json.dumps({"n": start + i}).encode()
                                           for i in range(n)], [0] * n)
        await conn.close()

    asyncio.run(go())


def setup_procrastinate(url: str, records: int) -> None:
    import asyncio
    import logging

    import procrastinate

    logging.getLogger("procrastinate").setLevel(logging.ERROR)  # "App in __main__" notice
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(n: int) -> None:
        return None

    async def go() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            step = 10_000
            for start in range(0, records, step):
                await noop.batch_defer_async(*({"n": start + i} for i in
                                               range(min(step, records - start))))

    asyncio.run(go())


def run_peer(name: str, url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ({"raw": setup_raw, "pgqueuer": setup_pgqueuer, "procrastinate": setup_procrastinate}
     [name])(url, args.records)
    _settle(url)
    sync = tmp / f"sync-{name}"
    sync.mkdir()
    param = {"raw": args.raw_batch, "pgqueuer": args.pgqueuer_batch,
             "procrastinate": args.procrastinate_concurrency}[name]
    outs = [tmp / f"{name}-{i}.json" for i in range(args.processes)]
    procs = [Proc([sys.executable, str(HERE), "--role", name, "--url", url, "--out", str(o),
                   "--sync", str(sync), "--param", str(param)], {}, tmp / f"{name}-{i}.log")
             for i, o in enumerate(outs)]
    with processes(procs):
        wait_until(lambda: len(list(sync.glob("ready-*"))) >= args.processes, 120, 0.02,
                   f"{name} workers to connect")
        cpu0 = _cpu_now()
        (sync / "go").touch()
        for p in procs:
            code = p.wait(timeout=args.timeout)
            if code != 0:
                raise RuntimeError(f"{name} worker exited {code}: "
                                   f"{p.log_path.read_text()[-2000:]}")
        cpu = _cpu_since(cpu0)
    results = [json.loads(o.read_text()) for o in outs]
    count = sum(r["count"] for r in results)
    first = min(r["first"] for r in results if r["first"] is not None)
    end = max(r["end"] for r in results)
    return {"name": name, "records": count, "seconds": end - first,
            "per_process": [r["count"] for r in results], "cpu": cpu}


def _cpu_now() -> tuple[float, float, PostgresCpu]:
    return (*cpu_times(), PostgresCpu())


def _cpu_since(start: tuple[float, float, PostgresCpu]) -> tuple[float, float, float]:
    """Machine busy and steal seconds, and PostgreSQL's share of busy, since ``start``."""
    busy, steal = cpu_times()
    return busy - start[0], steal - start[1], start[2].stop()


def setup_sluice_tables(url: str, shards: list[str], per_shard: int) -> None:
    import sluice

    ddl = sluice.TableSource(url, "bench_rec_{shard}", shards=shards).state_ddl()
    statements = []
    for s in shards:
        statements += [
            f"CREATE TABLE bench_rec_{s} (id bigint PRIMARY KEY, payload text NOT NULL, {ddl})",
            f"CREATE INDEX bench_rec_{s}_status ON bench_rec_{s} (status, id)",
            f"INSERT INTO bench_rec_{s} (id, payload) SELECT g, 'record ' || g "
            f"FROM generate_series(1, {per_shard}) g"]
    _exec(url, *statements)


def _xacts(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def run_sluice(variant: str, url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import sluice

    shards = [f"{i:02d}" for i in range(args.shards)]
    per_shard = args.records // args.shards
    records = per_shard * args.shards
    job = JOBS[variant]
    if variant != "sluice-memory":
        setup_sluice_tables(url, shards, per_shard)
    else:
        _exec(url, "CREATE TABLE bench_cursor (shard text PRIMARY KEY, pos int NOT NULL)",
              "INSERT INTO bench_cursor SELECT to_char(g, 'FM00'), 0 "
              f"FROM generate_series(0, {args.shards - 1}) g")
    store = sluice.App(url).store  # migrates the store schema once, before the workers start
    _settle(url)
    env = {"BENCH_DATA_URL": url.replace("postgresql://", "postgresql+psycopg://"),
           "BENCH_SHARDS": str(args.shards), "BENCH_PER_SHARD": str(per_shard),
           "BENCH_BATCH": str(args.sluice_batch), "BENCH_CHUNK": str(args.sluice_chunk or "")}
    profile = args.profile and variant == _profiled(args)
    if profile:
        env["BENCH_COUNT_CALLS"] = str(args.profile / "store-calls")
    wargs = ["--concurrency", str(args.sluice_concurrency)]
    procs = [sluice_worker("bench.pipeline_app:app", url, tmp / f"{variant}-{i}.log", env, wargs)
             for i in range(args.processes)]
    profiler = None
    with processes(procs):
        wait_until(lambda: len(store.node_list_live(5.0)) >= args.processes, 120, 0.05,
                   "sluice workers to register")
        time.sleep(1.5)  # one heartbeat: every node sees the others before work is planned
        if profile:
            profiler = _start_profiler(procs[0].pid, args.profile)
        xacts0 = _xacts(url)
        cpu0 = _cpu_now()
        app = sluice.App(url)
        run_id = app.trigger(job)
        run = wait_until(lambda: (lambda r: r if r and r["finished_at"] else None)(
            store.run_get(run_id)), args.timeout, 0.05, f"run {run_id} of {job} to end")
        pg_apps = cpu0[2].by_application(url)
        cpu = _cpu_since(cpu0)
        xacts = _xacts(url) - xacts0
        if profiler is not None:
            profiler.stop()
    if run["state"] != "succeeded" or run["executed"] != records:
        raise RuntimeError(f"{variant}: run ended {run['state']} with {run['executed']} of "
                           f"{records} executed: {run}")
    if variant != "sluice-memory":
        with psycopg.connect(url) as conn:
            done = sum(conn.execute(f"SELECT count(*) FROM bench_rec_{s} WHERE status = 'DONE'"
                                    ).fetchone()[0] for s in shards)
        if done != records:
            raise RuntimeError(f"{variant}: only {done} of {records} rows are DONE")
    with psycopg.connect(url) as conn:  # chunk sizes are sluice's choice unless given
        chunks = conn.execute("SELECT count(*) FROM sluice_tasks WHERE run_id = %s AND "
                              "kind = 'exec'", (run_id,)).fetchone()[0]
    return {"name": variant, "records": run["executed"],
            "seconds": run["finished_at"] - run["created_at"], "xacts": xacts, "chunks": chunks,
            "reexecuted": run["reexecuted"], "stale": run["stale"], "cpu": cpu,
            "pg_apps": pg_apps}


# -- profiling -------------------------------------------------------------------------------


class _Profiler:
    def __init__(self, pid: int, folder: Path) -> None:
        self.raw = folder / "sluice-worker.collapsed"
        self.proc = subprocess.Popen(
            [_py_spy(), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
             "--threads", "--gil", "--output", str(self.raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=open(folder / "py-spy.log", "wb"))  # noqa: SIM115

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _profiled(args: argparse.Namespace) -> str | None:
    """The sluice variant ``--profile`` looks at: the first one run."""
    return next((v for v in args.only.split(",") if v.startswith("sluice")), None)


def _py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        sys.exit("py-spy is missing: pip install -e '.[bench]'")
    return str(exe)


def _start_profiler(pid: int, folder: Path) -> _Profiler:
    folder.mkdir(parents=True, exist_ok=True)
    return _Profiler(pid, folder)


def summarise_profile(folder: Path, top: int = 25) -> None:
    """Where one sluice worker's threads spent their samples (py-spy collapsed stacks)."""
    raw = folder / "sluice-worker.collapsed"
    if not raw.exists():
        print(f"  (no profile: see {folder / 'py-spy.log'})")
        return
    by_thread: Counter[str] = Counter()
    handlers: set[str] = set()
    inclusive: dict[str, Counter[str]] = {}
    leaf: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread = frames[0]
        if "sluice-task" in thread:
            handlers.add(thread)
            thread = "sluice-task (handler threads)"
        count = int(n)
        by_thread[thread] += count
        seen = set()
        for f in frames[1:]:
            name = _frame(f)
            if name not in seen:
                inclusive.setdefault(thread, Counter())[name] += count
                seen.add(name)
        leaf.setdefault(thread, Counter())[_frame(frames[-1])] += count
    total = sum(by_thread.values())
    print(f"  py-spy samples of one worker at 250 Hz, of the thread holding the GIL: where its "
          f"Python work goes ({total} samples; the {len(handlers)} handler threads are "
          "summed)")
    for thread, n in by_thread.most_common(6):
        print(f"\n  thread {thread}: {n} samples")
        print("    inclusive (function: % of this thread's samples):")
        for name, c in inclusive[thread].most_common(top):
            if "sluice" in name or "sqlalchemy" in name.lower() or "psycopg" in name:
                print(f"      {100 * c / n:5.1f}%  {name}")
        print("    leaf (where the thread actually was):")
        for name, c in leaf[thread].most_common(8):
            print(f"      {100 * c / n:5.1f}%  {name}")


def _frame(f: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = f.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def print_thread_cpu(folder: Path, records: int) -> None:
    """CPU of each kind of thread, both workers, from start to end (startup included)."""
    total: Counter[str] = Counter()
    for f in sorted(folder.glob("thread-cpu-*.json")):
        total.update(json.loads(f.read_text()))
    if total:
        print(f"\n  worker CPU by thread, both workers: {sum(total.values()):.1f} s")
        for name, seconds in total.most_common(8):
            print(f"    {seconds:6.2f} s  {1e6 * seconds / records:5.1f} µs per record  {name}")


def print_store_calls(folder: Path, chunks: int, records: int) -> None:
    files = sorted(folder.glob("store-calls-*.json"))
    if not files:
        return
    total: Counter[str] = Counter()
    for f in files:
        total.update(json.loads(f.read_text()))
    calls = sum(total.values())
    print(f"\n  store and source calls, both workers ({chunks} chunks, {records} records): "
          f"{calls} calls, {calls / chunks:.1f} per chunk of {records // chunks}")
    for name, n in total.most_common():
        print(f"    {n:>8}  {n / chunks:7.2f}/chunk  {name}")


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--shards", type=int, default=25)
    ap.add_argument("--processes", type=int, default=2, help="worker processes per contender")
    ap.add_argument("--only", default=",".join(CONTENDERS), help="comma separated contenders")
    ap.add_argument("--sluice-concurrency", type=int, default=100,
                    help="records in flight per sluice worker (its --concurrency)")
    ap.add_argument("--sluice-batch", type=int, default=1000, help="records per load")
    ap.add_argument("--sluice-chunk", type=int, default=None,
                    help="records per chunk (default: sluice's own, see chunk_size)")
    ap.add_argument("--pgqueuer-batch", type=int, default=100, help="PgQueuer dequeue batch")
    ap.add_argument("--procrastinate-concurrency", type=int, default=10)
    ap.add_argument("--raw-batch", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds over all contenders; the median run of each is compared")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per contender")
    ap.add_argument("--profile", type=Path,
                    help="folder for a py-spy profile of the first sluice variant run")
    # child roles
    ap.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--sync", help=argparse.SUPPRESS)
    ap.add_argument("--param", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        ROLES[args.role](args.url, args.out, Barrier(args.sync, args.role), args.param)
        return 0

    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(only) - set(CONTENDERS)
    if unknown:
        ap.error(f"unknown contender(s) {sorted(unknown)}; choose from {CONTENDERS}")
    ensure_installed({m: p for m, p in PEERS.items() if m in only})
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
        for old in args.profile.glob("store-calls-*.json"):
            old.unlink()

    print(machine_line())
    print(f"workload: {args.records} no-op records, {args.shards} shards, {args.processes} "
          f"worker processes per contender; sluice concurrency {args.sluice_concurrency}, "
          f"load batch {args.sluice_batch}, chunk {args.sluice_chunk or 'auto'}; PgQueuer "
          f"{_version('pgqueuer')} batch_size {args.pgqueuer_batch}; procrastinate "
          f"{_version('procrastinate')} concurrency {args.procrastinate_concurrency}; raw "
          f"claim {args.raw_batch}\n", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as d:
        tmp = Path(d)
        for round_ in range(1, args.repeat + 1):
            for name in [c for c in CONTENDERS if c in only]:
                print(f"running {name}" + (f" (round {round_})" if args.repeat > 1 else "")
                      + " ...", flush=True)
                res = _run_one(name, args, tmp / f"{name}-{round_}")
                runs.setdefault(name, []).append(res)
                extra = ""
                if "xacts" in res:
                    extra = (f"; {res['xacts']} PostgreSQL transactions = "
                             f"{res['xacts'] / res['chunks']:.1f} per chunk ({res['chunks']} "
                             f"chunks of {res['records'] / res['chunks']:.0f} records on "
                             "average)")
                busy, steal, pg = res["cpu"]
                print(f"  {res['records']} records in {res['seconds']:.2f} s = "
                      f"{res['rate']:,.0f} records/s{extra}; machine CPU {busy:.1f} s = "
                      f"{1e6 * busy / res['records']:.0f} µs per record (PostgreSQL "
                      f"{1e6 * pg / res['records']:.0f}), steal {steal:.1f} s", flush=True)
                if res.get("pg_apps"):
                    print("  PostgreSQL CPU by connection: " + ", ".join(
                        f"{app} {1e6 * sec / res['records']:.0f} µs per record"
                        for app, sec in sorted(res["pg_apps"].items(), key=lambda a: -a[1])))
    # the median run of each contender (its best too, with --repeat): rounds interleave the
    # contenders, so a slow spell of the machine falls on all of them
    results = {name: sorted(rs, key=lambda r: r["rate"])[len(rs) // 2] for name, rs in
               runs.items()}
    if args.repeat > 1:
        print("\nbest of each contender: " + ", ".join(
            f"{name} {max(r['rate'] for r in rs):,.0f}/s" for name, rs in runs.items()))
    _report(results, args)
    return 0


def _run_one(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True)
    with pg_database(name.replace("-", "_")) as url:
        res = run_sluice(name, url, args, tmp) if name.startswith("sluice") else \
            run_peer(name, url, args, tmp)
    res["rate"] = res["records"] / res["seconds"]
    return res


def _report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{'contender':<20}{'records':>9}{'seconds':>10}{'records/s':>12}")
    print("-" * 51)
    for name, r in results.items():
        print(f"{name:<20}{r['records']:>9}{r['seconds']:>10.2f}{r['rate']:>12,.0f}")
    peers = [results[p] for p in ("pgqueuer", "procrastinate") if p in results]
    raw = results.get("raw")
    print("\ntargets:")
    for variant in ("sluice-table", "sluice-memory", "sluice-table-batch"):
        s = results.get(variant)
        if s is None:
            continue
        if peers:
            best = max(peers, key=lambda r: r["rate"])
            ratio = s["rate"] / best["rate"]
            print(f"  {variant} vs the faster peer ({best['name']}, {best['rate']:,.0f}/s): "
                  f"{ratio:.2f}× (target ≥ 1.5×) {verdict(ratio >= 1.5)}")
        if raw is not None:
            ratio = s["rate"] / raw["rate"]
            print(f"  {variant} vs the raw SKIP LOCKED floor ({raw['rate']:,.0f}/s): "
                  f"{100 * ratio:.0f}% (target ≥ 50%) {verdict(ratio >= 0.5)}")
    profiled = _profiled(args)
    if args.profile and profiled in results:
        print(f"\nprofile of one {profiled} worker ({args.profile}):")
        summarise_profile(args.profile)
        s = results[profiled]
        print_store_calls(args.profile, s["chunks"], s["records"])
        print_thread_cpu(args.profile, s["records"])


if __name__ == "__main__":
    sys.exit(main())
