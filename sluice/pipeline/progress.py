"""Achieved rates from run counters: what the rate curves, the metrics and the rate alert read.

Runs only count (loaded, executed, …); a rate is the change of those counts between two
samples. ``RateTracker.sample`` is fed the rows of ``Store.run_progress`` (the active runs and
the ones it was watching, which may have just ended) every second or so and keeps, per
pipeline, a bounded series of points: records loaded in the interval and records executed per
second.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Point:
    t: float  # database time of the sample, epoch seconds
    loaded: int  # records loaded since the previous sample
    executed: int  # records executed since the previous sample
    rate: float  # records executed per second since the previous sample


ACTIVE = ("ready", "queued", "pending", "running")


class RateTracker:
    """Per-pipeline series of loaded and executed records; thread-safe."""

    def __init__(self, keep: int = 600) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._last: dict[int, tuple[int, int]] = {}  # run id -> (loaded, executed)
        self._t: float | None = None
        self._series: dict[str, deque[Point]] = {}

    def sample(self, rows: list[dict[str, Any]], now: float | None = None) -> None:
        t = float(now if now is not None else (rows[0]["now"] if rows else 0.0))
        with self._lock:
            first = self._t is None
            dt = 0.0 if self._t is None else t - self._t
            if not first and dt <= 0:
                return
            loaded: dict[str, int] = {}
            executed: dict[str, int] = {}
            seen: dict[int, tuple[int, int]] = {}
            active = {r["id"] for r in rows if r["state"] in ACTIVE}
            for r in rows:
                counts = (int(r["loaded"]), int(r["executed"]))
                before = self._last.get(r["id"], (0, 0))
                seen[r["id"]] = counts
                loaded[r["job"]] = loaded.get(r["job"], 0) + counts[0] - before[0]
                executed[r["job"]] = executed.get(r["job"], 0) + counts[1] - before[1]
            # only active runs are watched: an ended run was read once more for its final counts
            self._last = {i: c for i, c in seen.items() if i in active}
            self._t = t
            if first:  # the counts so far are a baseline, not one interval's work
                return
            for job in set(self._series) | set(loaded):
                series = self._series.setdefault(job, deque(maxlen=self.keep))
                ex = max(0, executed.get(job, 0))
                series.append(Point(t, max(0, loaded.get(job, 0)), ex, ex / dt))

    def watching(self) -> list[int]:
        """The runs that were active at the last sample (pass them to the next one)."""
        with self._lock:
            return list(self._last)

    def series(self, job: str) -> list[Point]:
        with self._lock:
            return list(self._series.get(job, ()))

    def achieved(self, job: str, window: float = 5.0) -> float | None:
        """Records executed per second over the last ``window`` seconds (None: no data yet)."""
        with self._lock:
            points = list(self._series.get(job, ()))
        if not points:
            return None
        end = points[-1].t
        first = next(i for i, p in enumerate(points) if p.t > end - window)
        # the first point covers the interval before it: estimate its length from the next
        start = points[first - 1].t if first > 0 else points[0].t - (
            points[1].t - points[0].t if len(points) > 1 else 1.0)
        return sum(p.executed for p in points[first:]) / max(1e-6, end - start)

    def jobs(self) -> list[str]:
        with self._lock:
            return sorted(self._series)


def target_rate(job: dict[str, Any]) -> float | None:
    """A stored job's target rate: ``sluice set`` override, else its declared ``qps``."""
    qps = job["overrides"].get("qps", job["spec"].get("qps"))
    return float(qps) if qps else None
