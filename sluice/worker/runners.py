"""What a worker does with each kind of task. Scheduled jobs live here; pipeline layers in
``sluice.pipeline.runtime`` register themselves in ``RUNNERS`` too."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import InterfaceError, OperationalError

from sluice.alerts import Alert
from sluice.errors import Cancelled, Retry, StoreError
from sluice.worker.handlers import call

if TYPE_CHECKING:
    from sluice.worker.worker import Running, Worker

log = logging.getLogger("sluice.worker")

RUNNERS: dict[str, Callable[[Worker, Running], None]] = {}


def runner(*kinds: str) -> Callable[[Callable[[Worker, Running], None]],
                                     Callable[[Worker, Running], None]]:
    def register(fn: Callable[[Worker, Running], None]) -> Callable[[Worker, Running], None]:
        for kind in kinds:
            RUNNERS[kind] = fn
        return fn
    return register


def with_store(w: Worker, what: str, fn: Callable[[], Any]) -> Any:
    """Retry a store write through a short outage; give up after one lease (the lease expiry
    then hands the work to another node, which is the at-least-once path)."""
    return retrying(w, what, fn, transient=(StoreError,))


def retrying(w: Worker, what: str, fn: Callable[[], Any],
             transient: tuple[type[BaseException], ...] = (StoreError, OperationalError,
                                                            InterfaceError)) -> Any:
    """Call ``fn`` until it stops raising one of ``transient`` (a store or business database
    that is restarting), for at most one lease; ``None`` if it never succeeded."""
    deadline = time.monotonic() + w.settings.lease_ttl
    delay = 0.1
    while True:
        try:
            return fn()
        except transient as exc:
            if time.monotonic() > deadline:
                log.error("could not %s: %s; the lease will expire and the work be retried",
                          what, exc)
                return None
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def record_failure(w: Worker, r: Running, error: str, retry_delay: float) -> None:
    task = r.task
    outcome = with_store(w, f"record failure of task {task.id}",
                         lambda: w.store.task_fail(task.id, task.token, error, retry_delay))
    if outcome is None or outcome.stale:
        return
    if outcome.retried:
        log.info("%s run %s attempt %d/%d failed, retrying in %.1fs: %s", task.job, task.run_id,
                 task.attempt, task.max_attempts, retry_delay, error)
    elif outcome.dead:
        w.app.alert(Alert(kind="run_failed", subject=task.job,
                          message=f"run {task.run_id} failed after {task.attempt} attempt(s): "
                                  f"{error}",
                          details={"run_id": task.run_id, "attempts": task.attempt}))


@runner("job", "broadcast", "shard")
def run_job(w: Worker, r: Running) -> None:
    task = r.task
    job = w.app.jobs[task.job]
    state = w.store.job_get(job.name)
    r.ctx.state = dict(state["state"]) if state else {}
    before = dict(r.ctx.state)
    try:
        assert job.func is not None
        call(job.func, r.ctx, (), w.loops, job.timeout)
    except Retry as exc:
        if not (r.timed_out or r.lost):
            delay = exc.delay if exc.delay is not None else job.backoff.delay(task.attempt)
            reason = f"Retry: {exc}"
            with_store(w, f"reschedule task {task.id}",
                       lambda: w.store.task_retry_later(task.id, task.token, delay, reason))
            log.info("%s run %s asked to retry in %.1fs: %s", job.name, task.run_id, delay, reason)
        return
    except Cancelled:
        if w.stopping.is_set() and not (r.timed_out or r.lost):
            return  # handed back by the drain
        if r.timed_out or r.lost:
            return
    except BaseException as exc:
        if r.timed_out or r.lost:
            return
        log.debug("handler of %r raised", job.name, exc_info=True)
        record_failure(w, r, f"{type(exc).__name__}: {exc}", job.backoff.delay(task.attempt))
        return
    if r.timed_out:
        return
    new_state = r.ctx.state if r.ctx.state != before else None
    outcome = with_store(w, f"complete task {task.id}",
                         lambda: w.store.task_complete(task.id, task.token, job_state=new_state))
    if outcome is not None and outcome.run_finished:
        w._jobs_dirty = True  # a fixed-delay job's next instant was just set
    if outcome is not None and outcome.stale:
        log.warning("%s run %s: completion rejected, the lease was taken over (token %d)",
                    job.name, task.run_id, task.token)
