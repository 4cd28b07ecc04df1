"""The dashboard over HTTP, in-process, on both stores: read-only without a token, 401 without
the right one, bad values answered with a message, parked-record and outbox retries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from starlette.testclient import TestClient

import sluice
from sluice.store import Store
from sluice.web import create_app
from tests.apps.dash_app import app as dash_app

TOKEN = "right-token"


def register(store: Store) -> None:
    now = store.clock()
    for job in dash_app.jobs.values():
        first = job.schedule.first(now + 3600) if job.schedule else None
        store.job_register(job.name, job.kind, job.stored(), first, None)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.open(store_url)
    register(s)
    yield s
    s.close()


def client(store: Store, token: str | None, **kwargs: object) -> TestClient:
    return TestClient(create_app(store, token=token, node_ttl=5.0, **kwargs),  # type: ignore[arg-type]
                      follow_redirects=False)


def test_without_a_token_the_dashboard_is_read_only(store: Store) -> None:
    with client(store, None) as c:
        page = c.get("/jobs")
        assert page.status_code == 200
        assert "read-only" in page.text and 'data-action="pause"' not in page.text
        assert "tick" in page.text and "every 0.5s" in page.text
        for path in ("/jobs/tick/pause", "/jobs/tick/trigger", "/jobs/bulk/rate"):
            r = c.post(path, data={"qps": "5"}, headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403, path
            assert "read-only" in r.text
    assert store.job_get("tick")["paused"] is False  # type: ignore[index]
    assert store.run_list("tick") == []


def test_actions_need_the_token_and_do_what_they_say(store: Store) -> None:
    with client(store, TOKEN) as c:
        assert c.post("/jobs/tick/pause").status_code == 401
        assert c.post("/jobs/tick/pause", headers={"Authorization": f"Bearer {TOKEN}x"}
                      ).status_code == 401
        c.cookies.set("sluice_dashboard", TOKEN)  # the token itself is not a session
        assert c.post("/jobs/tick/pause").status_code == 401
        c.cookies.clear()
        assert store.job_get("tick")["paused"] is False  # type: ignore[index]

        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = c.post("/jobs/tick/pause", headers=auth)
        assert r.status_code == 303 and store.job_get("tick")["paused"] is True  # type: ignore[index]
        r = c.post("/jobs/tick/resume", headers=auth, data={"next": "https://evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/jobs/tick"  # no open redirect
        assert store.job_get("tick")["paused"] is False  # type: ignore[index]
        r = c.post("/jobs/manual-less/trigger", headers=auth)
        assert r.status_code == 404
        r = c.post("/jobs/broken/trigger", headers=auth)
        assert r.status_code == 303
        run_id = store.run_list("broken")[0]["id"]
        assert r.headers["location"] == f"/runs/{run_id}"

        # Logging in sets a cookie that is not the token; it then authorises actions.
        assert c.post("/login", data={"token": "nope"}).status_code == 401
        r = c.post("/login", data={"token": TOKEN, "next": "/jobs/bulk"})
        assert r.status_code == 303 and r.headers["location"] == "/jobs/bulk"
        assert TOKEN not in r.headers["set-cookie"]
        assert "httponly" in r.headers["set-cookie"].lower()
        assert c.post("/jobs/bulk/rate", data={"qps": "1200"}).status_code == 303
        assert store.job_get("bulk")["overrides"] == {"qps": 1200.0}  # type: ignore[index]


@pytest.mark.parametrize("qps", ["", "abc", "-1", "0", "inf", "1e400", "12; DROP TABLE x"])
def test_a_bad_rate_is_a_message_on_the_page(store: Store, qps: str) -> None:
    with client(store, TOKEN) as c:
        r = c.post("/jobs/bulk/rate", data={"qps": qps},
                   headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400
        assert "Rate must be a number of records per second" in r.text
        assert 'id="charts"' in r.text  # the job's page, with the message on it
    assert store.job_get("bulk")["overrides"] == {}  # type: ignore[index]


def test_unknown_things_are_404_pages_and_reach_sql_only_as_parameters(store: Store) -> None:
    with client(store, TOKEN) as c:
        for path in ("/jobs/nope", "/jobs/x'%20OR%20'1'='1", "/runs/0", "/runs/1%20OR%201=1",
                     "/jobs/%22%3B%20DELETE%20FROM%20sluice_jobs%3B--",
                     "/api/runs/424242", "/api/pipelines/nope/series", "/nowhere"):
            r = c.get(path)
            assert r.status_code == 404, path
        assert c.get("/jobs/tick").status_code == 200
        r = c.get("/api/pipelines/bulk/series?since=yesterday")
        assert r.status_code == 400 and "since must be a number" in r.json()["error"]
    assert len(store.job_list()) == len(dash_app.jobs)


def test_parked_records_and_outbox_messages_are_retried_from_the_page(
        store: Store, tmp_path) -> None:
    run_id = store.run_create("bulk", "test", [])
    store.dead_park("bulk", run_id, "01", [({"id": 1}, "boom", 2), ({"id": 2}, "boom", 2)])
    outbox = sluice.Outbox(create_engine(f"sqlite:///{tmp_path / 'business.db'}"),
                           publisher=sluice.publishers.Callable(lambda m: None))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with client(store, TOKEN, outboxes=[outbox]) as c:
        page = c.get("/jobs/bulk")
        assert page.text.count('name="id"') == 2 and "boom" in page.text
        parked = c.get("/parked")
        assert "sluice_outbox" in parked.text and 'data-action="outbox-retry"' in parked.text
        r = c.post("/jobs/bulk/parked/retry", data={"id": ["1", "x"]}, headers=auth)
        assert r.status_code == 400 and "whole numbers" in r.text
        r = c.post("/jobs/bulk/parked/retry", data={}, headers=auth)
        assert r.status_code == 400
        ids = [d["id"] for d in store.dead_list("bulk")]
        r = c.post("/jobs/bulk/parked/retry", data={"id": [str(ids[0])]}, headers=auth)
        assert r.status_code == 303 and r.headers["location"].startswith("/runs/")
        assert [d["id"] for d in store.dead_list("bulk")] == ids[1:]
        assert c.post("/outbox/nope/retry", data={"all": "1"}, headers=auth).status_code == 404
        r = c.post("/outbox/sluice_outbox/retry", data={"ids": "1, two"}, headers=auth)
        assert r.status_code == 400 and "whole numbers" in r.text
        r = c.post("/outbox/sluice_outbox/retry", data={"all": "1"}, headers=auth)
        assert r.status_code == 200 and "message(s) due now" in r.text
