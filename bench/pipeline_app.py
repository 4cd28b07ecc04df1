"""The app that ``bench/pipeline_throughput.py`` runs in its sluice worker processes.

Two pipelines over the same shard keys, each with a no-op execute; neither has a schedule (the
bench triggers them):

- ``bench_table``: ``TableSource`` over ``bench_rec_{shard}`` tables (PENDING → PROCESSING →
  DONE in the business rows, with fencing and the lost-update guard).
- ``bench_table_batch``: the same with ``@execute_batch`` (one call per chunk of records),
  a diagnostic: its records are acknowledged together instead of one durable write each.
- ``bench_memory``: a generic ``@split``/``@load`` whose records are made in memory; only a
  per-shard cursor (one row in ``bench_cursor``) is kept in PostgreSQL so that any node can
  run any load of a shard and no record is handed out twice.

Environment: ``BENCH_DATA_URL`` (SQLAlchemy URL of the business database), ``BENCH_SHARDS``,
``BENCH_PER_SHARD``, ``BENCH_BATCH`` (records per load), ``BENCH_CHUNK`` (records per chunk;
default: sluice's own choice).
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text

import sluice

DATA_URL = os.environ.get("BENCH_DATA_URL", "postgresql+psycopg://postgres@127.0.0.1/postgres")
SHARDS = [f"{i:02d}" for i in range(int(os.environ.get("BENCH_SHARDS", "25")))]
PER_SHARD = int(os.environ.get("BENCH_PER_SHARD", "8000"))
BATCH = int(os.environ.get("BENCH_BATCH", "1000"))
CHUNK = int(os.environ["BENCH_CHUNK"]) if os.environ.get("BENCH_CHUNK") else None

app = sluice.App(drain_timeout=5.0)
engine = create_engine(DATA_URL, pool_size=12, max_overflow=8,
                       connect_args={"application_name": "bench-data"})

table = app.pipeline("bench_table", batch=BATCH, chunk_size=CHUNK,
                     source=sluice.TableSource(engine, "bench_rec_{shard}", shards=SHARDS))


@table.execute
def table_noop(ctx: sluice.Context, record: dict) -> None:
    return None


table_batch = app.pipeline("bench_table_batch", batch=BATCH, chunk_size=CHUNK,
                           source=sluice.TableSource(engine, "bench_rec_{shard}", shards=SHARDS))


@table_batch.execute_batch
def table_batch_noop(ctx: sluice.Context, records: list[dict]) -> list[None]:
    return [None] * len(records)


memory = app.pipeline("bench_memory", batch=BATCH, chunk_size=CHUNK)


@memory.split
def memory_shards(ctx: sluice.Context) -> list[str]:
    return SHARDS


CURSOR_SQL = text(
    "WITH old AS (SELECT pos FROM bench_cursor WHERE shard = :shard FOR UPDATE) "
    "UPDATE bench_cursor c SET pos = LEAST(old.pos + :limit, :total) FROM old "
    "WHERE c.shard = :shard RETURNING old.pos AS start, c.pos AS stop")


@memory.load
def memory_load(ctx: sluice.Context, shard: str, limit: int) -> list[dict]:
    with engine.begin() as conn:
        row = conn.execute(CURSOR_SQL, {"shard": shard, "limit": limit,
                                        "total": PER_SHARD}).one()
    return [{"id": i, "shard": shard} for i in range(row.start, row.stop)]


@memory.execute
def memory_noop(ctx: sluice.Context, record: dict) -> None:
    return None


# -- optional: count store and source calls (``BENCH_COUNT_CALLS=prefix``) ---------------------
# Wraps the methods at run time (no library change); a thread writes the counts to
# ``{prefix}-{pid}.json`` twice a second, since a worker leaves with os._exit.


def _count_calls(prefix: str) -> None:
    import functools
    import json
    import threading
    import time
    from collections import Counter

    from sluice.store.store import Store

    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def wrap(owner: type, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def counted(*a: object, **k: object) -> object:
            with lock:
                counts[label] += 1
            return original(*a, **k)

        setattr(owner, name, counted)

    for name in dir(Store):
        if not name.startswith("_") and callable(getattr(Store, name)) and name not in (
                "open", "migrate", "close"):
            wrap(Store, name, f"store.{name}")
    for name in ("load", "fence", "complete_many", "park"):
        wrap(sluice.TableSource, name, f"TableSource.{name}")

    def dump() -> None:
        path = f"{prefix}-{os.getpid()}.json"
        threads_path = path.replace("store-calls", "thread-cpu")
        while True:
            time.sleep(0.5)
            with lock:
                data = json.dumps(dict(counts))
            _write(path, data)
            _write(threads_path, json.dumps(_thread_cpu()))

    def _write(path: str, data: str) -> None:
        with open(path + ".tmp", "w") as f:
            f.write(data)
        os.replace(path + ".tmp", path)

    threading.Thread(target=dump, name="bench-count-calls", daemon=True).start()


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, summed by Python thread name (handler
    threads under one name); a thread that ended is missed."""
    import threading

    from bench._common import cpu_seconds

    cpu: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            seconds = cpu_seconds(os.getpid(), t.native_id or 0)
        except OSError:
            continue
        name = "sluice-task (handlers)" if t.name.startswith("sluice-task") else t.name
        cpu[name] = cpu.get(name, 0.0) + seconds
    return cpu


if os.environ.get("BENCH_COUNT_CALLS"):
    _count_calls(os.environ["BENCH_COUNT_CALLS"])

