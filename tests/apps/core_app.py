"""Jobs for the multi-process tests. Each handler appends an event line to $TEST_EVENTS.

$TEST_JOBS picks which jobs this process declares (comma separated), so one module serves
several tests without their jobs firing into each other.
"""

from __future__ import annotations

import os
import time

import sluice
from tests.helpers import record

EVENTS = os.environ.get("TEST_EVENTS", "/dev/null")
ENABLED = set(os.environ.get("TEST_JOBS", "").split(","))

app = sluice.App(heartbeat=0.5, node_ttl=2.0, lease_ttl=2.0, drain_timeout=5.0)


def _event(ctx: sluice.Context, **extra: object) -> None:
    record(EVENTS, job=ctx.job, run=ctx.run_id, at=ctx.scheduled_at.timestamp(),
           node=ctx.node.id, pid=os.getpid(), attempt=ctx.attempt, started=time.time(), **extra)


if "every_second" in ENABLED:
    @app.job(cron="* * * * * ?")
    def every_second(ctx: sluice.Context) -> None:
        _event(ctx)


if "long_single" in ENABLED:
    @app.job(fixed_rate=1, overlap="skip", max_attempts=1)
    def long_single(ctx: sluice.Context) -> None:
        _event(ctx, phase="start")
        time.sleep(float(os.environ.get("LONG_SECONDS", "3")))
        _event(ctx, phase="end")


if "broadcast" in ENABLED:
    @app.job(fixed_rate=1, routing="broadcast")
    def broadcast(ctx: sluice.Context) -> None:
        _event(ctx)


if "sharded" in ENABLED:
    @app.job(fixed_rate=1, routing="sharded", shards=24)
    def sharded(ctx: sluice.Context) -> None:
        _event(ctx, shards=ctx.shards)


if "locker" in ENABLED:
    @app.job(fixed_rate=0.2, routing="broadcast", overlap="concurrent")
    def locker(ctx: sluice.Context) -> None:
        for _ in range(int(os.environ.get("LOCK_ROUNDS", "20"))):
            with app.lock("shared-resource", ttl=5, wait=30) as lease:
                _event(ctx, phase="in", token=lease.token)
                time.sleep(0.01)
                _event(ctx, phase="out", token=lease.token)
