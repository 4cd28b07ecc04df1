"""The heartbeat thread: proves the node alive, renews its leases, and keeps its view fresh.

Every ``heartbeat`` seconds: refresh the node row (and learn the database clock), renew the
leases of running tasks (a lease that was taken over cancels its handler: its result would be
rejected anyway), re-read live membership and job changes (pause, resume, ``sluice set``),
recover the work of dead nodes, and time out sync handlers that overran.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sluice.alerts import Alert
from sluice.errors import StoreError

if TYPE_CHECKING:
    from sluice.worker.worker import Worker

log = logging.getLogger("sluice.worker")


class Heartbeat:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sluice-heartbeat", daemon=True)
        self._versions: dict[str, tuple] = {}
        self._fingerprint: tuple[int, float | None] | None = None
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.w.settings.heartbeat):
            try:
                self.beat()
                if self._failing:
                    log.info("store reachable again")
                self._failing = False
            except StoreError as exc:
                if not self._failing:
                    log.warning("heartbeat failed, store unavailable: %s", exc)
                self._failing = True
            except Exception:
                log.exception("heartbeat failed")

    def beat(self) -> None:
        w = self.w
        t0 = time.time()
        now = w.store.node_heartbeat(w.node.id, "draining" if w.stopping.is_set() else "live",
                                     self._info())
        if now is None:  # forgotten (e.g. after a long pause): come back as a new member
            w._register()
            now = w.store.clock()
        w.offset = now - (t0 + time.time()) / 2
        self._renew()
        w.members = w.store.node_list_live(w.settings.node_ttl)
        self._refresh_jobs()
        if "rate" in w.plugins:  # re-divide each job's qps over the live nodes
            w.plugins["rate"].refresh(w.members, w.overrides, now)
        w._jobs_dirty = True  # re-read due jobs once a beat: fixed-delay runs end anywhere
        for task in w.store.task_reap(w.settings.node_ttl):
            w.app.alert(Alert(kind="run_failed", subject=task["job"],
                              message=f"run {task['run_id']} {task['error']}",
                              details={"run_id": task["run_id"], "task_id": task["id"]}))
        self._time_out()
        try:
            w.monitor.check()
        except StoreError:
            raise
        except Exception:
            log.exception("monitor checks failed")

    def _info(self) -> dict:
        with self.w._lock:
            jobs = [r.task.job for r in self.w.running.values()]
        info = {"running": {j: jobs.count(j) for j in set(jobs)}, "slots": self.w._free,
                "stats": self.w.stats.snapshot()}
        if "rate" in self.w.plugins:
            info["rate"] = self.w.plugins["rate"].info()
        return info

    def _renew(self) -> None:
        w = self.w
        with w._lock:  # snapshot first: every task in it was claimed (committed) before
            running = [r for r in w.running.values() if not r.lost]
        held = [(r.task.id, r.task.token) for r in running]
        leases = w.store.task_renew(w.node.id, held, w.settings.lease_ttl)
        with w._lock:  # a task that ended meanwhile was not renewed, and need not be
            running = [r for r in running if (r.task.id, r.task.token) in w.running]
        for r in running:
            lease = leases.get(r.task.id)
            if lease is None or lease[0] != r.task.token:
                # A task that its runner ended between the snapshot and the renewal is missed
                # too (it is no longer running) while the runner returns: lost only if it is
                # still here, and missed again, at the next beat.
                if not r.extra.pop("renew_missed", False):
                    r.extra["renew_missed"] = True
                    continue
                if not r.lost:
                    log.warning("lease on task %s of %r lost; its result will be rejected",
                                r.task.id, r.task.job)
                r.lost = True
                r.ctx._cancel.set()
            else:
                r.extra.pop("renew_missed", None)
                if lease[1]:
                    r.ctx._cancel.set()  # the run was asked to cancel (overlap="replace")

    def _refresh_jobs(self) -> None:
        w = self.w
        # A beat costs the same with 1 job or 1,000: the job rows are re-read only on a change.
        fingerprint = w.store.job_fingerprint()
        if fingerprint == self._fingerprint:
            return
        versions = w.store.job_versions()
        self._fingerprint = fingerprint
        seen = {name: (row["paused"], row["overrides"], row["updated_at"])
                for name, row in versions.items()}
        if seen != self._versions:
            import json

            w.overrides = {n: json.loads(r["overrides"]) for n, r in versions.items()}
            self._versions = seen
            w._jobs_dirty = True
            w.wake.set()

    def _time_out(self) -> None:
        w = self.w
        now = time.monotonic()
        with w._lock:
            late = [r for r in w.running.values()
                    if r.deadline is not None and now > r.deadline and not r.timed_out]
        for r in late:
            r.timed_out = True
            r.ctx._cancel.set()
            job = w.app.jobs[r.task.job]
            from sluice.worker.runners import record_failure

            record_failure(w, r, f"TimeoutError: timed out after {job.timeout:g}s",
                           job.backoff.delay(r.task.attempt))
