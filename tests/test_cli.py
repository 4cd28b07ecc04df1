"""The ``sluice`` command line as a real subprocess, against SQLite and PostgreSQL, with a live
worker process (``tests/apps/cli_app.py``) where the command acts on one.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sluice.store import SCHEMA_VERSION, Store
from tests.apps.cli_app import app as cli_app
from tests.helpers import ROOT, WorkerProcess, events, wait_for

APP = "tests.apps.cli_app:app"
HEARTBEAT = 0.3  # cli_app's
SETTABLE = "cron, fixed_rate, fixed_delay, timezone, qps"


@dataclass
class Result:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``python -m sluice`` against one store; several commands may run at once."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.url = url
        self.cwd = cwd
        self.env = {**os.environ, "SLUICE_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}

    def start(self, *args: str) -> tuple[tuple[str, ...], subprocess.Popen[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sluice", *args],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return args, proc

    def __call__(self, *args: str) -> Result:
        return self.many([args])[0]

    def many(self, commands: list[tuple[str, ...]]) -> list[Result]:
        started = [self.start(*args) for args in commands]
        results = []
        for args, proc in started:
            out, err = proc.communicate(timeout=60)
            results.append(Result(args, proc.returncode, out, err))
        return results

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.code == 0, f"sluice {' '.join(args)}: {result.code} {result.err}"
        return result


@pytest.fixture
def cli(store_url, tmp_path) -> Cli:
    return Cli(store_url, tmp_path)


@pytest.fixture
def store(store_url) -> Iterator[Store]:
    s = Store.open(store_url)
    yield s
    s.close()


@pytest.fixture
def event_log(tmp_path) -> Path:
    return tmp_path / "events"


@pytest.fixture
def worker(store_url, event_log, store, tmp_path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(
        APP, store_url, env={"TEST_EVENTS": str(event_log)}, log=tmp_path / "worker.log"
    )
    try:
        wait_for(
            lambda: len(store.job_list()) == 3 and store.node_list_live(5.0),
            30,
            message="the worker to register its jobs",
        )
        yield proc
    finally:
        assert proc.terminate(timeout=20) == 0


def register_jobs(store: Store) -> None:
    """Register cli_app's jobs as a worker would, without running one (not firing: paused)."""
    now = store.clock()
    for job in cli_app.jobs.values():
        first = job.schedule.first(now + 3600) if job.schedule else None
        store.job_register(job.name, job.kind, job.stored(), first, None)


def table(out: str) -> dict[str, str]:
    """The lines of a table, by their first cell."""
    lines = out.strip().splitlines()
    return {line.split()[0]: line for line in lines[1:]}


def tick_events(log: Path, after: float = 0.0) -> list[dict[str, Any]]:
    return [e for e in events(log) if e["job"] == "tick" and e["at"] > after]


# -- schema and empty listings --------------------------------------------------------------


def test_db_upgrade_prints_the_schema_version_and_is_idempotent(cli, store_url):
    first = cli.ok("db", "upgrade")
    assert first.out.strip() == f"schema at version {SCHEMA_VERSION}"
    again, jobs, runs, nodes, jobs_json, nodes_json = cli.many(
        [
            ("db", "upgrade"),
            ("jobs",),
            ("runs",),
            ("nodes",),
            ("jobs", "--json"),
            ("nodes", "--json"),
        ]
    )
    assert again.code == 0 and again.out == first.out
    for empty in (jobs, runs, nodes):
        assert empty.code == 0 and empty.out.strip() == "(none)", empty
    assert jobs_json.json() == [] and nodes_json.json() == []


def test_database_url_flag_wins_over_the_environment(cli, tmp_path):
    other = f"sqlite:///{tmp_path / 'other.db'}"
    result = cli.ok("--database-url", other, "db", "upgrade")
    assert str(SCHEMA_VERSION) in result.out
    assert (tmp_path / "other.db").exists()


# -- listings with a live worker ----------------------------------------------------------


def test_jobs_nodes_runs_and_trigger_with_a_live_worker(cli, worker, event_log, store):
    wait_for(lambda: tick_events(event_log), 20, message="tick to fire")
    jobs, jobs_json, nodes, nodes_json = cli.many(
        [("jobs",), ("jobs", "--json"), ("nodes",), ("nodes", "--json")]
    )

    assert jobs.code == 0 and jobs.out.split("\n")[0].split() == [
        "NAME",
        "KIND",
        "SCHEDULE",
        "ROUTING",
        "PAUSED",
        "NEXT_FIRE",
        "QPS",
    ]
    rows = table(jobs.out)
    assert set(rows) == {"tick", "manual", "slow"}
    assert "every 0.5s" in rows["tick"] and "single" in rows["tick"]
    assert "manual" in rows["manual"].split()[2:] and "False" in rows["manual"]
    by_name = {j["name"]: j for j in jobs_json.json()}
    assert by_name["tick"]["schedule"] == "every 0.5s" and by_name["tick"]["paused"] is False
    assert by_name["tick"]["next_fire"].endswith("Z")
    assert by_name["manual"]["next_fire"] is None and by_name["manual"]["kind"] == "job"

    [node] = nodes_json.json()
    assert node["id"].split(":")[1] == str(worker.pid)
    assert node["state"] == "live" and node["concurrency"] == 8
    assert 0 <= node["heartbeat_age"] < 1.2
    assert node["id"] in nodes.out and "live" in nodes.out

    triggered = cli.ok("trigger", "manual")
    assert triggered.out.startswith("run ") and triggered.out.strip().endswith("triggered")
    run_id = int(triggered.out.split()[1])
    as_json = cli.ok("trigger", "manual", "--json").json()
    wait_for(
        lambda: (
            {run_id, as_json["run_id"]}
            <= {e["run"] for e in events(event_log) if e["job"] == "manual"}
        ),
        20,
        message="both triggered runs to run on the worker",
    )
    wait_for(lambda: store.run_get(as_json["run_id"])["state"] == "succeeded", 10)

    runs_manual, runs_all, runs_json, runs_tick = cli.many(
        [
            ("runs", "manual"),
            ("runs",),
            ("runs", "manual", "--json"),
            ("runs", "tick", "--limit", "3", "--json"),
        ]
    )
    lines = table(runs_manual.out)
    assert set(lines) == {str(run_id), str(as_json["run_id"])}
    assert "manual" in lines[str(run_id)] and "succeeded" in lines[str(run_id)]
    assert runs_manual.out.split("\n")[0].split() == [
        "ID",
        "JOB",
        "SCHEDULED",
        "TRIGGER",
        "STATE",
        "DURATION",
        "ERROR",
    ]
    assert str(run_id) in table(runs_all.out) and "tick" in runs_all.out
    rows = runs_json.json()
    assert {r["id"] for r in rows} == {run_id, as_json["run_id"]}
    assert all(r["trigger"] == "manual" and r["state"] == "succeeded" for r in rows)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    ticks = runs_tick.json()
    assert len(ticks) == 3 and {r["job"] for r in ticks} == {"tick"}


def test_trigger_wait_reports_the_outcome(cli, worker, event_log):
    result = cli("trigger", "manual", "--wait")
    assert result.code == 0, result.err
    assert "succeeded" in result.err
    assert [e for e in events(event_log) if e["job"] == "manual"]


# -- pause, resume, set ---------------------------------------------------------------------


def test_pause_and_resume_reach_the_running_worker(cli, worker, event_log, store):
    wait_for(lambda: len(tick_events(event_log)) >= 2, 20, message="tick firing")
    paused = cli.ok("pause", "tick")
    assert paused.out.strip() == "tick paused"
    paused_at = store.clock()
    # Within a heartbeat the worker stops firing: nothing scheduled after that.
    horizon = paused_at + HEARTBEAT
    deadline = time.monotonic() + 4 * 0.5
    while time.monotonic() < deadline:
        assert not tick_events(event_log, after=horizon), "fired while paused"
        time.sleep(0.1)
    assert {j["name"]: j for j in cli.ok("jobs", "--json").json()}["tick"]["paused"] is True

    resumed = cli.ok("resume", "tick")
    assert resumed.out.strip() == "tick resumed"
    resumed_at = store.clock()
    wait_for(
        lambda: tick_events(event_log, after=resumed_at), 10, message="tick firing after resume"
    )
    assert not store.job_get("tick")["paused"]


def test_set_changes_the_schedule_and_the_worker_follows(cli, worker, event_log, store):
    wait_for(lambda: tick_events(event_log), 20, message="tick firing")
    before = store.clock()
    result = cli.ok("set", "tick", "fixed_rate=2")
    set_at = store.clock()
    assert result.out.startswith("tick: ")
    assert json.loads(result.out.split(": ", 1)[1]) == {"fixed_rate": 2.0}
    jobs_json, jobs = cli.many([("jobs", "--json"), ("jobs",)])
    [tick] = [j for j in jobs_json.json() if j["name"] == "tick"]
    assert tick["schedule"] == "every 2s"
    assert "every 2s" in table(jobs.out)["tick"]

    def instants() -> list[float]:
        return sorted(e["at"] for e in tick_events(event_log, after=before))

    wait_for(
        lambda: any(round(b - a, 3) == 2.0 for a, b in itertools.pairwise(instants())),
        15,
        message="two firings 2 s apart",
    )
    # Within a heartbeat (plus one old interval) every firing is on the new schedule.
    seen = instants()
    settled = [i for i, t in enumerate(seen) if t > set_at + HEARTBEAT + 0.5]
    assert all(round(seen[i] - seen[i - 1], 3) == 2.0 for i in settled), seen


def test_set_cron_with_timezone(cli, store):
    register_jobs(store)
    result = cli.ok("set", "tick", "cron=*/2 * * * * ?", "timezone=Europe/Berlin")
    overrides = json.loads(result.out.split(": ", 1)[1])
    assert overrides == {"cron": "*/2 * * * * ?", "timezone": "Europe/Berlin"}
    [tick] = [j for j in cli.ok("jobs", "--json").json() if j["name"] == "tick"]
    assert tick["schedule"] == "cron '*/2 * * * * ?' Europe/Berlin"
    assert store.job_get("tick")["next_fire_at"] % 2 == 0, "next instant on the new cron"


@pytest.fixture
def cli_sqlite(sqlite_url, tmp_path) -> Cli:
    return Cli(sqlite_url, tmp_path)


def test_jobs_shows_a_schedule_kind_changed_by_set(cli_sqlite, sqlite_url):
    store = Store.open(sqlite_url)
    try:
        register_jobs(store)
        result = cli_sqlite.ok("set", "tick", "fixed_delay=3")
        assert json.loads(result.out.split(": ", 1)[1]) == {"fixed_delay": 3.0}
        assert store.job_get("tick")["finish_delay"] == 3.0
    finally:
        store.close()
    [tick] = [j for j in cli_sqlite.ok("jobs", "--json").json() if j["name"] == "tick"]
    assert tick["schedule"] == "3s after each run"


# -- bad input --------------------------------------------------------------------------------


def test_unknown_job_on_every_command_is_exit_2_with_one_line(cli, store):
    register_jobs(store)
    commands = [
        ("runs", "nope"),
        ("trigger", "nope"),
        ("trigger", "nope", "--wait"),
        ("pause", "nope"),
        ("resume", "nope"),
        ("set", "nope", "fixed_rate=1"),
        ("dead", "list", "nope"),
        ("dead", "retry", "nope", "--all"),
    ]
    for result in cli.many(commands):
        assert result.code == 2, result
        assert result.out == "", result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result
        assert lines[0].startswith("sluice: unknown job 'nope'"), result
    assert store.run_list(None) == [], "nothing was created"
    assert not any(j["paused"] for j in store.job_list())


def test_unknown_job_names_the_known_ones(cli, store):
    register_jobs(store)
    result = cli("trigger", "tik")
    assert result.code == 2
    assert "known jobs: manual, slow, tick" in result.err


BAD_SETS = [
    (("speed=3",), SETTABLE),
    (("fixed_rate=2", "routing=broadcast"), SETTABLE),
    (("fixed_rate=-1",), "fixed_rate"),
    (("fixed_rate=fast",), "fixed_rate"),
    (("fixed_rate",), "FIELD=VALUE"),
    (("cron=61 * * * * ?",), "second"),
    (("timezone=Mars/Base",), "timezone"),
    (("fixed_rate=1", "cron=* * * * * ?"), "one schedule kind"),
    (("qps=0",), "qps"),
]


def test_bad_set_is_exit_2_naming_the_problem(cli, store):
    register_jobs(store)
    before = store.job_get("tick")
    results = cli.many([("set", "tick", *changes) for changes, _ in BAD_SETS])
    for result, (_, named) in zip(results, BAD_SETS, strict=True):
        assert result.code == 2, result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sluice: "), result
        assert named in lines[0], result
        assert result.out == ""
    after = store.job_get("tick")
    assert (after["overrides"], after["next_fire_at"]) == (
        before["overrides"],
        before["next_fire_at"],
    )


def test_bad_set_field_names_the_settable_fields(cli, store):
    register_jobs(store)
    result = cli("set", "tick", "routing=broadcast")
    assert result.code == 2
    assert "routing" in result.err and f"settable fields: {SETTABLE}" in result.err


def test_unreachable_store_is_one_line_and_exit_1(tmp_path):
    cli = Cli(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", tmp_path)
    result = cli("jobs")
    assert result.code == 1
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.err.startswith("sluice: store error: ")


# -- stopping a worker --------------------------------------------------------------------------


def test_sigterm_drains_running_work_then_leaves(cli, store_url, store, event_log, tmp_path):
    proc = WorkerProcess(
        APP,
        store_url,
        env={"TEST_EVENTS": str(event_log), "SLOW_SECONDS": "1.5", "TEST_DRAIN": "5"},
        log=tmp_path / "worker.log",
    )
    try:
        wait_for(lambda: store.job_get("slow") and store.node_list_live(5.0), 30)
        node_id = cli.ok("nodes", "--json").json()[0]["id"]
        run_id = store.run_trigger("slow")
        wait_for(
            lambda: [e for e in events(event_log) if e.get("phase") == "start"],
            20,
            message="slow to start",
        )
        sent = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        proc.terminate()
    assert code == 0
    assert took < 5, "within the drain timeout"
    assert [e["phase"] for e in events(event_log) if e["job"] == "slow"] == ["start", "end"]
    assert store.run_get(run_id)["state"] == "succeeded", "running work finished first"
    nodes = cli.ok("nodes", "--json").json()
    assert node_id not in [n["id"] for n in nodes] and nodes == []
    assert cli.ok("nodes").out.strip() == "(none)"


def test_sigterm_with_a_stubborn_handler_exits_after_the_drain_timeout(sqlite_url, tmp_path):
    store = Store.open(sqlite_url)
    log = tmp_path / "events"
    proc = WorkerProcess(
        APP,
        sqlite_url,
        env={"TEST_EVENTS": str(log), "SLOW_SECONDS": "8", "TEST_DRAIN": "1"},
        log=tmp_path / "worker.log",
    )
    try:
        wait_for(lambda: store.job_get("slow") and store.node_list_live(5.0), 30)
        run_id = store.run_trigger("slow")
        wait_for(lambda: [e for e in events(log) if e.get("phase") == "start"], 20)
        sent = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        try:
            code = proc.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - sent
        # handed back: pending again, the attempt not counted
        assert [t["state"] for t in store.run_tasks(run_id)] == ["pending"]
        assert store.node_list_live(5.0) == []
    finally:
        proc.kill() if proc.proc.poll() is None else None
        store.close()
    assert code == 0 and took < 1 + 2, f"exit code {code} after {took:.1f}s"
