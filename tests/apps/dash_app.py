"""The app the dashboard, metrics and alert tests drive, run by real ``sluice worker`` processes.

$TEST_EVENTS gets one JSON line per job run; $TEST_DATA is a SQLite file of shard tables for
the ``bulk`` pipeline (made by ``build_data``); $TEST_WEBHOOK, when set, receives the alerts;
records whose id is a multiple of $TEST_PARK_EVERY always fail (and get parked). With
$TEST_BUSINESS_URL the app has an outbox there, whose broker is down while $TEST_FAIL_FLAG
exists.
"""

from __future__ import annotations

import os
import sqlite3
import time

from sqlalchemy import create_engine

import sluice
from sluice.alerts import webhook
from tests.helpers import record

EVENTS = os.environ.get("TEST_EVENTS", "/dev/null")
DATA = os.environ.get("TEST_DATA", "/nonexistent/dash-data.db")
PARK_EVERY = int(os.environ.get("TEST_PARK_EVERY", "0"))
EXEC_SECONDS = float(os.environ.get("TEST_EXEC_SECONDS", "0.002"))
SHARDS = ["01", "02", "03", "04"]

app = sluice.App(heartbeat=0.3, node_ttl=1.5, lease_ttl=1.5, drain_timeout=3.0)
if os.environ.get("TEST_WEBHOOK"):
    app.on_alert(webhook(os.environ["TEST_WEBHOOK"]))


def _event(ctx: sluice.Context) -> None:
    record(EVENTS, job=ctx.job, run=ctx.run_id, pid=os.getpid(), node=ctx.node.id, t=time.time())


@app.job(fixed_rate=0.5, routing="broadcast")
def tick(ctx: sluice.Context) -> None:
    _event(ctx)


@app.job(fixed_rate=0.5)
def control(ctx: sluice.Context) -> None:
    _event(ctx)


@app.job(max_attempts=1)
def broken(ctx: sluice.Context) -> None:
    raise RuntimeError("broken on purpose")


source = sluice.TableSource(create_engine(f"sqlite:///{DATA}", connect_args={"timeout": 60}),
                            "item_{shard}", shards=SHARDS)
bulk = app.pipeline("bulk", source=source, qps=400, batch=200, chunk_size=20, max_attempts=2,
                    record_backoff=(0.01, 0.05))


@bulk.execute
def send(ctx: sluice.Context, item: dict) -> None:
    time.sleep(EXEC_SECONDS)
    if PARK_EVERY and item["id"] % PARK_EVERY == 0:
        raise ValueError(f"item {item['id']} is bad on purpose")


def deliver(message: sluice.publishers.OutboxMessage) -> None:
    if os.path.exists(os.environ.get("TEST_FAIL_FLAG", "/nonexistent")):
        raise ConnectionError("broker down on purpose")
    record(EVENTS, job="outbox", id=message.id, t=time.time())


if os.environ.get("TEST_BUSINESS_URL"):  # an outbox, relayed by the workers
    outbox = sluice.Outbox(create_engine(os.environ["TEST_BUSINESS_URL"]),
                           publisher=sluice.publishers.Callable(deliver), backoff=(0.05, 0.2))
    app.add_outbox_relay(outbox, every=0.2)


def build_data(path: str, records: int) -> None:
    """``records`` items spread over the shard tables, all pending."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    for n, shard in enumerate(SHARDS):
        table = f"item_{shard}"
        conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, {source.state_ddl()})')
        conn.executemany(f'INSERT INTO "{table}" (id) VALUES (?)',
                         [(i,) for i in range(n + 1, records + 1, len(SHARDS))])
    conn.commit()
    conn.close()
