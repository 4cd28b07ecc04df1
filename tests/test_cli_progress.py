"""``sluice trigger NAME --wait`` (a live progress bar on a terminal, non-zero exit on failure)
and ``sluice status [NAME]``, as real subprocesses against a real worker process."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.store import Store
from tests.apps.dash_app import build_data
from tests.helpers import ROOT, WorkerProcess, wait_for
from tests.web_helpers import DASH_APP

pytestmark = pytest.mark.slow
RECORDS = 4000


@pytest.fixture
def env(sqlite_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    build_data(str(tmp_path / "data.db"), RECORDS)
    env = {**os.environ, "SLUICE_DATABASE_URL": sqlite_url, "PYTHONPATH": str(ROOT),
           "TEST_DATA": str(tmp_path / "data.db"), "TEST_EXEC_SECONDS": "0.005"}
    store = Store.open(sqlite_url)
    worker = WorkerProcess(DASH_APP, sqlite_url, env=env, log=tmp_path / "worker.log")
    try:
        wait_for(lambda: store.node_list_live(5.0) and len(store.job_list()) == 4, 30,
                 message="the worker")
        yield env
    finally:
        assert worker.terminate() == 0
        store.close()


def sluice(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", *args], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120)


def on_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal, as a person would; returns (code, what it drew)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sluice", *args], env=env, cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode()


def test_trigger_wait_draws_a_live_bar_and_succeeds(env: dict[str, str]) -> None:
    code, drawn = on_terminal(env, "trigger", "bulk", "--wait")
    assert code == 0, drawn
    frames = [f for f in re.split(r"[\r\n]", drawn) if "loaded" in f]
    done = [int(m.group(1).replace(",", "")) for f in frames
            if (m := re.search(r"\] ([\d,]+)/[\d,]+ loaded", f))]
    assert len(set(done)) >= 3, f"the bar should move while the run goes: {frames}"
    assert done == sorted(done) and done[-1] == RECORDS
    last = frames[-1]
    assert "succeeded" in last and "#" * 28 in last and "rec/s" in last and "ETA" in last
    assert f"{RECORDS:,}/{RECORDS:,} loaded" in last


def test_trigger_wait_exits_non_zero_when_the_run_fails(env: dict[str, str]) -> None:
    result = sluice(env, "trigger", "broken", "--wait")
    assert result.returncode == 1
    assert "failed" in result.stderr and "broken on purpose" in result.stderr


def test_status_overview_and_one_job(env: dict[str, str]) -> None:
    assert sluice(env, "trigger", "bulk", "--wait").returncode == 0
    overview = sluice(env, "status")
    assert overview.returncode == 0, overview.stderr
    lines = {line.split()[0]: line for line in overview.stdout.splitlines()}
    assert set(lines) == {"JOB", "broken", "bulk", "control", "tick"}
    assert "succeeded" in lines["bulk"] and f"{RECORDS:,}/{RECORDS:,}" in lines["bulk"]
    assert "every 0.5s" in lines["tick"] and "400" in lines["bulk"]
    rows = json.loads(sluice(env, "status", "--json").stdout)
    assert {r["job"] for r in rows} == {"broken", "bulk", "control", "tick"}

    one = sluice(env, "status", "bulk")
    assert one.returncode == 0 and re.search(rf"run\.executed\s+{RECORDS}\b", one.stdout)
    detail = json.loads(sluice(env, "status", "bulk", "--json").stdout)
    assert detail["target_qps"] == 400 and detail["run"]["state"] == "succeeded"
    assert detail["run"]["executed"] == RECORDS and detail["run"]["achieved_qps"] > 0

    unknown = sluice(env, "status", "nope")
    assert unknown.returncode == 2 and "unknown job 'nope'" in unknown.stderr
