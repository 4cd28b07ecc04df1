"""``/metrics`` of the dashboard (the cluster, from the store) and of a worker
(``--metrics-port``), scraped over HTTP and parsed with prometheus_client's parser, after a real
pipeline run in a real worker process, with an outbox whose broker is down."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

import sluice
from sluice.store import Store
from tests.apps.dash_app import build_data
from tests.helpers import WorkerProcess, wait_for
from tests.web_helpers import DASH_APP, dashboard, free_port, scrape, value

pytestmark = pytest.mark.slow
RECORDS, PARK_EVERY = 3000, 100


def put_messages(business: Path, count: int) -> None:
    box = sluice.Outbox(create_engine(f"sqlite:///{business}"),
                        publisher=sluice.publishers.Callable(lambda m: None))
    conn = sqlite3.connect(business)
    for i in range(count):
        box.put(conn, topic="order.paid", key=f"order-{i}", payload={"i": i}, ordered=True)
    conn.commit()
    conn.close()
    box.close()


def test_dashboard_and_worker_metrics(sqlite_url: str, tmp_path: Path) -> None:
    business, flag = tmp_path / "business.db", tmp_path / "broker-down"
    build_data(str(tmp_path / "data.db"), RECORDS)
    flag.touch()
    env = {"TEST_DATA": str(tmp_path / "data.db"), "TEST_PARK_EVERY": str(PARK_EVERY),
           "TEST_EXEC_SECONDS": "0.001", "TEST_BUSINESS_URL": f"sqlite:///{business}",
           "TEST_FAIL_FLAG": str(flag), "TEST_EVENTS": str(tmp_path / "events")}
    port = free_port()
    store = Store.open(sqlite_url)
    worker = WorkerProcess(DASH_APP, sqlite_url, env=env, args=["--metrics-port", str(port)],
                           log=tmp_path / "worker.log")
    try:
        wait_for(lambda: store.node_list_live(5.0), 30, message="the worker")
        put_messages(business, 3)
        with dashboard(sqlite_url, token=None, app=DASH_APP, env=env,
                       log=tmp_path / "dashboard.log") as dash:
            check(store, dash.url + "/metrics", f"http://127.0.0.1:{port}/metrics", flag)
    finally:
        assert worker.terminate() == 0
        store.close()


def check(store: Store, cluster_url: str, node_url: str, flag: Path) -> None:
    m = scrape(cluster_url)
    assert value(m, "sluice_outbox_pending_messages", table="sluice_outbox") == 3
    wait_for(lambda: (value(scrape(cluster_url), "sluice_outbox_oldest_pending_age_seconds",
                            table="sluice_outbox") or 0) > 0.5, 10, message="an ageing backlog")
    assert value(m, "sluice_nodes_live", group="", zone="") == 1
    assert value(m, "sluice_pipeline_rate_target_records_per_second", job="bulk") == 400
    assert value(m, "sluice_job_paused", job="tick") == 0
    assert value(m, "sluice_fire_lag_seconds", job="control") is not None

    run_id = store.run_trigger("bulk")
    wait_for(lambda: (value(scrape(cluster_url), "sluice_pipeline_backlog_records", job="bulk")
                      or 0) > 0 or store.run_get(run_id)["state"] == "succeeded",  # type: ignore[index]
             30, 0.2, message="a backlog or the end of the run")
    wait_for(lambda: store.run_get(run_id)["state"] == "succeeded", 60,  # type: ignore[index]
             message="the bulk run")
    run = store.run_get(run_id)
    assert run is not None
    parked = RECORDS // PARK_EVERY
    assert run["parked"] == parked and run["executed"] == RECORDS - parked
    m = wait_for(lambda: (lambda s: s if (value(s, "sluice_execute_duration_seconds_count",
                                                 job="bulk") or 0) >= RECORDS + parked else
                          None)(scrape(cluster_url)), 10, message="the latency histogram")
    assert value(m, "sluice_runs", job="bulk", state="succeeded") == 1
    assert value(m, "sluice_records_loaded_total", job="bulk") == RECORDS
    assert value(m, "sluice_records_executed_total", job="bulk") == RECORDS - parked
    assert value(m, "sluice_records_failed_total", job="bulk") == 2 * parked  # 2 attempts each
    assert value(m, "sluice_records_parked_total", job="bulk") == parked
    assert value(m, "sluice_parked_records", job="bulk") == parked
    assert value(m, "sluice_pipeline_backlog_records", job="bulk") == 0
    assert (value(m, "sluice_pipeline_rate_achieved_records_per_second", job="bulk") or 0) > 0
    # executed + failed attempts, every one observed once
    assert value(m, "sluice_execute_duration_seconds_count", job="bulk") == RECORDS + parked
    assert value(m, "sluice_execute_duration_seconds_bucket", job="bulk", le="+Inf") == \
        RECORDS + parked
    assert (value(m, "sluice_execute_duration_seconds_sum", job="bulk") or 0) > 0.001 * RECORDS
    assert (value(m, "sluice_runs", job="control", state="succeeded") or 0) >= 1

    n = scrape(node_url)
    assert value(n, "sluice_node_records_executed_total", job="bulk") == RECORDS - parked
    assert value(n, "sluice_node_records_parked_total", job="bulk") == parked
    assert value(n, "sluice_execute_duration_seconds_count", job="bulk") == RECORDS + parked
    assert value(n, "sluice_node_slots_free") is not None

    flag.unlink()  # the broker is back: the relay empties the backlog
    wait_for(lambda: value(scrape(cluster_url), "sluice_outbox_pending_messages",
                           table="sluice_outbox") == 0, 30, 0.2, message="the outbox drained")
    check_names(cluster_url)
    check_names(node_url)


def check_names(url: str) -> None:
    """Prometheus conventions: a ``sluice_`` prefix, help text, ``_total`` counters, seconds."""
    text = httpx.get(url, timeout=10).text
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("sluice_")]
    assert len(families) >= 6
    for f in families:
        assert f.documentation, f.name
        assert f.type in ("counter", "gauge", "histogram"), f.name
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        assert "milliseconds" not in f.name and "_ms" not in f.name, f.name
