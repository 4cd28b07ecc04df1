"""The outbox relay as a sluice job: workers deliver what the after-commit send could not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.helpers import ROOT, events, wait_for, workers


def test_relay_job_on_workers_delivers_each_committed_message_once(pg_url, tmp_path):
    log, flag = tmp_path / "events", tmp_path / "broker-down"
    business = pg_url.replace("postgresql://", "postgresql+psycopg://")
    env = {"TEST_EVENTS": str(log), "TEST_FAIL_FLAG": str(flag), "TEST_BUSINESS_URL": business,
           "SLUICE_DATABASE_URL": pg_url}
    os.environ.update(env)
    try:
        from tests.apps.outbox_app import outbox
    finally:
        for key in env:
            os.environ.pop(key)
    flag.touch()  # the broker is "down": the after-commit send fails, the relay must deliver
    engine = create_engine(business)
    for i in range(50):
        with Session(engine) as s, s.begin():
            outbox.put(s, topic="shipment.created", key=f"o{i % 5}", payload={"n": i},
                       ordered=i % 2 == 0)
    with workers("tests.apps.outbox_app:app", pg_url, 2, env=env):
        wait_for(lambda: outbox.status()["pending"] == 50, 10, message="50 pending")
        flag.unlink()
        wait_for(lambda: len(events(log)) >= 50, 60, message="50 delivered by the relay job")
        status = subprocess.run(
            [sys.executable, "-m", "sluice", "--app", "tests.apps.outbox_app:app", "outbox",
             "status", "--json"], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, cwd=str(ROOT), check=True)
    delivered = events(log)
    assert sorted(e["payload"]["n"] for e in delivered) == list(range(50))
    for key in {e["key"] for e in delivered}:
        ordered = [e["payload"]["n"] for e in delivered if e["key"] == key and
                   e["payload"]["n"] % 2 == 0]
        assert ordered == sorted(ordered), f"ordered messages of {key} out of order"
    report = json.loads(status.stdout)
    assert report["pending"] == 0 and report["parked"] == 0
    outbox.close()
    engine.dispose()


def test_outbox_cli_without_app_says_what_to_do():
    out = subprocess.run([sys.executable, "-m", "sluice", "outbox", "status"], cwd=str(ROOT),
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--app module:app" in out.stderr
