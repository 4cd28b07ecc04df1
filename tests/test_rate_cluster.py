"""Smooth processing on a real cluster: worker processes on PostgreSQL hold one cluster-wide
rate while nodes die, join, and the rate is changed with ``sluice set``.

The rate is measured from the store (the runs' executed counters, written by each node's group
commit), not from what the nodes report about themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.store import Store
from tests.helpers import ROOT, WorkerProcess, wait_for

pytestmark = pytest.mark.slow
APP = "tests.apps.rate_app:app"


class Cluster:
    def __init__(self, url: str, logs: Path, env: dict[str, str]) -> None:
        self.url, self.logs, self.env = url, logs, env
        self.store = Store.open(url)
        self.procs: list[WorkerProcess] = []

    def start(self) -> WorkerProcess:
        proc = WorkerProcess(APP, self.url, env=self.env,
                             log=self.logs / f"worker{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def serving(self) -> int:
        """Live nodes that serve the pipeline (their heartbeat carries its rate)."""
        rows = self.store.node_list_live(2.0)
        return sum(1 for r in rows if "flow" in (r["info"].get("rate") or {}).get("serves", []))

    def executed(self) -> tuple[float, int]:
        """(monotonic time, records executed so far by every node)."""
        runs = self.store.run_list("flow", 50)
        return time.monotonic(), sum(r["executed"] for r in runs)

    def rate_over(self, seconds: float) -> float:
        t0, e0 = self.executed()
        time.sleep(seconds)  # the measurement window itself, not a wait for a condition
        t1, e1 = self.executed()
        return (e1 - e0) / (t1 - t0)

    def start_flow(self, nodes: int) -> None:
        for _ in range(nodes):
            self.start()
        wait_for(lambda: self.serving() == nodes, 30, message=f"{nodes} serving nodes")
        self.store.run_trigger("flow")
        wait_for(lambda: self.executed()[1] > 0, 30, message="the first executed records")
        time.sleep(2.0)  # past the one-second warm-up of a cold limiter

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sluice", "--database-url", self.url,
                               *args], capture_output=True, text=True, cwd=str(ROOT),
                              timeout=60)

    def close(self) -> None:
        for p in self.procs:
            p.terminate(timeout=20)
        self.store.close()


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(pg_url, tmp_path, {"RATE_QPS": "500", "RATE_SHARDS": "20"})
    try:
        yield c
    finally:
        c.close()


def within(value: float, target: float, tolerance: float) -> bool:
    return abs(value - target) <= tolerance * target


def test_three_nodes_hold_500_per_second_within_3_percent(cluster: Cluster) -> None:
    cluster.start_flow(3)
    achieved = cluster.rate_over(20.0)
    assert within(achieved, 500, 0.03), f"achieved {achieved:.1f}/s over 20 s, target 500/s"

    status = json.loads(cluster.cli("status", "flow", "--json").stdout)
    assert status["target"] == 500 and len(status["nodes"]) == 3
    assert sum(n["share"] for n in status["nodes"]) == pytest.approx(500, rel=1e-3)
    assert within(status["achieved_10s"], 500, 0.05), status
    assert 0 <= status["backlog"] <= 500 * 5, "never more than one interval loaded"
    assert status["loader_classic"] == 125  # 500/s × 5 s / 20 shards


def test_survivors_take_over_within_3_s_and_a_joiner_slows_the_others(
        cluster: Cluster) -> None:
    cluster.start_flow(3)
    assert within(cluster.rate_over(5.0), 500, 0.05)

    cluster.procs[0].kill()
    time.sleep(3.0)  # the allowed reaction time; measured from here on
    after_kill = cluster.rate_over(5.0)
    assert within(after_kill, 500, 0.05), f"{after_kill:.1f}/s 3-8 s after a node died"

    cluster.start()
    wait_for(lambda: cluster.serving() == 3, 20, message="the new node serving")
    time.sleep(3.0)
    after_join = cluster.rate_over(5.0)
    assert within(after_join, 500, 0.05), f"{after_join:.1f}/s 3-8 s after a node joined"


def test_sluice_set_doubles_the_rate_within_3_s_and_bad_input_keeps_it(
        pg_url: str, tmp_path: Path) -> None:
    # From 250/s: each doubling test is also a capacity test, and this 2-core machine is shared.
    cluster = Cluster(pg_url, tmp_path, {"RATE_QPS": "250", "RATE_SHARDS": "20"})
    try:
        _set_doubles(cluster)
    finally:
        cluster.close()


def _set_doubles(cluster: Cluster) -> None:
    cluster.start_flow(3)
    assert within(cluster.rate_over(5.0), 250, 0.05)

    for bad in ("qps=0", "qps=-5", "qps=fast", "speed=3"):
        result = cluster.cli("set", "flow", bad)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result
    unknown = cluster.cli("set", "nosuchjob", "qps=10")
    assert unknown.returncode == 2 and "unknown job 'nosuchjob'" in unknown.stderr
    assert within(cluster.rate_over(4.0), 250, 0.05), "bad input left the running rate"
    assert cluster.store.job_get("flow")["overrides"] == {}

    assert cluster.cli("set", "flow", "qps=500").returncode == 0
    time.sleep(3.0)
    doubled = cluster.rate_over(5.0)
    assert within(doubled, 500, 0.05), f"{doubled:.1f}/s 3-8 s after qps=500"


def test_global_mode_holds_a_low_rate_exactly_over_many_nodes(
        pg_url: str, tmp_path: Path) -> None:
    c = Cluster(pg_url, tmp_path, {"RATE_QPS": "10", "RATE_SHARDS": "4", "RATE_MODE": "global"})
    try:
        c.start_flow(3)
        t0, e0 = c.executed()
        wait_for(lambda: c.executed()[1] - e0 >= 100, 30, message="100 more records")
        t1, e1 = c.executed()
        assert within((e1 - e0) / (t1 - t0), 10, 0.05)
        with c.store.db.transaction() as tx:
            row = tx.one("rate_backlog", job="flow")
        assert row is not None
    finally:
        c.close()
