"""Alerts reach an HTTP webhook (a local server in the test) from real worker processes: a run
that failed its last attempt, parked records (summarised), a late firing, a node lost with
work in flight, a pipeline below its target rate. Repeats are de-duplicated and summed up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sluice.alerts import Alert, AlertGate, webhook
from sluice.errors import ConfigError
from sluice.store import Store
from tests.apps.dash_app import build_data
from tests.helpers import WorkerProcess, wait_for, workers
from tests.web_helpers import DASH_APP, Webhook


@pytest.fixture
def hook() -> Iterator[Webhook]:
    h = Webhook()
    yield h
    h.close()


def test_gate_sends_the_first_then_one_summary_per_window() -> None:
    got: list[Alert] = []
    gate = AlertGate(got.append, window=0.3)
    for i in range(50):
        gate.offer(Alert(kind="record_parked", subject="p", message=f"#{i}",
                         details={"count": 2}))
    gate.offer(Alert(kind="record_parked", subject="other", message="x"))
    gate.offer(Alert(kind="run_failed", subject="p", message="y"))
    assert [(a.kind, a.subject) for a in got] == [("record_parked", "p"),
                                                  ("record_parked", "other"), ("run_failed", "p")]
    wait_for(lambda: len(got) == 4, 5, message="the summary")
    summary = got[3]
    assert summary.details["summary"] is True and summary.details["suppressed"] == 49
    assert summary.details["count"] == 98 and "#49" in summary.message
    threading.Event().wait(0.7)  # two quiet windows: nothing more is sent
    assert len(got) == 4
    gate.offer(Alert(kind="record_parked", subject="p", message="later"))
    assert got[-1].message == "later"


def test_webhook_posts_json_and_rejects_a_bad_url(hook: Webhook) -> None:
    sink = webhook(hook.url, headers={"X-Team": "ops"})
    sink(Alert(kind="node_lost", subject="n1", message="gone", details={"running": {"j": 1}}))
    wait_for(lambda: hook.received, 10, message="the POST")
    assert hook.received[0]["content_type"] == "application/json"
    assert hook.received[0]["body"] == {"kind": "node_lost", "subject": "n1", "message": "gone",
                                        "details": {"running": {"j": 1}}}
    with pytest.raises(ConfigError, match="http"):
        webhook("ftp://example.com/")


@pytest.mark.slow
def test_run_failed_parked_summary_and_late_firing(hook: Webhook, sqlite_url: str,
                                                   tmp_path: Path) -> None:
    build_data(str(tmp_path / "data.db"), 400)
    env = {"TEST_DATA": str(tmp_path / "data.db"), "TEST_PARK_EVERY": "10",
           "TEST_WEBHOOK": hook.url, "SLUICE_ALERT_WINDOW": "1.5", "SLUICE_LATE_AFTER": "2",
           "TEST_EXEC_SECONDS": "0"}
    store = Store.open(sqlite_url)
    try:
        with workers(DASH_APP, sqlite_url, 1, env=env, log=tmp_path / "worker.log"):
            wait_for(lambda: store.node_list_live(5.0), 30, message="the worker")
            # A job no running node knows, overdue by a minute: nobody will fire it.
            now = store.clock()
            store.job_register("orphan", "job", {"schedule": {"fixed_rate": 60.0}}, now - 60,
                               None)
            store.run_trigger("broken")
            run_id = store.run_trigger("bulk")
            wait_for(lambda: store.run_get(run_id)["state"] == "succeeded", 60,  # type: ignore[index]
                     message="the bulk run")

            failed = wait_for(lambda: hook.alerts("run_failed"), 20, message="run_failed")
            assert failed[0]["subject"] == "broken" and "broken on purpose" in failed[0]["message"]
            assert failed[0]["details"]["attempts"] == 1

            def parked_total() -> int:
                return sum(a["details"]["count"] for a in hook.alerts("record_parked"))

            wait_for(lambda: parked_total() == 40, 20, message="every parked record reported")
            parked = hook.alerts("record_parked")
            assert parked[0]["subject"] == "bulk"
            assert len(parked) < 10, "many parked records must be summarised, not one by one"
            assert any(a["details"].get("summary") for a in parked)

            late = wait_for(lambda: hook.alerts("firing_late"), 20, message="firing_late")
            assert late[0]["subject"] == "orphan" and late[0]["details"]["late_seconds"] > 2
        # one per overdue instant (the webhook delivers at least once: a POST it timed out on
        # under a starved machine is sent again, so count instants, not deliveries)
        assert len({a["details"]["due_at"] for a in hook.alerts("firing_late")}) == 1
    finally:
        store.close()


@pytest.mark.slow
def test_node_lost_with_work_in_flight_and_rate_unreachable(hook: Webhook, pg_url: str,
                                                            tmp_path: Path) -> None:
    build_data(str(tmp_path / "data.db"), 20_000)
    # 8 threads × 50 ms a record: at most 160 records/s per node against a target of 400.
    env = {"TEST_DATA": str(tmp_path / "data.db"), "TEST_WEBHOOK": hook.url,
           "TEST_EXEC_SECONDS": "0.05", "SLUICE_RATE_ALERT_AFTER": "2"}
    store = Store.open(pg_url)
    monitor = WorkerProcess(DASH_APP, pg_url, env=env, log=tmp_path / "w1.log")
    try:
        wait_for(lambda: _monitor_owner(pg_url), 30, message="the first node to take the watch")
        with workers(DASH_APP, pg_url, 1, env=env, log=tmp_path / "w2.log") as (victim,):
            wait_for(lambda: len(store.node_list_live(5.0)) == 2, 30, message="two nodes")
            assert _monitor_owner(pg_url).split(":")[1] == str(monitor.pid)
            store.run_trigger("bulk")
            victim_node = wait_for(lambda: _busy_node(store, victim.pid), 30,
                                   message="the victim running bulk work")
            victim.kill()
            lost = wait_for(lambda: hook.alerts("node_lost"), 20, message="node_lost")
            assert lost[0]["subject"] == victim_node
            assert lost[0]["details"]["running"].get("bulk", 0) >= 1

            slow = wait_for(lambda: hook.alerts("rate_unreachable"), 30,
                            message="rate_unreachable")
            assert slow[0]["subject"] == "bulk" and slow[0]["details"]["target"] == 400
            assert 0 < slow[0]["details"]["achieved"] < 0.8 * 400
    finally:
        monitor.terminate()
        store.close()


def _monitor_owner(url: str) -> str:
    """Which node holds the cluster watch (the ``sluice:monitor`` lock)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT owner FROM sluice_locks WHERE name = 'sluice:monitor'"
                           ).fetchone()
    return str(row[0]) if row and row[0] else ""


def _busy_node(store: Store, pid: int) -> str | None:
    for node in store.node_list_live(5.0):
        if node["pid"] == pid and node["info"].get("running", {}).get("bulk"):
            return str(node["id"])
    return None
