"""What one node has executed: counters and an execute-latency histogram per pipeline.

Kept in memory by each worker (no dependency on a metrics library), served on the worker's own
``/metrics`` and sent with every heartbeat in the node's ``info`` so the dashboard can show each
node's share of a pipeline's rate and sum the latency histograms of the live nodes.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

# Seconds; upper bounds of the execute-latency histogram buckets (+Inf is implied).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


PACE_WEIGHT = 0.05  # weight of the newest record in a job's moving mean execute time


class JobStats:
    __slots__ = ("buckets", "executed", "failed", "pace", "parked", "sum")

    def __init__(self) -> None:
        self.executed = 0
        self.failed = 0
        self.parked = 0
        self.sum = 0.0
        self.pace: float | None = None  # moving mean of recent execute times, seconds
        self.buckets = [0] * (len(BUCKETS) + 1)  # non-cumulative; the last is +Inf

    def snapshot(self) -> dict[str, Any]:
        return {"executed": self.executed, "failed": self.failed, "parked": self.parked,
                "sum": round(self.sum, 6), "buckets": list(self.buckets)}


class NodeStats:
    """Thread-safe per-pipeline counters of one worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobStats] = {}

    def _job(self, job: str) -> JobStats:
        stats = self._jobs.get(job)
        if stats is None:
            stats = self._jobs[job] = JobStats()
        return stats

    def executed(self, job: str, runs: list[tuple[float, bool]]) -> None:
        """Records' execute calls ran: (seconds taken, did not raise) each."""
        with self._lock:
            s = self._job(job)
            for seconds, ok in runs:
                if ok:
                    s.executed += 1
                else:
                    s.failed += 1
                s.sum += seconds
                s.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
                s.pace = seconds if s.pace is None else s.pace + (seconds - s.pace) * PACE_WEIGHT

    def pace(self, job: str) -> float | None:
        """Recent seconds per record of ``job`` on this node (a moving mean); None before
        its first record."""
        with self._lock:
            stats = self._jobs.get(job)
            return None if stats is None else stats.pace

    def parked(self, job: str, count: int) -> None:
        with self._lock:
            self._job(job).parked += count

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{job: {executed, failed, parked, sum, buckets}}`` (JSON-ready)."""
        with self._lock:
            return {job: s.snapshot() for job, s in self._jobs.items()}
