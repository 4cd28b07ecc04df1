"""Cluster-wide watches that raise alerts: late firings, lost nodes, unreachable rates.

One node at a time runs them, the holder of the ``sluice:monitor`` lock (renewed on every
heartbeat, taken over by another node within a lease when it dies), so a cluster of N nodes
sends one alert, not N. Called from the heartbeat; every check only reads the store.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sluice.alerts import Alert
from sluice.pipeline.progress import RateTracker, target_rate

if TYPE_CHECKING:
    from sluice.worker.worker import Worker

log = logging.getLogger("sluice.worker")
LOCK = "sluice:monitor"


class Monitor:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.token: int | None = None
        self.rates = RateTracker(keep=120)
        self._late: dict[str, float] = {}  # job -> the overdue instant already alerted
        self._below: dict[str, float] = {}  # pipeline -> since when it has been below target
        self._seen: dict[str, dict[str, Any]] = {}  # live nodes at the previous check
        self._jobs_seen: tuple[Any, list[dict[str, Any]]] = (None, [])

    def check(self) -> None:
        if not self._hold():
            return
        now = time.time() + self.w.offset
        self._late_firings(now)
        self._lost_nodes()
        self._rates(self._jobs(), now)

    def _jobs(self) -> list[dict[str, Any]]:
        """The job rows, re-read only when one changed (a beat costs the same with 1 or
        1,000 jobs)."""
        fingerprint = self.w.store.job_fingerprint()
        if fingerprint != self._jobs_seen[0]:
            self._jobs_seen = (fingerprint, self.w.store.job_list())
        return self._jobs_seen[1]

    def release(self) -> None:
        if self.token is not None:
            self.w.store.lock_release(LOCK, self.token)
            self.token = None

    def _hold(self) -> bool:
        s, ttl = self.w.store, self.w.settings.node_ttl
        if self.token is not None and s.lock_renew(LOCK, self.token, ttl) is not None:
            return True
        got = s.lock_acquire(LOCK, self.w.node.id, ttl)
        if got is None:
            self.token = None
            self._seen = {}
            return False
        self.token = got[0]
        # A new monitor also looks at nodes that died lately: the old monitor may be one.
        recent = s.node_list_live(3 * ttl)
        self._seen = {m["id"]: m for m in recent if m["id"] != self.w.node.id}
        return True

    def _late_firings(self, now: float) -> None:
        limit = self.w.settings.late_after
        for job in self.w.store.job_overdue(now - limit):
            due = job["next_fire_at"]
            if self._late.get(job["name"]) == due:
                continue
            self._late[job["name"]] = due
            self.w.app.alert(Alert(
                kind="firing_late", subject=job["name"],
                message=f"firing due {now - due:.0f}s ago has not happened (threshold "
                        f"{limit:g}s): are any nodes running this app?",
                details={"due_at": due, "late_seconds": round(now - due, 3)}))

    def _lost_nodes(self) -> None:
        live = {m["id"]: m for m in self.w.members}
        for node_id, last in self._seen.items():
            running = last["info"].get("running") or {}
            if node_id in live or node_id == self.w.node.id or last["state"] == "draining" \
                    or not running:
                continue
            work = ", ".join(f"{job}×{n}" for job, n in sorted(running.items()))
            self.w.app.alert(Alert(
                kind="node_lost", subject=node_id,
                message=f"node {node_id} stopped heartbeating with work in flight ({work}); "
                        "its leases will lapse and other nodes take the work over",
                details={"node": node_id, "group": last.get("grp"), "zone": last.get("zone"),
                         "running": running}))
        self._seen = live

    def _rates(self, jobs: list[dict[str, Any]], now: float) -> None:
        pipelines = [j["name"] for j in jobs if j["kind"] == "pipeline"]
        rows = self.w.store.run_progress(pipelines, self.rates.watching())
        self.rates.sample(rows, now)
        active = {r["job"] for r in rows if r["state"] in ("pending", "running")}
        settings = self.w.settings
        window = max(5.0, 5 * settings.heartbeat)
        for job in jobs:
            name, target = job["name"], target_rate(job)
            achieved = self.rates.achieved(name, window)
            if target is None or name not in active or achieved is None or \
                    achieved >= settings.rate_tolerance * target:
                self._below.pop(name, None)
                continue
            since = self._below.setdefault(name, now)
            if now - since >= settings.rate_alert_after:
                self._below[name] = now
                self.w.app.alert(Alert(
                    kind="rate_unreachable", subject=name,
                    message=f"executing {achieved:,.0f} records/s against a target of "
                            f"{target:,.0f}/s for {now - since:.0f}s",
                    details={"target": target, "achieved": round(achieved, 3),
                             "seconds": round(now - since, 1)}))
