"""Pipelines (split → load → execute) end to end: real worker processes, real databases."""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

import sluice
from sluice.store import Store
from tests.helpers import ROOT, events, wait_for, worker_thread, workers

pytestmark = pytest.mark.slow

APP = "tests.apps.pipeline_app:app"
FINAL = ("succeeded", "failed", "lost", "cancelled")
STATE_DDL = sluice.TableSource("sqlite://", "t_{shard}", shards=[]).state_ddl()


# -- business data ---------------------------------------------------------------------------


def sa_url(url: str) -> str:
    """The SQLAlchemy URL of a store URL (PostgreSQL through psycopg 3)."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def shard_ids(records: int, shards: int) -> list[range]:
    """Record ids 1..records, in contiguous blocks, one block per shard."""
    per, extra = divmod(records, shards)
    out, start = [], 1
    for s in range(shards):
        count = per + (1 if s < extra else 0)
        out.append(range(start, start + count))
        start += count
    return out


def build_pg(url: str, prefix: str, records: int, shards: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for s, ids in enumerate(shard_ids(records, shards)):
            table = f"{prefix}_{s:02d}"
            conn.execute(f'CREATE TABLE "{table}" (id BIGINT PRIMARY KEY, '
                         f"payload TEXT NOT NULL, {STATE_DDL})")
            conn.execute(f'CREATE INDEX "{table}_status" ON "{table}" (status, id)')
            conn.execute(f'INSERT INTO "{table}" (id, payload) SELECT i, \'r\' || i '
                         f"FROM generate_series({ids.start}, {ids.stop - 1}) AS i")


def build_sqlite(path: Path, prefix: str, records: int, shards: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    for s, ids in enumerate(shard_ids(records, shards)):
        table = f"{prefix}_{s:02d}"
        conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, '
                     f"{STATE_DDL})")
        conn.execute(f'CREATE INDEX "{table}_status" ON "{table}" (status, id)')
        conn.executemany(f'INSERT INTO "{table}" (id, payload) VALUES (?, ?)',
                         [(i, f"r{i}") for i in ids])
    conn.commit()
    conn.close()


def query_shards(data_url: str, queries: list[str]) -> list[tuple]:
    if data_url.startswith("sqlite"):
        conn = sqlite3.connect(data_url.split(":///", 1)[1], timeout=60)
        try:
            return [r for q in queries for r in conn.execute(q).fetchall()]
        finally:
            conn.close()
    with psycopg.connect(data_url.replace("+psycopg", "")) as pg:
        return [r for q in queries for r in pg.execute(q).fetchall()]


def table_states(data_url: str, prefix: str, shards: int) -> dict[str, int]:
    """{status: rows} over every shard table (and rows still holding a lease)."""
    rows = query_shards(data_url, [f'SELECT status, count(*), count(lease_owner) FROM '
                                   f'"{prefix}_{s:02d}" GROUP BY status' for s in range(shards)])
    totals: collections.Counter[str] = collections.Counter()
    for status, n, leased in rows:
        totals[status] += n
        totals["leased"] += leased
    return dict(totals)


# -- the store ---------------------------------------------------------------------------------


def with_store(url: str, fn):  # type: ignore[no-untyped-def]
    store = Store.open(url)
    try:
        return fn(store)
    finally:
        store.close()


def wait_nodes(store: Store, count: int, timeout: float = 30) -> None:
    wait_for(lambda: len(store.node_list_live(2.0)) >= count, timeout, interval=0.1,
             message=f"{count} live node(s)")


def wait_members_seen(store: Store, count: int, timeout: float = 30) -> None:
    """Wait until every one of ``count`` live nodes has finished a heartbeat that began after
    the last of them registered: each node's view of the membership then includes them all
    (a node takes over a group it sees no live member of)."""
    def all_beat_after_last_start() -> dict[str, float] | None:
        nodes = store.node_list_live(2.0)
        last = max((n["started_at"] for n in nodes), default=0.0)
        ok = len(nodes) >= count and all(n["heartbeat_at"] > last for n in nodes)
        return {n["id"]: n["heartbeat_at"] for n in nodes} if ok else None

    beat = wait_for(all_beat_after_last_start, timeout, interval=0.05,
                    message=f"{count} nodes beating")
    # that beat may still be reading the membership: wait for the next one to begin
    wait_for(lambda: all(n["heartbeat_at"] > beat.get(n["id"], 0.0)
                         for n in store.node_list_live(2.0)), timeout, interval=0.05,
             message="one more heartbeat on every node")


def wait_run(store: Store, run_id: int, timeout: float) -> dict:
    return wait_for(lambda: (r := store.run_get(run_id)) is not None and r["state"] in FINAL
                    and r, timeout, interval=0.1, message=f"run {run_id} to end")


# -- 1, 2: a big TableSource pipeline with a node killed mid-run --------------------------------


def _kill_one_midway(url: str, data_url: str, tmp_path: Path, records: int, shards: int,
                     processes: int) -> dict:
    log = tmp_path / "events"
    env = {"TEST_EVENTS": str(log), "TEST_PIPELINES": "coupons", "TEST_DATA_URL": data_url,
           "TEST_SHARDS": str(shards)}
    store = Store.open(url)
    figures: dict = {}
    try:
        with workers(APP, url, processes, env=env, args=["--concurrency", "8"],
                     log=tmp_path / "workers.log") as procs:
            wait_nodes(store, processes)
            started = time.monotonic()
            run_id = store.run_trigger("remind")
            assert run_id is not None

            def executed() -> int:
                run = store.run_get(run_id)
                return run["executed"] if run else 0

            wait_for(lambda: executed() >= records * 0.3, 150, interval=0.05,
                     message="30% of the records executed")
            # the victim is a node that is executing records right now
            busy = collections.Counter(e["pid"] for e in events(log)[-2000:])
            victim = max(procs, key=lambda p: busy[p.pid])
            killed_at = executed()
            victim.kill()
            run = wait_run(store, run_id, 240)
            took = time.monotonic() - started
    finally:
        store.close()
    figures.update(run=run, took=took, victim=victim.pid, killed_at=killed_at, log=log)
    return figures


def _check_kill_run(figures: dict, data_url: str, records: int, shards: int,
                    concurrency: int) -> dict:
    run, victim = figures["run"], figures["victim"]
    execs = [e for e in events(figures["log"]) if e["e"] == "exec"]
    by_id: dict[int, list[dict]] = collections.defaultdict(list)
    for e in execs:
        by_id[e["id"]].append(e)
    assert set(by_id) == set(range(1, records + 1)), "every record executed"
    again = {i: es for i, es in by_id.items() if len(es) > 1}
    # at most the killed node's in-flight records run again, each at most once more
    assert len(again) <= concurrency, f"{len(again)} records re-executed: {sorted(again)[:20]}"
    for i, es in again.items():
        assert len(es) == 2, f"record {i} executed {len(es)} times"
        assert es[0]["pid"] == victim, f"record {i} re-run though its first node lived"
        assert es[1]["pid"] != victim and es[1]["token"] > es[0]["token"]
    assert {e["pid"] for e in execs if e["id"] not in again} >= {victim}
    # fenced: the completion that counted is one of the record's executions, and for a record
    # executed once, that execution's (the rows carry the token of the chunk that completed)
    tokens = dict(query_shards(data_url, [f'SELECT id, lease_token FROM "coupon_{s:02d}"'
                                          for s in range(shards)]))
    for i, es in by_id.items():
        assert tokens[i] in [e["token"] for e in es], (i, tokens[i], es)
    states = table_states(data_url, "coupon", shards)
    assert states.get("DONE") == records, states
    assert states.get("leased", 0) == 0, states
    assert run["state"] == "succeeded", run
    assert run["shards"] == shards
    assert run["loaded"] == records
    assert run["executed"] == records, run
    assert run["failed"] == 0 and run["parked"] == 0
    # the run's count is the bound the reaper took over: at least what really ran again
    assert len(again) <= run["reexecuted"] <= concurrency, (len(again), run["reexecuted"])
    return {"reexecuted_observed": len(again), "run_reexecuted": run["reexecuted"],
            "stale": run["stale"], "took": figures["took"],
            "rate": records / figures["took"], "killed_at": figures["killed_at"]}


def test_postgresql_100k_records_25_shards_sigkill_one_of_three(pg_url, tmp_path):
    records, shards = 100_000, 25
    build_pg(pg_url, "coupon", records, shards)
    data_url = sa_url(pg_url)
    figures = _kill_one_midway(pg_url, data_url, tmp_path, records, shards, processes=3)
    out = _check_kill_run(figures, data_url, records, shards, concurrency=8)
    print(f"\npostgresql 100k: {out}")


def test_sqlite_10k_records_sigkill_one_of_two(sqlite_url, tmp_path):
    records, shards = 10_000, 25
    data = tmp_path / "business.db"
    build_sqlite(data, "coupon", records, shards)
    data_url = f"sqlite:///{data}"
    figures = _kill_one_midway(sqlite_url, data_url, tmp_path, records, shards, processes=2)
    out = _check_kill_run(figures, data_url, records, shards, concurrency=8)
    print(f"\nsqlite 10k: {out}")


def test_sigterm_hands_back_running_chunks_and_their_next_holder_fences_them(pg_url, tmp_path):
    """A drained node hands its unfinished chunks back; whoever takes one next is not its first
    holder, so it fences the rows: rows the drained node completed are not run again, and
    its late completions are rejected."""
    records, shards = 3000, 5
    build_pg(pg_url, "coupon", records, shards)
    data_url = sa_url(pg_url)
    log = tmp_path / "events"
    env = {"TEST_EVENTS": str(log), "TEST_PIPELINES": "coupons", "TEST_DATA_URL": data_url,
           "TEST_SHARDS": str(shards), "TEST_BATCH": "200", "TEST_CHUNK": "50",
           "TEST_EXEC_SLEEP": "0.02", "TEST_DRAIN": "0.3"}  # a chunk takes 1 s, the drain 0.3
    store = Store.open(pg_url)
    try:
        with workers(APP, pg_url, 2, env=env, args=["--concurrency", "8"],
                     log=tmp_path / "workers.log") as procs:
            wait_nodes(store, 2)
            run_id = store.run_trigger("remind")
            assert run_id is not None
            wait_for(lambda: (store.run_get(run_id) or {}).get("executed", 0) >= records * 0.3,
                     120, interval=0.05, message="30% of the records executed")
            # the victim holds running chunks right now (the store says who runs what)
            victim = wait_for(lambda: _running_chunks(store, run_id, procs), 60, interval=0.02,
                              message="a node running execute chunks")
            victim.terminate(30)
            run = wait_run(store, run_id, 120)
            handed_back = [t for t in store.run_tasks(run_id)
                           if t["kind"] == "exec" and t["claims"] > 1]
    finally:
        store.close()
    assert handed_back, "the drained node was running chunks: they were handed back"
    by_id: dict[int, list[dict]] = collections.defaultdict(list)
    for e in events(log):
        if e["e"] == "exec":
            by_id[e["id"]].append(e)
    assert set(by_id) == set(range(1, records + 1)), "every record executed"
    again = {i: es for i, es in by_id.items() if len(es) > 1}
    assert len(again) <= 8, f"{len(again)} records ran twice: {sorted(again)[:20]}"
    for es in again.values():
        assert len(es) == 2 and es[0]["pid"] == victim.pid and es[1]["pid"] != victim.pid
        assert es[1]["token"] > es[0]["token"]
    tokens = dict(query_shards(data_url, [f'SELECT id, lease_token FROM "coupon_{s:02d}"'
                                          for s in range(shards)]))
    for i, es in by_id.items():
        assert tokens[i] in [e["token"] for e in es], (i, tokens[i], es)
    states = table_states(data_url, "coupon", shards)
    assert states.get("DONE") == records and states.get("leased", 0) == 0, states
    assert run["state"] == "succeeded" and run["executed"] == records, run


def _running_chunks(store: Store, run_id: int, procs: list) -> object:
    """The worker process holding the most running execute chunks of the run, if any."""
    owners = collections.Counter(t["owner"] for t in store.run_tasks(run_id)
                                 if t["kind"] == "exec" and t["state"] == "running")
    by_pid = {int(owner.split(":")[1]): n for owner, n in owners.items() if owner}
    busiest = max(procs, key=lambda p: by_pid.get(p.pid, 0))
    return busiest if by_pid.get(busiest.pid) else None


# -- 3: groups=2, A takes odd shards, B even; B gone → A takes over ------------------------------


def test_groups_split_odd_even_and_takeover_when_a_group_is_gone(pg_url, tmp_path):
    log, markers = tmp_path / "events", tmp_path / "markers"
    markers.mkdir()
    shards, per_shard = 8, 15
    env = {"TEST_EVENTS": str(log), "TEST_PIPELINES": "grouped", "TEST_SHARDS": str(shards),
           "TEST_PER_SHARD": str(per_shard), "TEST_MARKERS": str(markers)}
    common = {"env": env, "log": tmp_path / "workers.log"}
    store = Store.open(pg_url)
    try:
        with workers(APP, pg_url, 1, args=["--group", "A", "--concurrency", "4"],
                     **common) as group_a, \
                workers(APP, pg_url, 2, args=["--group", "B", "--concurrency", "4"],
                        **common) as group_b:
            wait_members_seen(store, 3)
            group_of = {p.pid: "A" for p in group_a} | {p.pid: "B" for p in group_b}
            first = store.run_trigger("grouped")
            assert first is not None
            assert wait_run(store, first, 60)["state"] == "succeeded"
            for p in group_b:
                assert p.terminate() == 0
            wait_for(lambda: len(store.node_list_live(2.0)) == 1, 20, interval=0.1,
                     message="group B gone")
            second = store.run_trigger("grouped")
            assert second is not None
            run2 = wait_run(store, second, 60)
            assert run2["state"] == "succeeded"
    finally:
        store.close()
    seen = events(log)
    everything = {(s, n) for s in range(1, shards + 1) for n in range(per_shard)}
    for e in seen:
        assert group_of[e["pid"]] == e["group"], e  # the node's own view of its group
    run1 = [e for e in seen if e["run"] == first]
    assert sorted(e["shard"] for e in run1 if e["e"] == "load") == list(range(1, shards + 1))
    execs1 = [(e["shard"], e["n"]) for e in run1 if e["e"] == "exec"]
    assert sorted(execs1) == sorted(everything), "every record once"
    for e in run1:
        want = "A" if e["shard"] % 2 == 1 else "B"
        assert e["group"] == want, f"group {e['group']} touched shard {e['shard']}: {e}"
    assert {e["pid"] for e in run1 if e["group"] == "B"} <= {p.pid for p in group_b}
    run2_events = [e for e in seen if e["run"] == second]
    assert {e["pid"] for e in run2_events} == {group_a[0].pid}, "only A is left"
    assert sorted(e["shard"] for e in run2_events if e["e"] == "load") == \
        list(range(1, shards + 1)), "A took the even shards too"
    assert sorted((e["shard"], e["n"]) for e in run2_events if e["e"] == "exec") == \
        sorted(everything)
    assert run2["executed"] == shards * per_shard and run2["shards"] == shards


# -- 4: the lost-update guard ------------------------------------------------------------------


def test_record_re_marked_during_execute_is_executed_again_and_ends_done(pg_url, tmp_path):
    log, markers = tmp_path / "events", tmp_path / "markers"
    markers.mkdir()
    records, shards, key = 60, 3, 7
    build_pg(pg_url, "order", records, shards)
    data_url = sa_url(pg_url)
    env = {"TEST_EVENTS": str(log), "TEST_PIPELINES": "lostupdate", "TEST_DATA_URL": data_url,
           "TEST_SHARDS": str(shards), "TEST_MARKERS": str(markers), "TEST_LOST_KEY": str(key),
           "TEST_LOST_TABLE": "order_00"}
    store = Store.open(pg_url)
    try:
        with workers(APP, pg_url, 1, env=env, log=tmp_path / "workers.log"):
            wait_nodes(store, 1)
            run_id = store.run_trigger("lostupdate")
            assert run_id is not None
            run = wait_run(store, run_id, 60)
    finally:
        store.close()
    seen = events(log)
    assert [e for e in seen if e["e"] == "remarked"] == [{"e": "remarked", "id": key,
                                                          "changed": 1}]
    counts = collections.Counter(e["id"] for e in seen if e["e"] == "exec")
    assert counts[key] == 2, "the re-marked record runs again"
    assert set(counts) == set(range(1, records + 1))
    assert {i for i, n in counts.items() if n != 1} == {key}
    versions = [e["version"] for e in seen if e["e"] == "exec" and e["id"] == key]
    assert versions == [0, 1], "the second execution sees the change"
    assert run["state"] == "succeeded", run
    assert run["executed"] == records + 1 and run["stale"] == 0
    assert table_states(data_url, "order", shards) == {"DONE": records, "leased": 0}
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT status, version FROM order_00 WHERE id = %s", (key,)).fetchone()
    assert row == ("DONE", 1)


# -- 5: parking after max_attempts, the alert, ``sluice dead`` ------------------------------


def sluice_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLUICE_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sluice", *args], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)


def test_record_failing_every_attempt_is_parked_alerted_and_retried_with_cli(pg_url, tmp_path):
    build_pg(pg_url, "parcel", 6, 1)
    engine_url, bad = sa_url(pg_url), 4
    app = sluice.App(pg_url, heartbeat=0.5, node_ttl=2.0, lease_ttl=3.0, drain_timeout=2.0)
    source = sluice.TableSource(engine_url, "parcel_{shard}", shards=["00"])
    pipe = app.pipeline("parcels", source=source, max_attempts=3, record_backoff=(0.05, 0.1))
    alerts: list[sluice.Alert] = []
    app.on_alert(alerts.append)
    fixed = {"yes": False}
    calls: collections.Counter[int] = collections.Counter()

    @pipe.execute
    def deliver(ctx: sluice.Context, parcel: dict) -> None:
        calls[parcel["id"]] += 1
        if parcel["id"] == bad and not fixed["yes"]:
            raise ConnectionError(f"carrier refused parcel {parcel['id']}")

    store = Store.open(pg_url)
    try:
        with worker_thread(app, concurrency=4):
            wait_nodes(store, 1)
            run_id = store.run_trigger("parcels")
            assert run_id is not None
            run = wait_run(store, run_id, 30)
            assert run["parked"] == 1 and run["failed"] == 3, run
            assert calls[bad] == 3, "max_attempts=3 attempts, then parked"
            states = dict(psycopg.connect(pg_url).execute(
                "SELECT id, status FROM parcel_00").fetchall())
            assert states == {i: "FAILED" if i == bad else "DONE" for i in range(1, 7)}
            parked = [a for a in alerts if a.kind == "record_parked"]
            assert len(parked) == 1, alerts
            assert parked[0].subject == "parcels" and "ConnectionError" in parked[0].message
            assert parked[0].details["count"] == 1

            listed = sluice_cli(pg_url, "dead", "list", "parcels", "--json")
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
            assert len(rows) == 1 and rows[0]["attempts"] == 3 and rows[0]["shard"] == "00"
            assert "carrier refused parcel 4" in rows[0]["error"]
            assert f'"id": {bad},' in rows[0]["record"]

            fixed["yes"] = True
            retried = sluice_cli(pg_url, "dead", "retry", "parcels", "--all")
            assert retried.returncode == 0, retried.stderr
            assert "1 record(s) of parcels queued for retry" in retried.stdout
            retry_run = int(retried.stdout.rsplit("run", 1)[1].split()[0])
            assert wait_run(store, retry_run, 30)["state"] == "succeeded"
            assert calls[bad] == 4
            status = psycopg.connect(pg_url).execute(
                "SELECT status, lease_owner FROM parcel_00 WHERE id = %s", (bad,)).fetchone()
            assert status == ("DONE", None)
            again = sluice_cli(pg_url, "dead", "list", "parcels", "--json")
            assert json.loads(again.stdout) == []
    finally:
        store.close()
    assert len([a for a in alerts if a.kind == "record_parked"]) == 1
    assert max(calls[i] for i in calls if i != bad) == 1


# -- 6: bad input fails the run clearly and leaves the worker serving -----------------------------


def test_bad_layer_output_fails_the_run_with_a_clear_error_and_worker_keeps_serving(
        pg_url, tmp_path):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE thin_01 (id BIGINT PRIMARY KEY, status TEXT)")
        conn.execute("INSERT INTO thin_01 VALUES (1, 'PENDING')")
    engine_url = sa_url(pg_url)
    app = sluice.App(pg_url, heartbeat=0.5, node_ttl=2.0, lease_ttl=3.0, drain_timeout=2.0)
    alerts: list[sluice.Alert] = []
    app.on_alert(alerts.append)
    ticks: list[float] = []

    @app.job(fixed_rate=0.2)
    def tick(ctx: sluice.Context) -> None:
        ticks.append(time.monotonic())

    def noop(ctx: sluice.Context, record: object) -> None:
        return None

    bad_split = app.pipeline("bad_split")
    bad_split.split(lambda ctx: 42)
    bad_split.load(lambda ctx, shard, limit: [])
    bad_split.execute(noop)

    too_many = app.pipeline("too_many", batch=3)
    too_many.split(lambda ctx: ["a"])
    too_many.load(lambda ctx, shard, limit: list(range(limit + 1)))
    too_many.execute(noop)

    not_json = app.pipeline("not_json")
    not_json.split(lambda ctx: ["a"])
    not_json.load(lambda ctx, shard, limit: [{"id": 1, "tags": {"x", "y"}}])
    not_json.execute(noop)

    no_table = app.pipeline("no_table", source=sluice.TableSource(
        engine_url, "nosuch_{shard}", shards=["01"]))
    no_table.execute(noop)

    no_column = app.pipeline("no_column", source=sluice.TableSource(
        engine_url, "thin_{shard}", shards=["01"]))
    no_column.execute(noop)

    def bad_cursor_load(ctx: sluice.Context, shard: str, limit: int) -> list[int]:
        ctx.cursor = {"after": {1, 2}}
        return [1]

    bad_cursor = app.pipeline("bad_cursor")
    bad_cursor.split(lambda ctx: ["a"])
    bad_cursor.load(bad_cursor_load)
    bad_cursor.execute(noop)

    good = app.pipeline("good", batch=3)
    good_done: list[str] = []
    good.split(lambda ctx: ["a", "b"])

    @good.load
    def good_load(ctx: sluice.Context, shard: str, limit: int) -> list[str]:
        start = ctx.cursor or 0  # where this shard's previous load left off (kept in the store)
        if start >= 6:
            return []
        ctx.cursor = start + limit
        return [f"{shard}{i}" for i in range(start, start + limit)]

    @good.execute
    def good_execute(ctx: sluice.Context, record: str) -> None:
        good_done.append(record)

    expected = {
        "bad_split": ["split", "got int", "return e.g. a list"],
        "too_many": ["load of shard 'a'", "4 records for limit 3", "at most `limit`"],
        "not_json": ["load of shard 'a'", "not JSON-serialisable", "return dicts of"],
        "no_table": ["load of shard '01'", "'nosuch_01' does not exist", "create it"],
        "no_column": ["load of shard '01'", "lacks column(s)", "attempts", "state_ddl"],
        "bad_cursor": ["load of shard 'a'", "ctx.cursor", "not JSON-serialisable"],
    }
    store = Store.open(pg_url)
    try:
        with worker_thread(app, concurrency=4):
            wait_nodes(store, 1)
            wait_for(lambda: ticks, 10, message="the tick job firing")
            for name, fragments in expected.items():
                run_id = store.run_trigger(name)
                assert run_id is not None
                run = wait_run(store, run_id, 20)
                assert run["state"] == "failed", (name, run)
                error = run["error"] or ""
                assert error.startswith(f"pipeline {name!r}, "), error
                for fragment in fragments:
                    assert fragment in error, (name, fragment, error)
            failed_at = len(ticks)
            run_id = store.run_trigger("good")
            assert run_id is not None
            assert wait_run(store, run_id, 20)["state"] == "succeeded"
            assert sorted(good_done) == [f"{s}{i}" for s in "ab" for i in range(6)]
            wait_for(lambda: len(ticks) >= failed_at + 2, 15, message="the tick job still firing")
    finally:
        store.close()
    failed = collections.Counter(a.subject for a in alerts if a.kind == "run_failed")
    assert failed == dict.fromkeys(expected, 1), alerts


def test_chunks_grow_for_fast_records_without_a_rate_and_a_given_chunk_size_is_kept():
    from types import SimpleNamespace

    from sluice.pipeline.runtime import CHUNK, FAST_CHUNK, FAST_RECORD, chunk_size
    from sluice.worker.stats import NodeStats

    app = sluice.App("sqlite:///:memory:")
    free, rated = app.pipeline("free"), app.pipeline("rated", qps=100)
    fixed = app.pipeline("fixed", chunk_size=40)
    stats = NodeStats()
    w = SimpleNamespace(stats=stats, overrides={}, members=[{"id": "a"}, {"id": "b"}])
    assert chunk_size(w, free, 1000) == CHUNK, "no record run yet: speed unknown"
    for _ in range(50):
        for name in ("free", "rated", "fixed"):
            stats.executed(name, [(FAST_RECORD / 10, True)])
    assert chunk_size(w, free, 1000) == 500, "one shard: a share of its batch per live node"
    assert chunk_size(w, free, 1000, shards=25) == FAST_CHUNK, "whole batches for each node"
    assert chunk_size(w, free, 300, shards=5) == 300, "never more than the batch"
    assert chunk_size(w, free, 10_000) == FAST_CHUNK
    assert chunk_size(w, free, 150) == CHUNK
    assert chunk_size(w, rated, 1000) == CHUNK, "under a rate every node takes its share"
    assert chunk_size(w, fixed, 1000) == 40
    w.overrides["free"] = {"qps": 50}  # sluice set free --qps 50
    assert chunk_size(w, free, 1000) == CHUNK
    w.overrides.clear()
    for _ in range(100):  # the records became slow: small chunks again
        stats.executed("free", [(0.2, True)])
    assert chunk_size(w, free, 1000) == CHUNK
