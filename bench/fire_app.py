"""The app that ``bench/fire_lag.py`` runs in its worker processes.

One every-second cron job whose handler records its fire lag (handler start minus the scheduled
instant), plus ``BENCH_IDLE_JOBS`` cron jobs that are never due during a run (03:00 daily).
Events go to ``BENCH_EVENTS``, one JSON line each.
"""

from __future__ import annotations

import os
import time

import sluice
from bench._common import append_event

EVENTS = os.environ.get("BENCH_EVENTS", "/dev/null")
IDLE_JOBS = int(os.environ.get("BENCH_IDLE_JOBS", "0"))
PID = os.getpid()

app = sluice.App(drain_timeout=5.0)


@app.job(cron="* * * * * ?")
def every_second(ctx: sluice.Context) -> None:
    lag = time.time() - ctx.scheduled_at.timestamp()
    append_event(EVENTS, at=ctx.scheduled_at.timestamp(), lag=lag, pid=PID, run=ctx.run_id)


def _idle(ctx: sluice.Context) -> None:
    append_event(EVENTS, idle=ctx.job, pid=PID)


for _i in range(IDLE_JOBS):
    app.job(_idle, name=f"idle_{_i:04d}", cron="0 0 3 * * ?")
