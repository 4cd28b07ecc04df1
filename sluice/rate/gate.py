"""A node's permits for every rate-limited job of its app, re-divided on every heartbeat.

``RateGate`` holds one limiter per job with a rate. In ``rate_mode="local"`` it is a
``SmoothLimiter`` at this node's share of the job's ``qps`` (``sluice.rate.share``); in
``"global"`` a ``GlobalBucket`` that books permits on one GCRA row in the store. The heartbeat
calls ``refresh`` with the membership and ``sluice set`` overrides it just read, so a node that
dies, joins or a new ``qps`` changes every node's rate within a heartbeat or two.

The gate also counts the permits it granted per job (records started) and keeps a short
history of that counter in database time, from which the node reports its achieved rate over
the last ``WINDOW`` seconds in its heartbeat row: no row per record anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sluice.rate.limiter import SmoothLimiter
from sluice.rate.share import Member, members_from_rows, serving, shares

if TYPE_CHECKING:
    from sluice.job import JobSpec
    from sluice.store import Store

log = logging.getLogger("sluice.rate")
WINDOW = 10.0  # seconds of history behind the reported achieved rate
FRESH_BEATS = 2.5  # a node missing this many heartbeats no longer gets a share
CATCH_UP = 0.1  # seconds of missed permits a node that fell behind may still take (a 10% burst)
# A job with this many callers waiting for permits on this node has work enough here: the node
# claims no more of its execute chunks (Worker._claim_and_dispatch), so they stay claimable by
# nodes with room instead of queueing behind this node's share of the rate.
SATURATED = 4


class GlobalBucket:
    """Strict mode: permits booked on one shared GCRA bucket in the store, ``batch`` per round
    trip, handed out locally at the bucket's spacing. Exact whatever the number of nodes: one
    permit per ``1 / qps``, and slots nobody booked in the last ``CATCH_UP`` seconds may
    still be booked (nodes busy with their previous batch do not lose them)."""

    def __init__(self, store: Store, name: str, qps: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.name, self.rate = store, name, qps
        self._clock = clock
        self._lock = threading.Lock()
        self._left = 0
        self._next = 0.0

    def set_rate(self, qps: float) -> None:
        with self._lock:
            self.rate = qps

    def batch(self) -> int:
        """Permits per round trip: one for slow rates, about 20 ms worth for fast ones."""
        return max(1, min(200, int(self.rate / 50)))

    def reserve(self, permits: int = 1) -> float:
        """Book ``permits``; return the seconds to wait before using them."""
        with self._lock:
            emission = 1.0 / self.rate
            if self._left < permits:
                size = max(permits, self.batch())
                due = self.store.rate_reserve(self.name, size, emission, catch_up=CATCH_UP)
                self._next = self._clock() + due  # in the past when catching up
                self._left = size
            start = self._next
            self._next += permits * emission
            self._left -= permits
        return max(0.0, start - self._clock())

    def acquire(self, permits: int = 1) -> float:
        wait = self.reserve(permits)
        if wait > 0:
            time.sleep(wait)
        return wait

    async def aacquire(self, permits: int = 1) -> float:
        wait = await asyncio.to_thread(self.reserve, permits)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


@dataclass
class JobRate:
    """One job's limiter on this node and what the node reports about it."""

    spec: JobSpec
    limiter: SmoothLimiter | GlobalBucket | None = None
    qps: float | None = None
    share: float = 0.0
    granted: int = 0
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))
    loader: int | None = None  # the last load size this node used (pipelines)
    hold_until: float = 0.0  # monotonic time before which a joining node grants nothing
    waiting: int = 0  # callers blocked in acquire right now


class RateGate:
    """Blocks callers until their job's permits are due; see the module docstring."""

    def __init__(self, jobs: Iterable[JobSpec], node_id: str, weight: float,
                 group: str | None, heartbeat: float, store: Store,
                 groups_of: Callable[[str], tuple[list[str], bool]]) -> None:
        self.node_id, self.weight, self.group = node_id, float(weight), group
        self.heartbeat = heartbeat
        self.store = store
        self._groups_of = groups_of
        self._lock = threading.Lock()
        self.jobs = {j.name: JobRate(spec=j) for j in jobs}

    @property
    def serves(self) -> list[str]:
        return sorted(self.jobs)

    def me(self) -> Member:
        return Member(id=self.node_id, weight=self.weight, group=self.group,
                      serves=frozenset(self.jobs))

    # -- permits ---------------------------------------------------------------------------

    def acquire(self, job: str, permits: int = 1) -> float:
        """Block until ``permits`` of ``job`` are due (at once for a job without a rate)."""
        rate = self.jobs.get(job)
        if rate is None:
            return 0.0
        if rate.limiter is None:  # nothing to wait for: only count them
            with self._lock:
                rate.granted += permits
            return 0.0
        self._enter(job)
        try:
            held = self._held(rate)
            if held:
                time.sleep(held)
            waited = rate.limiter.acquire(permits) if rate.limiter is not None else 0.0
        finally:
            self._leave(rate, permits)
        return held + waited

    def _enter(self, job: str) -> JobRate | None:
        """The job's rate, counting one more caller waiting on it (None: no such job)."""
        rate = self.jobs.get(job)
        if rate is not None:
            with self._lock:
                rate.waiting += 1
        return rate

    def _leave(self, rate: JobRate, permits: int) -> None:
        with self._lock:
            rate.waiting -= 1
            rate.granted += permits

    def _held(self, rate: JobRate) -> float:
        return max(0.0, rate.hold_until - time.monotonic()) if rate.hold_until else 0.0

    async def aacquire(self, job: str, permits: int = 1) -> float:
        rate = self._enter(job)
        if rate is None:
            return 0.0
        try:
            held = self._held(rate)
            if held:
                await asyncio.sleep(held)
            waited = await rate.limiter.aacquire(permits) if rate.limiter is not None else 0.0
        finally:
            self._leave(rate, permits)
        return held + waited

    def paced(self, job: str) -> bool:
        """Whether ``job`` has a rate on this node now (its callers may have to wait)."""
        rate = self.jobs.get(job)
        return rate is not None and rate.limiter is not None

    def limited(self) -> bool:
        """Whether any job's rate caps what this node runs."""
        return any(rate.limiter is not None for rate in self.jobs.values())

    def saturated(self) -> list[str]:
        """Jobs with ``SATURATED`` or more callers waiting for permits on this node."""
        with self._lock:
            return [name for name, rate in self.jobs.items()
                    if rate.limiter is not None and rate.waiting >= SATURATED]

    def rate_of(self, job: str) -> float | None:
        """This node's current permits per second for ``job`` (None: unlimited)."""
        rate = self.jobs.get(job)
        return None if rate is None or rate.limiter is None else rate.share

    # -- heartbeat ---------------------------------------------------------------------------

    def refresh(self, rows: list[dict[str, Any]], overrides: dict[str, dict[str, Any]],
                now: float) -> None:
        """Re-divide every job's rate over the live members just read (database time ``now``)."""
        members = members_from_rows(rows)
        fresh = FRESH_BEATS * self.heartbeat
        for name, rate in self.jobs.items():
            qps = overrides.get(name, {}).get("qps", rate.spec.qps)
            with self._lock:
                rate.history.append((now, rate.granted))
            if qps is None:
                continue
            if rate.spec.rate_mode == "global":
                self._set_global(rate, float(qps))
                continue
            groups, takeover = self._groups_of(name)
            live = serving(name, members, fresh, self.me())
            share = shares(float(qps), live, groups, takeover).get(self.node_id, 0.0)
            if share <= 0:  # this node takes none of the job's work; keep a token rate
                share = float(qps) * self.weight / sum(m.weight for m in live)
            self._set_local(rate, float(qps), share, len(live), busy=_busy(name, rows, live))

    def _set_local(self, rate: JobRate, qps: float, share: float, nodes: int,
                   busy: bool) -> None:
        if isinstance(rate.limiter, SmoothLimiter):
            if abs(rate.limiter.rate - share) <= 1e-9 * share:
                rate.qps, rate.share = qps, share
                return
            rate.limiter.set_rate(share)
        else:
            # Warm-up protects the downstream: a node joining while others keep it busy
            # starts warm (starting cold, it would also sit on the chunks it claimed). It
            # starts one heartbeat later, once the others have seen it and given way: shrink
            # first, then grow, so a join never overshoots.
            rate.limiter = SmoothLimiter(share, warmup=rate.spec.warmup, catch_up=CATCH_UP,
                                         cold=not busy)
            if busy:
                rate.hold_until = time.monotonic() + self.heartbeat
        log.info("%s: rate %.1f/s on this node (%d live node(s), cluster %g/s)",
                 rate.spec.name, share, nodes, qps)
        rate.qps, rate.share = qps, share

    def _set_global(self, rate: JobRate, qps: float) -> None:
        if isinstance(rate.limiter, GlobalBucket):
            rate.limiter.set_rate(qps)
        else:
            rate.limiter = GlobalBucket(self.store, f"job:{rate.spec.name}", qps)
        rate.qps, rate.share = qps, qps

    def achieved(self, rate: JobRate) -> float | None:
        """Permits granted per second over the last ``WINDOW`` seconds (database time)."""
        with self._lock:
            history = list(rate.history)
        if len(history) < 2:
            return None
        now, last = history[-1]
        start = next(((t, n) for t, n in history if t >= now - WINDOW - 1e-6), history[0])
        if now - start[0] <= 0:
            return None
        return (last - start[1]) / (now - start[0])

    def info(self) -> dict[str, Any]:
        """What the heartbeat row carries, for the other nodes and ``sluice status``."""
        jobs = {}
        for name, rate in self.jobs.items():
            achieved = self.achieved(rate)
            jobs[name] = {"share": round(rate.share, 3), "granted": rate.granted,
                          "achieved": None if achieved is None else round(achieved, 2),
                          "loader": rate.loader}
        return {"weight": self.weight, "serves": self.serves, "jobs": jobs}


def _busy(job: str, rows: list[dict[str, Any]], live: list[Member]) -> bool:
    """Whether other live nodes report work done on ``job`` over their last 10 s."""
    ids = {m.id for m in live}
    for row in rows:
        jobs = ((row.get("info") or {}).get("rate") or {}).get("jobs") or {}
        if row["id"] in ids and (jobs.get(job) or {}).get("achieved"):
            return True
    return False


def for_worker(w: Any) -> RateGate | None:
    """Give a worker its gate (``w.plugins["rate"]``) when its app has jobs that may be rate
    limited: pipelines, and sharded or broadcast jobs (``qps`` may also come from ``sluice
    set`` later)."""
    jobs = [j for j in w.app.jobs.values()
            if j.kind == "pipeline" or j.routing in ("sharded", "broadcast")]
    if not jobs:
        return None

    def groups_of(name: str) -> tuple[list[str], bool]:
        pipe = w.app.pipelines.get(name)
        return (list(pipe.group_names), pipe.group_takeover) if pipe else ([], True)

    weight = w.settings.weight if w.settings.weight is not None else w.settings.concurrency
    gate = RateGate(jobs, w.node.id, weight, w.node.group, w.settings.heartbeat, w.store,
                    groups_of)
    w.plugins["rate"] = gate
    return gate
