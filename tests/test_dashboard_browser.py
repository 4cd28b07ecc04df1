"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against two real worker processes on PostgreSQL and a real ``sluice dashboard`` process.

There is no skip: without /usr/bin/chromium these tests fail (``scripts/test`` installs it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from sluice.store import Store
from tests.apps.dash_app import build_data
from tests.conftest import PG_SERVER, _server_url
from tests.helpers import WorkerProcess, events, wait_for, workers
from tests.web_helpers import DASH_APP, Dashboard, dashboard

pytestmark = pytest.mark.slow
TOKEN = "t0ken-" + uuid.uuid4().hex[:8]
RECORDS = 10_000
ACTIVE = ("ready", "queued", "pending", "running")


@dataclass
class Cluster:
    url: str
    store: Store
    procs: list[WorkerProcess]
    dash: Dashboard
    events: Path

    def tick_pids(self, since: float = 0.0) -> set[int]:
        return {e["pid"] for e in events(self.events) if e["job"] == "tick" and e["t"] > since}

    def count(self, job: str) -> int:
        return sum(1 for e in events(self.events) if e["job"] == job)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    name = f"sluice_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _server_url(name)
    tmp = tmp_path_factory.mktemp("dash")
    build_data(str(tmp / "data.db"), RECORDS)
    env = {"TEST_EVENTS": str(tmp / "events"), "TEST_DATA": str(tmp / "data.db"),
           "TEST_EXEC_SECONDS": "0.01"}
    store = Store.open(url)
    try:
        with workers(DASH_APP, url, 2, env=env, log=tmp / "workers.log") as procs:
            wait_for(lambda: len(store.node_list_live(5.0)) == 2 and len(store.job_list()) == 4,
                     30, message="two workers with the app's four jobs")
            with dashboard(url, token=TOKEN, log=tmp / "dashboard.log") as dash:
                yield Cluster(url, store, procs, dash, tmp / "events")
    finally:
        store.close()
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium")
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def login(page: Page, base: str) -> None:
    page.goto(f"{base}/login?next=/jobs")
    page.fill("#token", TOKEN)
    page.click("#login-button")
    page.wait_for_url(f"{base}/jobs")
    assert page.locator("#logout").is_visible()


def test_jobs_page_shows_schedule_routing_next_fire_and_last_run(page: Page,
                                                                cluster: Cluster) -> None:
    base = cluster.dash.url
    page.goto(f"{base}/jobs")
    rows = page.locator("#jobs tr[data-job]")
    assert [rows.nth(i).get_attribute("data-job") for i in range(rows.count())] == \
        ["broken", "bulk", "control", "tick"]
    tick = page.locator("#jobs tr[data-job=tick]")
    assert "every 0.5s" in tick.inner_text() and "broadcast" in tick.inner_text()
    assert "no" in tick.locator("td.paused").inner_text()

    def tick_succeeded() -> bool:
        page.reload()
        return "succeeded" in page.locator("#jobs tr[data-job=tick]").inner_text()

    wait_for(tick_succeeded, 20, 0.5, message="tick's last run shown as succeeded")
    assert "400" in page.locator("#jobs tr[data-job=bulk]").inner_text()  # target qps


def test_running_pipeline_rate_chart_updates_and_run_page_shows_shards(
        page: Page, cluster: Cluster) -> None:
    base, store = cluster.dash.url, cluster.store
    run_id = store.run_trigger("bulk")
    page.goto(f"{base}/jobs/bulk")
    page.wait_for_function("window.sluiceCharts && window.sluiceCharts.points > 0",
                           timeout=30_000)
    first = page.evaluate("window.sluiceCharts.points")
    # The chart keeps updating without a reload, and shows records executed per second.
    page.wait_for_function(
        f"window.sluiceCharts.points > {first} + 2 && "
        "Math.max.apply(null, window.sluiceCharts.rate.data[1]) > 0", timeout=60_000)
    assert page.evaluate("window.sluiceCharts.target") == 400
    run = store.run_get(run_id)
    assert run is not None and run["state"] in ("pending", "running"), \
        "the chart must be seen updating while the run is still going"
    assert page.locator("#chart-rate canvas").count() >= 1
    assert page.locator("#chart-loaded canvas").count() >= 1
    assert page.evaluate("Math.max.apply(null, window.sluiceCharts.loaded.data[1])") > 0
    target = page.evaluate("window.sluiceCharts.rate.data[2]")
    assert target and set(target) == {400}

    page.goto(f"{base}/runs/{run_id}")
    assert page.locator("#shards tr").count() == 1 + 4  # header and the four shards
    # The page refreshes itself until the run ends.
    page.wait_for_selector("[data-state=succeeded]", timeout=120_000)
    assert page.locator("#executed").inner_text().replace(",", "") == str(RECORDS)
    shard_rows = page.locator("#shards tr").all_inner_texts()[1:]
    assert all(f"{RECORDS // 4:,}" in row for row in shard_rows), shard_rows


def test_actions_need_the_token_and_pause_stops_every_worker(page: Page,
                                                             cluster: Cluster) -> None:
    base, store = cluster.dash.url, cluster.store
    pids = {p.pid for p in cluster.procs}
    wait_for(lambda: cluster.tick_pids() == pids, 20, message="tick running on every worker")

    # Refused without the token: in the browser, and with a wrong or missing bearer token.
    page.goto(f"{base}/jobs")
    page.click("#jobs tr[data-job=tick] button[data-action=pause]")
    assert "401" in page.locator("#error-title").inner_text()
    assert "token" in page.locator("#error-message").inner_text()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(f"{base}/jobs/tick/pause", headers=headers, timeout=10)
        assert r.status_code == 401
    page.goto(f"{base}/login?next=/jobs")
    page.fill("#token", "not-the-token")
    page.click("#login-button")
    assert "not right" in page.locator("#message").inner_text()
    assert store.job_get("tick")["paused"] is False  # type: ignore[index]

    login(page, base)
    page.click("#jobs tr[data-job=tick] button[data-action=pause]")
    page.wait_for_url(f"{base}/jobs")
    assert "paused" in page.locator("#jobs tr[data-job=tick] td.paused").inner_text()
    assert store.job_get("tick")["paused"] is True  # type: ignore[index]

    # Every worker stops firing it: while control fires on, no new tick run or execution.
    wait_for(lambda: all(r["state"] not in ACTIVE for r in store.run_list("tick", 5)), 20,
             message="tick's last firing to finish")
    ticks, last_run = cluster.count("tick"), store.run_list("tick", 1)[0]["id"]
    controls = cluster.count("control")
    wait_for(lambda: cluster.count("control") >= controls + 5, 30,
             message="five more control firings")
    assert cluster.count("tick") == ticks
    assert store.run_list("tick", 1)[0]["id"] == last_run

    resumed = time.time()
    page.click("#jobs tr[data-job=tick] button[data-action=resume]")
    page.wait_for_url(f"{base}/jobs")
    wait_for(lambda: cluster.tick_pids(since=resumed) == pids, 20,
             message="tick firing on every worker again after resume")


def test_bad_input_gives_404_pages_and_messages(page: Page, cluster: Cluster) -> None:
    base, store = cluster.dash.url, cluster.store
    for path in ("/jobs/nope", "/runs/999999", "/runs/abc", "/jobs/x'%20OR%20'1'='1",
                 "/jobs/bulk%3B%20DROP%20TABLE%20sluice_jobs", "/no/such/page"):
        response = page.goto(base + path)
        assert response is not None and response.status == 404, path
        assert "404" in page.locator("#error-title").inner_text()
    assert len(store.job_list()) == 4
    r = httpx.get(f"{base}/api/pipelines/nope/series", timeout=10)
    assert r.status_code == 404

    login(page, base)
    before: Any = store.job_get("bulk")["overrides"]  # type: ignore[index]
    for bad in ("fast", "-5", "0", "nan", "1e999", "'; DROP TABLE sluice_jobs; --"):
        page.goto(f"{base}/jobs/bulk")
        page.fill("#qps", bad)
        with page.expect_response(lambda r: r.url.endswith("/rate")) as info:
            page.click("button[data-action=rate]")
        assert info.value.status == 400, bad
        assert "Rate must be a number" in page.locator("#message").inner_text(), bad
    assert store.job_get("bulk")["overrides"] == before  # type: ignore[index]

    page.goto(f"{base}/jobs/bulk")
    page.fill("#qps", "250")
    page.click("button[data-action=rate]")
    page.wait_for_url(f"{base}/jobs/bulk")
    assert store.job_get("bulk")["overrides"]["qps"] == 250  # type: ignore[index]
    page.wait_for_function("window.sluiceCharts && window.sluiceCharts.target === 250",
                           timeout=10_000)
