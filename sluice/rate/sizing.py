"""How many records a loader takes from one shard, per load call.

The starting point is the classic formula ``max(1, qps × interval / shards)``: every shard
loaded once per interval fills exactly one interval of execution. Then it adapts to what is
already loaded and not yet executed (the backlog, counted over the pipeline's active runs):

- ``want = qps × interval`` is what the cluster executes in one interval;
- when ``want − backlog`` has no room for one classic batch, the loader takes nothing now and
  looks again when the backlog should have drained enough (no over-fetch: records claimed long
  before they run would outlive their leases and be fetched again);
- otherwise it takes at least the classic batch, more when only a few shards are still open
  and executors would sit idle (``room / open loaders``), never more than the room left.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class LoadSize:
    """``limit`` records now, or none and look again after ``defer`` seconds."""

    limit: int
    defer: float = 0.0


def classic_limit(qps: float, interval: float, shards: int) -> int:
    """``max(1, qps × interval / shards)``."""
    return max(1, int(qps * interval / max(1, shards)))


def load_size(qps: float, interval: float, shards: int, backlog: int,
              open_loaders: int, jitter: float | None = None) -> LoadSize:
    """The adaptive load size (see the module docstring). ``jitter`` in [0, 1) spreads the
    wake-ups of deferred loaders (random when None)."""
    base = classic_limit(qps, interval, shards)
    want = max(1, int(qps * interval))
    room = want - max(0, backlog)
    if room < min(base, want):
        drain = (backlog - (want - base)) / qps
        spread = 1.0 + 0.5 * (random.random() if jitter is None else jitter)
        return LoadSize(limit=0, defer=min(interval, max(0.05, drain)) * spread)
    return LoadSize(limit=max(1, min(room, max(base, room // max(1, open_loaders)))))
