"""When a node looks for work: after a claim that found less than it could take, a node on
PostgreSQL waits for a NOTIFY (or the poll interval) instead of claiming again on every task
end; on SQLite, which has no NOTIFY, it looks every time."""

from __future__ import annotations

import time

import sluice
from sluice.worker.worker import Worker
from tests.helpers import wait_for, worker_thread


def _idle_worker(url: str) -> tuple[Worker, list[int]]:
    app = sluice.App(url)

    @app.job()
    def nothing(ctx: sluice.Context) -> None:
        return None

    worker = Worker(app, app.settings)
    claims: list[int] = []
    claim = worker.store.task_claim

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        got = claim(*args, **kwargs)
        claims.append(len(got))
        return got

    worker.store.task_claim = counted  # type: ignore[method-assign]
    return worker, claims


def test_a_drained_node_claims_again_when_woken_or_after_the_poll_interval(pg_url):
    worker, claims = _idle_worker(pg_url)
    try:
        worker._claim_and_dispatch()
        worker._claim_and_dispatch()  # a task ended here: no NOTIFY, nothing new to claim
        assert claims == [0]
        worker._on_notify("tasks")
        worker._claim_and_dispatch()
        assert claims == [0, 0]
        worker._on_notify("jobs")  # not about tasks
        worker._claim_and_dispatch()
        assert claims == [0, 0]
        worker._drained_at = time.monotonic() - worker.settings.poll()  # the poll came round
        worker._claim_and_dispatch()
        assert claims == [0, 0, 0]
    finally:
        worker.store.close()


def test_without_notify_a_node_looks_every_time(sqlite_url):
    worker, claims = _idle_worker(sqlite_url)
    try:
        for _ in range(3):
            worker._claim_and_dispatch()
        assert claims == [0, 0, 0]
    finally:
        worker.store.close()


def test_a_drained_node_runs_a_triggered_job_at_once(pg_url):
    """The trigger's wake-ups reach the idle node: its run starts well within a poll."""
    app = sluice.App(pg_url)
    ran: list[float] = []

    @app.job()
    def hello(ctx: sluice.Context) -> None:
        ran.append(time.monotonic())

    with worker_thread(app, poll_interval=30.0) as worker:
        wait_for(lambda: worker._drained_at is not None, 10, interval=0.01,
                 message="the node's first, empty, claim")
        for n in range(1, 4):
            started = time.monotonic()
            assert app.trigger("hello") is not None
            wait_for(lambda: len(ran) >= n, 5, interval=0.01, message=f"run {n}")  # noqa: B023
            assert ran[-1] - started < 2.0
