"""The dashboard's sampler: once a second, read run counters and node stats from the store and
turn them into rate curves (per pipeline) and rate shares (per node).

One thread per dashboard process; a store outage only leaves a gap in the curves.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from sluice.errors import StoreError
from sluice.pipeline.progress import RateTracker
from sluice.store import Store

log = logging.getLogger("sluice.web")


class NodeRates:
    """Records executed per second by each live node and pipeline, from the cumulative
    per-node counters the nodes send with their heartbeats."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._history: dict[str, deque[tuple[float, dict[str, int]]]] = {}

    def sample(self, nodes: list[dict[str, Any]], now: float) -> None:
        with self._lock:
            live = set()
            for n in nodes:
                live.add(n["id"])
                totals = {job: int(s.get("executed", 0))
                          for job, s in (n["info"].get("stats") or {}).items()}
                history = self._history.setdefault(n["id"], deque(maxlen=64))
                history.append((now, totals))
                while len(history) > 2 and history[1][0] <= now - self.window:
                    history.popleft()
            for gone in set(self._history) - live:
                del self._history[gone]

    def rates(self) -> dict[str, dict[str, float]]:
        """``{node id: {pipeline: records/s}}`` over about the last ``window`` seconds."""
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for node, history in self._history.items():
                if len(history) < 2:
                    continue
                (t0, first), (t1, last) = history[0], history[-1]
                span = max(1e-6, t1 - t0)
                out[node] = {job: max(0, n - first.get(job, 0)) / span
                             for job, n in last.items()}
        return out


class Sampler:
    def __init__(self, store: Store, node_ttl: float, every: float = 1.0) -> None:
        self.store = store
        self.node_ttl = node_ttl
        self.every = every
        self.pipelines = RateTracker()
        self.nodes = NodeRates()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sluice-web-sampler",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        now = self.store.clock()
        pipelines = [j["name"] for j in self.store.job_list() if j["kind"] == "pipeline"]
        rows = self.store.run_progress(pipelines, self.pipelines.watching())
        self.pipelines.sample(rows, now)
        self.nodes.sample(self.store.node_list_live(self.node_ttl), now)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except StoreError as exc:
                log.warning("dashboard sampler: store unavailable: %s", exc)
            except Exception:
                log.exception("dashboard sampler failed")
            self._stop.wait(self.every)
