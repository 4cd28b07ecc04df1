"""Pipelines for the multi-process pipeline tests (``tests/test_pipeline.py``).

Configured through the environment, so one module serves several tests:

- ``TEST_PIPELINES``: which pipelines this process declares (comma separated):
  ``coupons`` (a ``TableSource`` over ``coupon_{shard}`` tables), ``grouped`` (generic
  split/load/execute with ``groups=2``), ``lostupdate`` (a ``TableSource`` whose execute
  re-marks one record pending while it runs).
- ``TEST_DATA_URL``: the SQLAlchemy URL of the business database holding the tables.
- ``TEST_SHARDS``: number of shards; ``TEST_PER_SHARD``: records per shard (``grouped``);
  ``TEST_BATCH`` / ``TEST_CHUNK``: the ``coupons`` load batch and chunk size.
- ``TEST_EXEC_SLEEP``: seconds each ``coupons`` record takes; ``TEST_DRAIN``: drain time-out.
- ``TEST_EVENTS``: the events file; every load and execute appends one JSON line to it with a
  single ``write`` on an ``O_APPEND`` descriptor, so a SIGKILL never leaves half a line and
  never loses a line that was written.
- ``TEST_MARKERS``: a directory for once-only markers (files created with ``O_EXCL``),
  which keep the ``grouped`` loader finite and make ``lostupdate`` re-mark only once.
- ``TEST_LOST_KEY`` / ``TEST_LOST_TABLE``: the record that ``lostupdate`` re-marks pending
  during its own first execute.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, event

import sluice

EVENTS = os.environ.get("TEST_EVENTS", "/dev/null")
ENABLED = set(os.environ.get("TEST_PIPELINES", "").split(","))
DATA_URL = os.environ.get("TEST_DATA_URL", "sqlite:///pipeline-data.db")
SHARDS = int(os.environ.get("TEST_SHARDS", "25"))
PER_SHARD = int(os.environ.get("TEST_PER_SHARD", "10"))
MARKERS = Path(os.environ.get("TEST_MARKERS", "/tmp"))
PID = os.getpid()

app = sluice.App(heartbeat=0.5, node_ttl=2.0, lease_ttl=3.0,
                 drain_timeout=float(os.environ.get("TEST_DRAIN", "5.0")))
EXEC_SLEEP = float(os.environ.get("TEST_EXEC_SLEEP", "0"))  # seconds per coupons record

_fd: int | None = None
_fd_lock = threading.Lock()


def emit(**event_: object) -> None:
    """Append one event line with one ``write`` (atomic for O_APPEND, unbuffered)."""
    global _fd
    if _fd is None:
        with _fd_lock:
            if _fd is None:
                _fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, (json.dumps(event_, separators=(",", ":")) + "\n").encode())


def once(name: str) -> bool:
    """True the first time ``name`` is asked for, across every process of the test."""
    try:
        os.close(os.open(MARKERS / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


def data_engine(url: str):  # type: ignore[no-untyped-def]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        return engine
    return create_engine(url, pool_size=10, max_overflow=10)


def shard_keys(count: int) -> list[str]:
    return [f"{i:02d}" for i in range(count)]


if "coupons" in ENABLED:
    coupons = sluice.TableSource(data_engine(DATA_URL), "coupon_{shard}",
                                 shards=shard_keys(SHARDS))
    remind = app.pipeline("remind", source=coupons, batch=int(os.environ.get("TEST_BATCH", "500")),
                          chunk_size=int(os.environ.get("TEST_CHUNK", "100")), max_attempts=5)

    @remind.execute
    def send_reminder(ctx: sluice.Context, coupon: dict) -> None:
        emit(e="exec", id=coupon["id"], pid=PID, token=ctx.fencing_token)
        if EXEC_SLEEP:
            time.sleep(EXEC_SLEEP)


if "grouped" in ENABLED:
    grouped = app.pipeline("grouped", groups=2, batch=50, chunk_size=10)

    @grouped.split
    def split_numbers(ctx: sluice.Context) -> list[int]:
        return list(range(1, SHARDS + 1))

    @grouped.load
    def load_numbers(ctx: sluice.Context, shard: int, limit: int) -> list[dict]:
        # One batch per (run, shard): the marker file is the loader's cursor, kept outside the
        # store, so a shard's second load call returns nothing and the shard ends.
        if not once(f"grouped-{ctx.run_id}-{shard}"):
            return []
        emit(e="load", run=ctx.run_id, shard=shard, pid=PID,
             group=ctx.node.group)
        return [{"shard": shard, "n": n} for n in range(min(limit, PER_SHARD))]

    @grouped.execute
    def execute_number(ctx: sluice.Context, rec: dict) -> None:
        emit(e="exec", run=ctx.run_id, shard=rec["shard"], n=rec["n"], pid=PID,
             group=ctx.node.group)


if "lostupdate" in ENABLED:
    LOST_KEY = int(os.environ.get("TEST_LOST_KEY", "0"))
    LOST_TABLE = os.environ.get("TEST_LOST_TABLE", "order_00")
    orders_engine = data_engine(DATA_URL)
    orders = sluice.TableSource(orders_engine, "order_{shard}", shards=shard_keys(SHARDS))
    lost = app.pipeline("lostupdate", source=orders, batch=20, chunk_size=5, max_attempts=3)

    @lost.execute
    def process_order(ctx: sluice.Context, order: dict) -> None:
        emit(e="exec", id=order["id"], pid=PID, version=order["version"])
        if order["id"] == LOST_KEY and once(f"lost-{LOST_KEY}"):
            # A concurrent business change re-marks the order while it is being processed:
            # its own transaction, committed before this execution completes.
            with orders_engine.begin() as conn:
                changed = sluice.mark_pending(conn, LOST_TABLE, LOST_KEY)
            emit(e="remarked", id=LOST_KEY, changed=changed)
