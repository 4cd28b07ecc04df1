"""PostgreSQL restarted under running workers: nothing is lost, nothing fires twice, the workers
stay up and carry on once the server is back.

The server restarted is a private PostgreSQL started for this module (``initdb`` into a temporary
folder, its own port), so the machine's shared server is never disturbed.
"""

from __future__ import annotations

import collections
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sluice.store import Store
from tests.helpers import events, wait_for, workers
from tests.test_pipeline import build_pg, sa_url, table_states, wait_run

pytestmark = pytest.mark.slow


class PrivatePostgres:
    """A throw-away PostgreSQL cluster run by the ``postgres`` OS user on a free port."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        assert bins, "PostgreSQL server binaries not found under /usr/lib/postgresql"
        self.bin = bins[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._as_postgres(["initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres",
                           "--no-sync"])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, argv: list[str]) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        runas = [] if Path("/proc/self").owner() == "postgres" else ["runuser", "-u", "postgres",
                                                                      "--"]
        subprocess.run([*runas, *cmd], check=True, capture_output=True, timeout=120)

    def _ctl(self, action: str) -> None:
        self._as_postgres(["pg_ctl", "-D", f"{self.dir}/data", "-w", "-t", "60", "-m", "fast",
                           "-l", f"{self.dir}/log", "-o",
                           f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                           "-c fsync=off", action])

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        """Fast shutdown (every open connection is cut), then start; returns once it answers."""
        self._ctl("restart")
        wait_for(self._answers, 60, interval=0.2, message="PostgreSQL back after restart")

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        try:
            self._ctl("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_url(server: PrivatePostgres) -> str:
    """A fresh database on the private server (overrides the shared-server fixture)."""
    name = f"t_{time.monotonic_ns()}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def test_scheduled_job_survives_a_database_restart_without_doubles(server, pg_url, tmp_path):
    log = tmp_path / "events"
    env = {"TEST_EVENTS": str(log), "TEST_JOBS": "every_second"}
    with workers("tests.apps.core_app:app", pg_url, 2, env=env,
                 log=tmp_path / "workers.log") as procs:
        wait_for(lambda: len(events(log)) >= 3, 30, message="three firings before the restart")
        server.restart()
        restarted_at = time.time()
        wait_for(lambda: len([e for e in events(log) if e["at"] > restarted_at]) >= 5, 60,
                 interval=0.2, message="five firings after the restart")
        assert all(p.proc.poll() is None for p in procs), "a worker died with the database"
    instants = [e["at"] for e in events(log) if e["job"] == "every_second"]
    doubled = [t for t, n in collections.Counter(instants).items() if n > 1]
    assert not doubled, f"instants fired twice across the restart: {doubled}"
    after = sorted(t for t in instants if t > restarted_at)
    assert after == [after[0] + i for i in range(len(after))], "a gap after the restart"


def test_pipeline_run_survives_a_database_restart_and_loses_no_record(server, pg_url,
                                                                     tmp_path):
    records, shards = 6_000, 5
    build_pg(pg_url, "coupon", records, shards)
    data_url = sa_url(pg_url)
    log = tmp_path / "events"
    env = {"TEST_EVENTS": str(log), "TEST_PIPELINES": "coupons", "TEST_DATA_URL": data_url,
           "TEST_SHARDS": str(shards), "TEST_BATCH": "200", "TEST_CHUNK": "50"}
    with workers("tests.apps.pipeline_app:app", pg_url, 2, env=env,
                 args=["--concurrency", "4"], log=tmp_path / "workers.log") as procs:
        store = Store.open(pg_url)
        try:
            wait_for(lambda: len(store.node_list_live(2.0)) >= 2, 30, message="two live nodes")
            run_id = store.run_trigger("remind")
            assert run_id is not None
            wait_for(lambda: len(events(log)) >= records * 0.2, 120, interval=0.05,
                     message="a fifth of the records executed")
        finally:
            store.close()
        server.restart()
        store = Store.open(pg_url)
        try:
            run = wait_run(store, run_id, 180)
        finally:
            store.close()
        assert all(p.proc.poll() is None for p in procs), "a worker died with the database"
    assert run["state"] == "succeeded", run
    executed = collections.Counter(e["id"] for e in events(log) if e["e"] == "exec")
    assert set(executed) == set(range(1, records + 1)), "a record was never executed"
    assert table_states(data_url, "coupon", shards) == {"DONE": records, "leased": 0}
    # at-least-once: records cut off mid-acknowledgement run again, a bounded few
    assert sum(n - 1 for n in executed.values()) <= 2 * 4 * 2, executed.most_common(5)
