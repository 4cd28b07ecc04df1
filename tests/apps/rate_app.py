"""An endless no-op pipeline for the rate tests and the benchmark.

Environment: RATE_QPS (cluster rate, default 500), RATE_SHARDS (default 20), RATE_MODE
(local | global), RATE_WARMUP (seconds, default 1), RATE_HEARTBEAT (default 0.5). Every load
returns ``limit`` fresh records, so a run never ends by itself: what it executes per second is
set by the rate alone.

RATE_STATIC=<per-node rate> builds the classic design instead, for comparison: no ``qps``, the
classic batch size, and each node limiting itself to a rate computed by hand from a machine
count.
"""

from __future__ import annotations

import itertools
import os
import threading

import sluice
from sluice.rate.limiter import SmoothLimiter
from sluice.rate.sizing import classic_limit

QPS = float(os.environ.get("RATE_QPS", "500"))
SHARDS = int(os.environ.get("RATE_SHARDS", "20"))
HEARTBEAT = float(os.environ.get("RATE_HEARTBEAT", "0.5"))
STATIC = float(os.environ.get("RATE_STATIC", "0"))

app = sluice.App(heartbeat=HEARTBEAT, node_ttl=max(2.0, 4 * HEARTBEAT),
                 lease_ttl=max(2.0, 4 * HEARTBEAT), drain_timeout=2.0)
if STATIC:
    flow = app.pipeline("flow", batch=classic_limit(QPS, 5.0, SHARDS))
    _static: SmoothLimiter | None = SmoothLimiter(STATIC, warmup=1.0, catch_up=0.1)
else:
    flow = app.pipeline("flow", qps=QPS, rate_mode=os.environ.get("RATE_MODE", "local"),
                        warmup=float(os.environ.get("RATE_WARMUP", "1")))
    _static = None
_ids = itertools.count()
_lock = threading.Lock()


@flow.split
def shards(ctx: sluice.Context) -> list[str]:
    return [f"{i:03d}" for i in range(SHARDS)]


@flow.load
def load(ctx: sluice.Context, shard: str, limit: int) -> list[int]:
    with _lock:
        return [next(_ids) for _ in range(limit)]


@flow.execute
def execute(ctx: sluice.Context, record: int) -> None:
    if _static is not None:
        _static.acquire()
