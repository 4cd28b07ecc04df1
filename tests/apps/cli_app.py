"""Jobs for the CLI tests, run by ``sluice worker tests.apps.cli_app:app`` as a real process.

Each handler appends one JSON line to $TEST_EVENTS. The store is $SLUICE_DATABASE_URL.
$SLOW_SECONDS is how long ``slow`` sleeps (ignoring cancellation, like a stubborn handler);
$TEST_DRAIN is the drain timeout.
"""

from __future__ import annotations

import os
import time

import sluice
from tests.helpers import record

EVENTS = os.environ.get("TEST_EVENTS", "/dev/null")

app = sluice.App(
    heartbeat=0.3,
    node_ttl=1.2,
    lease_ttl=1.0,
    drain_timeout=float(os.environ.get("TEST_DRAIN", "5")),
)


def _event(ctx: sluice.Context, **extra: object) -> None:
    record(
        EVENTS,
        job=ctx.job,
        run=ctx.run_id,
        at=ctx.scheduled_at.timestamp(),
        pid=os.getpid(),
        node=ctx.node.id,
        t=time.time(),
        **extra,
    )


@app.job(fixed_rate=0.5)
def tick(ctx: sluice.Context) -> None:
    _event(ctx)


@app.job
def manual(ctx: sluice.Context) -> None:
    _event(ctx)


@app.job
def slow(ctx: sluice.Context) -> None:
    _event(ctx, phase="start")
    time.sleep(float(os.environ.get("SLOW_SECONDS", "1.5")))
    _event(ctx, phase="end")
