"""The worker: one process, one node. Its core loop is ``Worker.run``.

Each turn of the loop fires the jobs that are due, gives tasks to runs that were triggered or
promoted, claims as many tasks as it has free slots, and sleeps until the next instant, a
wake-up (NOTIFY, a finished task) or the poll interval. A heartbeat thread beside it renews
leases, re-reads membership and job changes, recovers dead nodes' work and enforces time-outs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sluice.pipeline.runtime  # noqa: F401  (registers the pipeline runners)
from sluice.alerts import Alert
from sluice.config import Settings
from sluice.context import Context, NodeInfo, utc
from sluice.errors import StoreError
from sluice.schedule.firing import plan_firings
from sluice.store import ClaimedTask, Store
from sluice.worker import runners
from sluice.worker.handlers import LoopThread
from sluice.worker.monitor import Monitor
from sluice.worker.routing import plan_tasks
from sluice.worker.stats import NodeStats

if TYPE_CHECKING:
    from sluice.app import App

log = logging.getLogger("sluice.worker")
CLAIM_STEP = 4  # tasks claimed per look while a rate caps what this node runs


@dataclass(kw_only=True)
class Running:
    task: ClaimedTask
    ctx: Context
    deadline: float | None  # monotonic time-out, for sync handlers
    timed_out: bool = False
    lost: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Worker:
    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.store: Store = app.open_store(pool_size=min(16, settings.concurrency + 4))
        self.node = NodeInfo(id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
                             group=settings.group, zone=settings.zone,
                             concurrency=settings.concurrency)
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="sluice-task")
        self.loops = LoopThread()
        self.running: dict[tuple[int, int], Running] = {}  # by (task id, token)
        self._lock = threading.Lock()
        self._free = settings.concurrency
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._hb_stop = threading.Event()
        self.members: list[dict[str, Any]] = []
        self.overrides: dict[str, dict[str, Any]] = {}
        self.offset = 0.0  # database clock minus this machine's clock
        self._next_fire: float | None = None  # database time of the earliest next firing
        self._jobs_dirty = True
        self._runs_checked = 0.0  # monotonic time of the last look for ready runs
        self._runs_dirty = True  # a "runs" wake-up came since that look
        self._wake_at: float | None = None  # monotonic time a task this node put off is due
        self._drained_at: float | None = None  # monotonic time a claim last left slots free
        self._task_notes = 0  # "tasks" wake-ups received so far
        self.plugins: dict[str, Any] = {}  # per-node helpers (the record acker, rate gates)
        self.started = time.monotonic()
        self.stats = NodeStats()  # what this node executed (heartbeat info, /metrics)
        self.monitor = Monitor(self)  # cluster-wide alerts, when this node holds the duty

    # -- the core loop -------------------------------------------------------------------

    def run(self) -> None:
        self._start()
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                try:
                    self._fire_due_jobs()
                    self._start_ready_runs()
                    self._claim_and_dispatch()
                except StoreError as exc:
                    log.warning("store unavailable, retrying: %s", exc)
                    self.stopping.wait(min(5.0, self.settings.heartbeat))
                    self._jobs_dirty = self._runs_dirty = True
                self.wake.wait(self._sleep_time())
        finally:
            self._drain()

    def stop(self) -> None:
        """Ask the loop to stop; running work gets ``drain_timeout`` seconds to finish."""
        self.stopping.set()
        self.wake.set()

    # -- firing --------------------------------------------------------------------------

    def _fire_due_jobs(self) -> None:
        now_db = time.time() + self.offset
        if not self._jobs_dirty and (self._next_fire is None or now_db < self._next_fire):
            return
        self._jobs_dirty = False
        for row in self.store.job_due():
            job = self.app.jobs.get(row["name"])
            if job is None:
                continue
            schedule = job.effective_schedule(self.overrides.get(job.name, {}))
            if schedule is None:
                continue
            firings, new_next = plan_firings(
                schedule, row["next_fire_at"], row["now"], misfire=job.misfire,
                catch_up_limit=job.catch_up_limit, misfire_grace=job.misfire_grace)
            self._fire(job, row["next_fire_at"], new_next, firings)
        self._next_fire, now_db = self.store.job_next_fire()

    def _fire(self, job: Any, expected: float, new_next: float | None, firings: list) -> None:
        took = self._take_slot()
        claim = [took]

        def plan(firing: Any) -> list:
            tasks = plan_tasks(job, self.members, self.node.id, claim_self=claim[0])
            claim[0] = False  # this node claims at most one task per pass (one slot taken)
            return tasks

        created = self.store.run_fire(job.name, expected, new_next, firings, job.overlap, plan)
        claimed = [t for _, tasks in created or [] for t in tasks]
        if took and not claimed:
            self._give_slot()
        for task in claimed:
            self._dispatch(task, slot_taken=True)
        if created:
            missed = [f for f in firings if f.missed]
            for f in missed:
                self.app.alert(Alert(kind="firing_missed", subject=job.name,
                                     message=f"{f.stats['missed']} firing(s) missed",
                                     details=f.stats))

    def _start_ready_runs(self) -> None:
        # Runs become ready by a trigger or when a queued run's turn comes; both notify. Between
        # notifications look only once per poll interval, not on every pass of the loop.
        now = time.monotonic()
        if not self._runs_dirty and now - self._runs_checked < self.settings.poll():
            return
        self._runs_dirty, self._runs_checked = False, now
        for row in self.store.run_ready():
            job = self.app.jobs.get(row["job"])
            if job is not None:
                tasks = plan_tasks(job, self.members, self.node.id, claim_self=False)
                self.store.run_start(row["id"], job.name, tasks)

    # -- claiming and running ------------------------------------------------------------

    def _claim_and_dispatch(self) -> None:
        with self._lock:
            free = self._free
        if free <= 0 or self.stopping.is_set():
            return
        gate = self.plugins.get("rate")
        limited = gate is not None and gate.limited()
        # The last claim took all there was and no wake-up announced more since: a task that
        # ended here freed a slot but made no work, so skip the round trip until a NOTIFY or
        # the poll interval (a store without NOTIFY, or a rate, looks every time)
        if self._drained_at is not None and not limited and \
                time.monotonic() - self._drained_at < self.settings.poll():
            return
        saturated: list[str] = []
        if limited and gate is not None:
            # Work this node's share of a rate cannot run soon would sit here while other
            # nodes idle: take a few tasks per look, and no execute chunks of a job whose
            # limiter already has callers waiting (sluice.rate.gate.SATURATED)
            free = min(free, CLAIM_STEP)
            saturated = gate.saturated()
        notes = self._task_notes
        tasks = self.store.task_claim(self.node.id, free, self._groups(), self.node.zone,
                                      self.settings.lease_ttl, saturated=saturated)
        self._drained_at = None
        if len(tasks) < free and self.store.db.notifies:
            self._drained_at = time.monotonic()
            if notes != self._task_notes:  # a wake-up came meanwhile: it may announce more
                self._drained_at = None
        for task in tasks:
            self._dispatch(task, slot_taken=False)

    def _dispatch(self, task: ClaimedTask, slot_taken: bool) -> None:
        if not slot_taken:
            self._take_slot(force=True)
        job = self.app.jobs.get(task.job)
        if job is None:
            log.warning("task %s is for job %r, unknown to this app: handing it back",
                        task.id, task.job)
            self.store.task_release(task.id, task.token)
            self._give_slot()
            return
        ctx = Context(job=job.name, run_id=task.run_id, scheduled_at=utc(task.scheduled_at),
                      attempt=task.attempt, node=self.node, fencing_token=task.token,
                      shards=list(task.payload.get("shards", [])), task_id=task.id,
                      _rate=self.plugins.get("rate"))
        deadline = time.monotonic() + job.timeout if job.timeout else None
        running = Running(task=task, ctx=ctx, deadline=deadline)
        with self._lock:
            self.running[(task.id, task.token)] = running
        self.pool.submit(self._execute, running)

    def _execute(self, running: Running) -> None:
        try:
            runners.RUNNERS[running.task.kind](self, running)
        except Exception:
            log.exception("task %s (%s of %r) crashed the runner", running.task.id,
                          running.task.kind, running.task.job)
        finally:
            with self._lock:
                self.running.pop((running.task.id, running.task.token), None)
            self._give_slot()
            self.wake.set()

    def _take_slot(self, force: bool = False) -> bool:
        with self._lock:
            if self._free <= 0 and not force:
                return False
            self._free -= 1
            return True

    def _give_slot(self) -> None:
        with self._lock:
            self._free += 1

    def _groups(self) -> list[str]:
        """Node groups whose pipeline work this node may take."""
        names = self.app.group_names()
        if self.node.group is None:
            return names
        live = {m["grp"] for m in self.members}
        orphans = [g for g in names if g not in live and self.app.group_takeover(g)]
        return [self.node.group, *orphans]

    def wake_in(self, seconds: float) -> None:
        """Look for work again in ``seconds`` (a task this node put off is due then; no
        NOTIFY announces that)."""
        now = time.monotonic()
        due = now + seconds
        with self._lock:
            if self._wake_at is None or due < self._wake_at or self._wake_at < now:
                self._wake_at = due

    def _sleep_time(self) -> float:
        wait = self.settings.poll()
        if self._next_fire is not None:
            wait = min(wait, self._next_fire - self.offset - time.time())
        now = time.monotonic()
        with self._lock:
            if self._wake_at is not None:
                wait = min(wait, self._wake_at - now)
                if self._wake_at <= now:  # due: one more look, then forget it
                    self._wake_at = None
                    self._drained_at = None
        return max(0.0, wait)

    # -- start, heartbeat, drain -----------------------------------------------------------

    def _start(self) -> None:
        self._register()
        from sluice.rate.gate import for_worker
        from sluice.worker.heartbeat import Heartbeat

        for_worker(self)
        self.heartbeat = Heartbeat(self)
        self.heartbeat.beat()
        now = self.store.clock()
        for job in self.app.jobs.values():
            schedule = job.schedule
            first = schedule.first(now) if schedule else None
            self.store.job_register(job.name, job.kind, job.stored(), first,
                                    schedule.finish_delay if schedule else None)
        self.heartbeat.start()
        if self.settings.metrics_port:
            from sluice.metrics import serve_worker_metrics

            try:
                serve_worker_metrics(self, self.settings.metrics_port)
            except OSError as exc:
                log.error("metrics port %d: %s; this worker serves no /metrics",
                          self.settings.metrics_port, exc)
        threading.Thread(target=self.store.db.listen, args=(self._on_notify, self.stopping),
                         name="sluice-listen", daemon=True).start()
        log.info("node %s started: %d job(s), concurrency %d, group %s, zone %s, store %s",
                 self.node.id, len(self.app.jobs), self.node.concurrency, self.node.group,
                 self.node.zone, self.store.dialect)

    def _on_notify(self, channel: str) -> None:
        if channel in ("jobs", "runs", "*"):
            self._jobs_dirty = True
        if channel in ("runs", "*"):
            self._runs_dirty = True
        if channel in ("tasks", "*"):
            self._task_notes += 1
            self._drained_at = None
        self.wake.set()

    def _register(self) -> None:
        self.store.node_register(dict(
            id=self.node.id, host=socket.gethostname(), pid=os.getpid(), grp=self.node.group,
            zone=self.node.zone, concurrency=self.node.concurrency, info="{}"))

    def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout
        while self.running and time.monotonic() < deadline:
            self.wake.wait(0.05)
            self.wake.clear()
        with self._lock:
            left = list(self.running.values())
        for r in left:
            r.ctx._cancel.set()
            r.lost = True  # a chunk stops before its next record: the next holder runs it
            try:
                self.store.task_release(r.task.id, r.task.token)
            except StoreError as exc:
                log.warning("could not hand back task %s: %s", r.task.id, exc)
        self.heartbeat.stop()
        self.app.flush_alerts()
        try:
            self.monitor.release()
        except StoreError as exc:
            log.warning("could not release the monitor duty: %s", exc)
        if "acker" in self.plugins:
            self.plugins["acker"].stop()
        try:
            self.store.node_deregister(self.node.id)
        except StoreError as exc:
            log.warning("could not deregister: %s", exc)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.loops.stop()
        log.info("node %s stopped (%d task(s) handed back)", self.node.id, len(left))
