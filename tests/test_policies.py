"""Job policies, observed through an in-process worker on each store: overlap, misfire,
retries, time-outs, fixed delay, initial delay, pause/resume and what a handler's ``ctx`` holds.

Handlers record what they saw in a ``Log``; the store's run rows are the other witness.
Every wait polls a condition with a deadline; "nothing happens" is observed over a bounded
window with a deadline loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

import sluice
from sluice.cli.main import main as cli
from tests.helpers import wait_for, worker_thread

HEARTBEAT = 0.3


class Log:
    """Thread-safe list of events recorded by handlers (each stamped with ``t``)."""

    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0

    def add(self, **event: Any) -> None:
        event.setdefault("t", time.time())
        with self._lock:
            self._items.append(event)

    def __call__(self, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._items if all(e.get(k) == v for k, v in match.items())]

    @contextmanager
    def flight(self) -> Iterator[None]:
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            yield
        finally:
            with self._lock:
                self.inflight -= 1


class Harness:
    def __init__(self, url: str) -> None:
        self.url = url
        self.app = sluice.App(
            url, heartbeat=HEARTBEAT, node_ttl=1.0, lease_ttl=1.0, drain_timeout=2.0
        )
        self.log = Log()
        self.release = threading.Event()  # set before a worker stops: long handlers end early
        self.alerts: list[sluice.Alert] = []
        self.app.on_alert(self.alerts.append)

    @property
    def store(self):
        return self.app.store

    def hold(self, ctx: sluice.Context, seconds: float) -> bool:
        """Keep a sync handler busy up to ``seconds``; True if it was cancelled."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.release.is_set():
            if ctx.wait(0.02):
                return True
        return ctx.cancelled

    @contextmanager
    def worker(self, **settings: Any) -> Iterator[Any]:
        with worker_thread(self.app, **settings) as w:
            try:
                yield w
            finally:
                self.release.set()
        self.release.clear()

    def runs(self, job: str) -> list[dict[str, Any]]:
        return sorted(self.store.run_list(job, limit=10_000), key=lambda r: r["id"])

    def run(self, run_id: int) -> dict[str, Any]:
        row = self.store.run_get(run_id)
        assert row is not None
        return row

    def finished(self, run_id: int, timeout: float = 15.0) -> dict[str, Any]:
        done = ("succeeded", "failed", "lost", "cancelled", "skipped")
        return wait_for(
            lambda: (r := self.run(run_id))["state"] in done and r,
            timeout,
            message=f"run {run_id} to finish",
        )

    def set_next_fire(self, job: str, value: float) -> None:
        """Move a job's next instant with plain SQL, as if time had passed with no node up."""
        with self.store.db.transaction() as tx:
            if self.store.dialect == "postgresql":
                tx._cur.execute(
                    "UPDATE sluice_jobs SET next_fire_at = %s WHERE name = %s", (value, job)
                )
            else:
                tx._cur.execute(
                    "UPDATE sluice_jobs SET next_fire_at = ? WHERE name = ?", (value, job)
                )
            assert tx._cur.rowcount == 1

    def close(self) -> None:
        self.release.set()
        if self.app._store is not None:
            self.app._store.close()


@pytest.fixture
def h(store_url) -> Iterator[Harness]:
    harness = Harness(store_url)
    yield harness
    harness.close()


@pytest.fixture
def h_sqlite(sqlite_url) -> Iterator[Harness]:
    harness = Harness(sqlite_url)
    yield harness
    harness.close()


def states(runs: list[dict[str, Any]]) -> list[str]:
    return [r["state"] for r in runs]


def observe(seconds: float, check: Any, interval: float = 0.05) -> None:
    """Call ``check()`` (which asserts) repeatedly for ``seconds``: a bounded 'never' check."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(interval)
    check()


# -- overlap ------------------------------------------------------------------------------


def test_overlap_skip_records_skipped_runs_and_never_runs_two(h):
    @h.app.job(fixed_rate=1, overlap="skip")
    def slow(ctx):
        with h.log.flight():
            h.log.add(run=ctx.run_id, phase="start")
            h.hold(ctx, 2.5)
            h.log.add(run=ctx.run_id, phase="end")

    with h.worker():
        first = wait_for(lambda: h.log(phase="start"), 10, message="first run")[0]
        wait_for(lambda: len(h.log(phase="start")) >= 2, 10, message="a second run")
        runs = h.runs("slow")
    assert h.log.max_inflight == 1, "overlap=skip must never run two at once"
    first_run = next(r for r in runs if r["id"] == first["run"])
    skipped = [r for r in runs if r["state"] == "skipped"]
    assert len(skipped) >= 1
    during = [
        r for r in skipped if first_run["started_at"] < r["scheduled_at"] < first_run["finished_at"]
    ]
    assert during, f"firings while the first run ran are skipped: {runs}"
    assert all(r["started_at"] is None and r["finished_at"] is None for r in skipped)
    # Every instant of the schedule is accounted for, one second apart, in order.
    instants = [r["scheduled_at"] for r in runs]
    assert all(round(b - a, 3) == 1.0 for a, b in itertools.pairwise(instants))
    second = h.log(phase="start")[1]
    assert second["t"] >= h.log(run=first["run"], phase="end")[0]["t"]


def test_overlap_queue_keeps_at_most_one_waiting(h):
    @h.app.job(fixed_rate=1, overlap="queue")
    def slow(ctx):
        with h.log.flight():
            h.log.add(run=ctx.run_id, phase="start", at=ctx.scheduled_at.timestamp())
            h.hold(ctx, 2.5)
            h.log.add(run=ctx.run_id, phase="end")

    waiting_seen: list[int] = []

    def queued_run_started():
        runs = h.runs("slow")
        waiting_seen.append(sum(1 for r in runs if r["state"] == "queued"))
        starts = h.log(phase="start")
        return len(starts) >= 2 and runs

    with h.worker():
        runs = wait_for(queued_run_started, 15, interval=0.1, message="the queued run to run")
    assert max(waiting_seen) == 1, "at most one firing waits"
    assert h.log.max_inflight == 1
    first, second = h.log(phase="start")[:2]
    by_id = {r["id"]: r for r in runs}
    # The second run to execute is the firing one second after the first: it waited in the
    # queue while the first ran, and started only when the first ended.
    assert round(second["at"] - first["at"], 3) == 1.0
    assert by_id[second["run"]]["created_at"] < by_id[first["run"]]["finished_at"]
    assert second["t"] >= h.log(run=first["run"], phase="end")[0]["t"]
    # The firing after that one found the queue full: skipped.
    skipped = [r for r in runs if r["state"] == "skipped"]
    assert skipped and skipped[0]["scheduled_at"] == pytest.approx(first["at"] + 2, abs=1e-6)


def test_overlap_concurrent_runs_overlap(h):
    @h.app.job(fixed_rate=0.4, overlap="concurrent")
    def parallel(ctx):
        with h.log.flight():
            h.log.add(run=ctx.run_id, phase="start")
            h.hold(ctx, 1.5)

    with h.worker():
        wait_for(lambda: h.log.max_inflight >= 2, 10, message="two handlers in flight")
        runs = h.runs("parallel")
    assert not [r for r in runs if r["state"] in ("skipped", "queued")]
    assert len({e["run"] for e in h.log(phase="start")}) >= 2


def test_overlap_replace_cancels_the_running_one(h):
    @h.app.job(fixed_rate=1.5, overlap="replace")
    def replaced(ctx):
        h.log.add(run=ctx.run_id, phase="start", at=ctx.scheduled_at.timestamp())
        cancelled = h.hold(ctx, 10)
        h.log.add(run=ctx.run_id, phase="cancelled" if cancelled else "end")

    with h.worker():
        first = wait_for(lambda: h.log(phase="start"), 10, message="first run")[0]
        seen = wait_for(
            lambda: h.log(run=first["run"], phase="cancelled"),
            10,
            message="the first run to see ctx.cancelled",
        )[0]
        second = wait_for(
            lambda: [e for e in h.log(phase="start") if e["run"] != first["run"]],
            5,
            message="the replacing run",
        )[0]
        old = h.finished(first["run"])
        new = h.run(second["run"])
    assert old["state"] == "cancelled"
    assert old["cancel_requested"]
    # The replacing firing is at at+1.5; the old handler saw the flag within a heartbeat or so.
    assert round(second["at"] - first["at"], 3) == 1.5
    assert seen["t"] - second["at"] < HEARTBEAT + 0.6
    assert new["state"] in ("running", "cancelled", "succeeded")
    assert second["t"] <= seen["t"] + HEARTBEAT + 0.5, "the new run does not wait for the old"


def test_overlap_replace_with_async_handler(h_sqlite):
    h = h_sqlite

    @h.app.job(fixed_rate=1, overlap="replace")
    async def replaced(ctx):
        h.log.add(run=ctx.run_id, phase="start")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            h.log.add(run=ctx.run_id, phase="cancelled")
            raise

    with h.worker():
        first = wait_for(lambda: h.log(phase="start"), 10, message="first run")[0]
        wait_for(
            lambda: h.log(run=first["run"], phase="cancelled"),
            5,
            message="the old coroutine cancelled",
        )
        old = h.finished(first["run"])
        wait_for(lambda: [e for e in h.log(phase="start") if e["run"] != first["run"]], 5)
    assert old["state"] == "cancelled"


# -- misfire ------------------------------------------------------------------------------

RATE = 10.0
BEHIND = 66.0  # next instant 66 s in the past: 7 instants missed, none within the 5 s grace


def misfire_setup(h: Harness, policy: str, **options: Any) -> float:
    """Register the job through a first worker, stop it, move ``next_fire_at`` into the past;
    returns the database time the move was made at."""

    @h.app.job(fixed_rate=RATE, initial_delay=300, misfire=policy, **options)
    def nightly(ctx):
        h.log.add(run=ctx.run_id, at=ctx.scheduled_at.timestamp())

    with h.worker():
        wait_for(lambda: h.store.job_get("nightly"), 10, message="job registered")
    assert h.runs("nightly") == [] and h.log() == []
    now = h.store.clock()
    h.set_next_fire("nightly", now - BEHIND)
    return now


def expected_instants(now: float) -> list[float]:
    return [now - BEHIND + RATE * i for i in range(7)]  # now-66 ... now-6


def wait_for_misfire(h: Harness, fired: int) -> list[dict[str, Any]]:
    def done():
        runs = h.runs("nightly")
        ran = [r for r in runs if r["state"] == "succeeded"]
        return any(r["state"] == "missed" for r in runs) and len(ran) >= fired and runs

    with h.worker():
        runs = wait_for(done, 15, message="misfire handling")
        if fired == 0:
            observe(1.0, lambda: h.log() == [] or pytest.fail(f"ran: {h.log()}"))
        runs = h.runs("nightly")
    return runs


def cli_runs(capsys, url: str, *args: str) -> str:
    capsys.readouterr()
    assert cli(["--database-url", url, "runs", *args]) == 0
    return capsys.readouterr().out


def test_misfire_fire_once(h, capsys):
    now = misfire_setup(h, "fire_once")
    instants = expected_instants(now)
    runs = [r for r in wait_for_misfire(h, 1) if r["scheduled_at"] < now]
    missed = [r for r in runs if r["state"] == "missed"]
    fired = [r for r in runs if r["state"] != "missed"]
    assert len(missed) == 1 and len(fired) == 1, runs
    assert fired[0]["trigger"] == "misfire" and fired[0]["state"] == "succeeded"
    assert fired[0]["scheduled_at"] == pytest.approx(instants[-1], abs=1e-6), "the latest"
    stats = missed[0]["stats"]
    assert stats["missed"] == 6 and not stats["capped"]
    assert stats["first"] == pytest.approx(instants[0], abs=1e-6)
    assert stats["last"] == pytest.approx(instants[-2], abs=1e-6)
    assert missed[0]["scheduled_at"] == pytest.approx(instants[0], abs=1e-6)
    assert [e["run"] for e in h.log() if e["at"] < now] == [fired[0]["id"]]
    alerts = [a for a in h.alerts if a.kind == "firing_missed"]
    assert len(alerts) == 1 and alerts[0].subject == "nightly"
    assert alerts[0].details["missed"] == 6

    out = cli_runs(capsys, h.url, "nightly")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "missed" in lines[str(missed[0]["id"])]
    assert "6 firing(s) missed" in lines[str(missed[0]["id"])]
    assert "misfire" in lines[str(fired[0]["id"])] and "succeeded" in lines[str(fired[0]["id"])]
    rows = {r["id"]: r for r in json.loads(cli_runs(capsys, h.url, "nightly", "--json"))}
    assert rows[missed[0]["id"]]["state"] == "missed"
    assert rows[missed[0]["id"]]["stats"]["missed"] == 6
    assert rows[fired[0]["id"]]["trigger"] == "misfire"


def test_misfire_skip(h, capsys):
    now = misfire_setup(h, "skip")
    runs = [r for r in wait_for_misfire(h, 0) if r["scheduled_at"] < now]
    assert states(runs) == ["missed"], runs
    assert runs[0]["stats"]["missed"] == 7
    assert runs[0]["scheduled_at"] == pytest.approx(expected_instants(now)[0], abs=1e-6)
    assert all(e["at"] >= now for e in h.log()), "no run for a missed instant"

    out = cli_runs(capsys, h.url)
    assert "7 firing(s) missed" in out
    assert "misfire" not in out.replace("firing(s) missed", "")


def test_misfire_catch_up_with_concurrent_overlap(h, capsys):
    now = misfire_setup(h, "catch_up", catch_up_limit=3, overlap="concurrent")
    instants = expected_instants(now)
    runs = [r for r in wait_for_misfire(h, 3) if r["scheduled_at"] < now]
    missed = [r for r in runs if r["state"] == "missed"]
    caught = [r for r in runs if r["trigger"] == "catch_up"]
    assert len(missed) == 1 and missed[0]["stats"]["missed"] == 4
    assert [r["scheduled_at"] for r in caught] == pytest.approx(instants[-3:], abs=1e-6)
    assert states(caught) == ["succeeded"] * 3
    assert len(runs) == 4
    assert sorted(e["at"] for e in h.log() if e["at"] < now) == pytest.approx(instants[-3:])

    out = cli_runs(capsys, h.url, "nightly")
    assert out.count("catch_up") == 3 and "4 firing(s) missed" in out


def test_misfire_catch_up_with_default_overlap_runs_every_caught_up_instant(h_sqlite):
    h = h_sqlite
    now = misfire_setup(h, "catch_up", catch_up_limit=3)
    runs = [r for r in wait_for_misfire(h, 1) if r["scheduled_at"] < now]
    caught = [r for r in runs if r["trigger"] == "catch_up"]
    assert len(caught) == 3
    assert "skipped" not in states(caught), runs
    wait_for(
        lambda: len([e for e in h.log() if e["at"] < now]) == 3,
        10,
        message="three catch-up runs executed",
    )


# -- retries ------------------------------------------------------------------------------


def flaky(h: Harness, failures: int):
    def handler(ctx):
        h.log.add(run=ctx.run_id, attempt=ctx.attempt)
        if ctx.attempt <= failures:
            raise ValueError(f"boom {ctx.attempt}")

    return handler


def test_retries_until_success(h):
    h.app.job(name="flaky", max_attempts=3, backoff=(0.01, 0.02))(flaky(h, failures=2))
    with h.worker():
        wait_for(lambda: h.store.job_get("flaky"), 10)
        run_id = h.app.trigger("flaky")
        run = h.finished(run_id)
        tasks = h.store.run_tasks(run_id)
    assert run["state"] == "succeeded", run
    assert run["error"] is None
    assert [e["attempt"] for e in h.log()] == [1, 2, 3]
    assert {e["run"] for e in h.log()} == {run_id}
    assert len(tasks) == 1 and tasks[0]["attempt"] == 3 and tasks[0]["state"] == "done"
    assert not h.alerts


def test_retries_exhausted_fail_the_run_and_alert_once(h):
    h.app.job(name="flaky", max_attempts=2, backoff=(0.01, 0.02))(flaky(h, failures=5))
    with h.worker():
        wait_for(lambda: h.store.job_get("flaky"), 10)
        run_id = h.app.trigger("flaky")
        run = h.finished(run_id)
        wait_for(lambda: h.alerts, 5, message="the alert")
        observe(2 * HEARTBEAT, lambda: len(h.alerts) <= 1 or pytest.fail(f"{h.alerts}"))
    assert run["state"] == "failed"
    assert run["error"] == "ValueError: boom 2"
    assert [e["attempt"] for e in h.log()] == [1, 2]
    assert len(h.alerts) == 1
    alert = h.alerts[0]
    assert alert.kind == "run_failed" and alert.subject == "flaky"
    assert alert.details["run_id"] == run_id and alert.details["attempts"] == 2
    assert "boom 2" in alert.message


def test_retry_exception_waits_its_delay_without_failing(h):
    @h.app.job(max_attempts=3, backoff=(30, 60))  # a backoff this long would time the test out
    def polite(ctx):
        h.log.add(attempt=ctx.attempt)
        if ctx.attempt == 1:
            raise sluice.Retry("downstream busy", delay=0.5)

    with h.worker():
        wait_for(lambda: h.store.job_get("polite"), 10)
        run = h.finished(h.app.trigger("polite"))
    assert run["state"] == "succeeded" and run["error"] is None
    first, second = h.log()
    assert second["attempt"] == 2
    assert second["t"] - first["t"] >= 0.5, "the delay given to Retry is honoured"
    assert not h.alerts


def test_retry_exception_does_not_spend_an_attempt(h_sqlite):
    h = h_sqlite

    @h.app.job
    def polite(ctx):
        h.log.add(attempt=ctx.attempt)
        if len(h.log()) == 1:
            raise sluice.Retry(delay=0.1)

    with h.worker():
        wait_for(lambda: h.store.job_get("polite"), 10)
        run = h.finished(h.app.trigger("polite"))
    assert not h.alerts
    assert run["state"] == "succeeded", run


# -- time-outs ------------------------------------------------------------------------------


def test_async_timeout_fails_with_timeout_error(h):
    @h.app.job(timeout=0.5)
    async def sleepy(ctx):
        h.log.add(phase="start")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            h.log.add(phase="cancelled")
            raise
        h.log.add(phase="end")

    with h.worker():
        wait_for(lambda: h.store.job_get("sleepy"), 10)
        started = time.monotonic()
        run = h.finished(h.app.trigger("sleepy"))
        wait_for(lambda: h.log(phase="cancelled"), 5, message="the coroutine cancelled")
    assert time.monotonic() - started < 5
    assert run["state"] == "failed"
    assert run["error"].startswith("TimeoutError") and "0.5s" in run["error"]
    assert not h.log(phase="end")
    assert [a.kind for a in h.alerts] == ["run_failed"]


def test_sync_timeout_sets_cancelled_and_fences_the_late_result(h):
    @h.app.job(timeout=0.5)
    def stubborn(ctx):
        h.log.add(phase="start")
        deadline = time.monotonic() + 10
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        h.log.add(phase="saw_cancel" if ctx.cancelled else "never_cancelled")
        ctx.state["late"] = True  # the late result, state included, must be ignored
        time.sleep(0.3)
        h.log.add(phase="returned")

    with h.worker():
        wait_for(lambda: h.store.job_get("stubborn"), 10)
        run_id = h.app.trigger("stubborn")
        wait_for(lambda: h.log(phase="returned"), 10, message="the handler to return")
        start, saw, _ = h.log()
        wait_for(lambda: h.run(run_id)["state"] == "failed", 5, message="run failed")
        # after its late return, nothing changes: observe over a couple of heartbeats
        observe(2 * HEARTBEAT, lambda: h.run(run_id)["state"] == "failed" or pytest.fail())
        run = h.run(run_id)
        job = h.store.job_get("stubborn")
        tasks = h.store.run_tasks(run_id)
    assert saw["phase"] == "saw_cancel"
    assert 0.45 <= saw["t"] - start["t"] < 0.5 + HEARTBEAT + 0.5
    assert run["state"] == "failed"
    assert run["error"] == "TimeoutError: timed out after 0.5s"
    assert job["state"] == {}
    assert [t["state"] for t in tasks] == ["dead"]


# -- fixed delay, initial delay ------------------------------------------------------------


def paced_job(h: Harness) -> None:
    @h.app.job(fixed_delay=0.6)
    def paced(ctx):
        h.log.add(phase="start", run=ctx.run_id, at=ctx.scheduled_at.timestamp())
        time.sleep(0.4)
        h.log.add(phase="end", run=ctx.run_id)


def test_fixed_delay_next_instant_is_set_from_the_end_of_the_run(h):
    paced_job(h)
    with h.worker():
        first = wait_for(lambda: h.log(phase="end"), 10, message="the first run")[0]
        run = h.finished(first["run"])
        job = h.store.job_get("paced")
    assert run["state"] == "succeeded"
    assert job["next_fire_at"] == pytest.approx(run["finished_at"] + 0.6, abs=0.05)
    assert job["next_fire_at"] >= first["t"] + 0.6


def test_fixed_delay_keeps_firing_delay_after_each_run(h):
    paced_job(h)
    with h.worker():
        wait_for(lambda: h.log(phase="end"), 10, message="the first run")
        wait_for(lambda: len(h.log(phase="end")) >= 3, 4, message="two more runs")
        runs = [r for r in h.runs("paced") if r["state"] == "succeeded"]
    starts, ends = h.log(phase="start"), h.log(phase="end")
    for prev_end, nxt in zip(ends, starts[1:], strict=False):
        assert nxt["t"] - prev_end["t"] >= 0.6 - 0.01
        assert nxt["at"] - prev_end["t"] >= 0.6 - 0.01
    for prev, nxt in itertools.pairwise(runs):
        assert nxt["scheduled_at"] >= prev["finished_at"] + 0.6 - 1e-6
    assert not [r for r in h.runs("paced") if r["state"] == "skipped"]


def test_initial_delay_holds_the_first_firing(h):
    @h.app.job(fixed_rate=0.5, initial_delay=1.5)
    def delayed(ctx):
        h.log.add(at=ctx.scheduled_at.timestamp())

    before = time.time()
    with h.worker():
        first = wait_for(lambda: h.log(), 10, message="the first firing")[0]
        first_run = h.runs("delayed")[0]
    assert first["t"] >= before + 1.5
    assert first["at"] >= before + 1.5
    assert first["at"] < before + 1.5 + 2.0, "not much later than asked either"
    assert first_run["scheduled_at"] == pytest.approx(first["at"], abs=1e-6)


# -- pause, resume, trigger ----------------------------------------------------------------


def test_pause_stops_firing_resume_restarts_trigger_still_runs(h):
    @h.app.job(fixed_rate=0.25)
    def ticking(ctx):
        h.log.add(trigger=h.run(ctx.run_id)["trigger"], at=ctx.scheduled_at.timestamp())

    with h.worker():
        wait_for(lambda: len(h.log()) >= 2, 10, message="running before the pause")
        h.app.pause("ticking")
        paused_at = h.store.clock()
        assert h.store.job_get("ticking")["paused"]

        def nothing_new():
            late = [
                r
                for r in h.runs("ticking")
                if r["scheduled_at"] > paused_at and r["trigger"] != "manual"
            ]
            assert late == [], f"fired while paused: {late}"

        observe(4 * 0.25 + 2 * HEARTBEAT, nothing_new)
        run_id = h.app.trigger("ticking")
        manual = h.finished(run_id)
        assert manual["state"] == "succeeded" and manual["trigger"] == "manual"
        observe(2 * 0.25, nothing_new)
        resumed_at = h.store.clock()
        h.app.resume("ticking")
        wait_for(
            lambda: [e for e in h.log() if e["trigger"] == "schedule" and e["at"] > resumed_at],
            10,
            message="a firing after resume",
        )
    assert len(h.log(trigger="manual")) == 1, "the manual run ran once"


def test_resume_does_not_fire_the_instants_that_passed_while_paused(h_sqlite):
    h = h_sqlite

    @h.app.job(fixed_rate=0.25, misfire_grace=0.5)
    def ticking(ctx):
        h.log.add(at=ctx.scheduled_at.timestamp())

    with h.worker():
        wait_for(lambda: h.log(), 10, message="running before the pause")
        h.app.pause("ticking")
        paused_at = h.store.clock()
        wait_for(lambda: h.store.clock() > paused_at + 1.0, 5, message="a second paused")
        resumed_at = h.store.clock()
        h.app.resume("ticking")
        wait_for(
            lambda: [e for e in h.log() if e["at"] > resumed_at],
            10,
            message="a firing after resume",
        )
        runs = h.runs("ticking")
    backfilled = [r for r in runs if paused_at + 0.01 < r["scheduled_at"] < resumed_at]
    assert backfilled == [], [(r["trigger"], r["state"]) for r in backfilled]
    assert not [a for a in h.alerts if a.kind == "firing_missed"]


def test_pause_resume_trigger_unknown_job(h):
    h.app.job(name="known", fixed_rate=60)(lambda ctx: None)
    with h.worker():
        wait_for(lambda: h.store.job_get("known"), 10)
    for op in (h.app.pause, h.app.resume, h.app.trigger):
        with pytest.raises(sluice.UnknownJobError, match=r"'nope'.*known"):
            op("nope")


# -- the context --------------------------------------------------------------------------


def test_context_fields_and_state_between_runs(h):
    seen: list[dict[str, Any]] = []

    @h.app.job(fixed_rate=0.3)
    def counter(ctx):
        n = ctx.state.get("n", 0)
        seen.append(
            dict(
                job=ctx.job,
                run_id=ctx.run_id,
                scheduled_at=ctx.scheduled_at,
                attempt=ctx.attempt,
                node=ctx.node,
                shards=list(ctx.shards),
                key=ctx.idempotency_key,
                n=n,
                token=ctx.fencing_token,
                cancelled=ctx.cancelled,
                run=ctx.run,
            )
        )
        ctx.state["n"] = n + 1
        ctx.state["last_run"] = ctx.run_id

    @h.app.job(fixed_rate=60, routing="sharded", shards=["eu", "us", "asia"])
    def per_zone(ctx):
        h.log.add(shards=list(ctx.shards), node=ctx.node.id, run=ctx.run_id)

    with h.worker() as w:
        wait_for(lambda: len(seen) >= 3 and h.log(), 10, message="three runs and a shard run")
        node_id = w.node.id
        runs = {r["id"]: r for r in h.runs("counter")}
        job = h.store.job_get("counter")
    for i, c in enumerate(seen[:3]):
        run = runs[c["run_id"]]
        assert c["job"] == "counter" and c["run"] == c["run_id"]
        assert c["scheduled_at"].tzinfo is not None
        assert c["scheduled_at"].utcoffset().total_seconds() == 0
        assert c["scheduled_at"] == datetime.fromtimestamp(run["scheduled_at"], UTC)
        assert c["attempt"] == 1 and c["shards"] == [] and not c["cancelled"]
        assert c["node"].id == node_id and c["node"].concurrency == 8
        assert c["key"] == f"counter@{c['scheduled_at'].isoformat()}"
        assert c["n"] == i, "ctx.state is the state the previous run left"
        assert c["token"] > 0
    assert len({c["key"] for c in seen}) == len(seen)
    assert len({c["token"] for c in seen}) == len(seen)
    assert job["state"]["n"] >= 3
    shard_run = h.log()[0]
    assert sorted(shard_run["shards"]) == ["asia", "eu", "us"] and shard_run["node"] == node_id


def test_state_is_not_saved_when_the_handler_fails(h_sqlite):
    h = h_sqlite

    calls = []

    @h.app.job
    def careful(ctx):
        calls.append(ctx.run_id)
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        if len(calls) == 2:
            raise RuntimeError("no save")
        h.log.add(n=ctx.state["n"])

    with h.worker():
        wait_for(lambda: h.store.job_get("careful"), 10)
        assert h.finished(h.app.trigger("careful"))["state"] == "succeeded"
        assert h.finished(h.app.trigger("careful"))["state"] == "failed"
        assert h.finished(h.app.trigger("careful"))["state"] == "succeeded"
    assert [e["n"] for e in h.log()] == [1, 2]
    assert h.store.job_get("careful")["state"] == {"n": 2}
