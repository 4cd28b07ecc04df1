"""The contract both stores must meet: the same calls, the same answers, on SQLite and
PostgreSQL. Races use real threads, each with its own connections."""

from __future__ import annotations

import threading
import time

import pytest

from sluice.errors import SchemaError
from sluice.store import SCHEMA_VERSION, Firing, Store, TaskPlan
from sluice.store.drivers import SQLiteDriver


@pytest.fixture
def store(store_url):
    s = Store.open(store_url)
    yield s
    s.close()


def _job(store: Store, name: str = "j", next_fire: float | None = None) -> float:
    now = store.clock()
    store.job_register(name, "job", {"v": 1}, next_fire if next_fire is not None else now - 1,
                       None)
    return now


def test_migration_is_idempotent_and_refuses_a_newer_schema(store, store_url):
    assert store.migrate() == SCHEMA_VERSION
    again = Store.open(store_url)
    try:
        assert again.migrate() == SCHEMA_VERSION
    finally:
        again.close()
    with store.db.transaction() as tx:
        tx._cur.execute("UPDATE sluice_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="newer"):
        Store.open(store_url)


def test_job_register_keeps_schedule_unless_declaration_changes(store):
    _job(store, next_fire=100.0)
    assert not store.job_register("j", "job", {"v": 1}, 999.0, None)
    assert store.job_get("j")["next_fire_at"] == 100.0
    assert store.job_register("j", "job", {"v": 2}, 999.0, None)
    assert store.job_get("j")["next_fire_at"] == 999.0


def test_racing_nodes_fire_one_instant_once(store, store_url):
    _job(store, next_fire=1000.0)
    results: list = []
    barrier = threading.Barrier(6)

    def node(i: int) -> None:
        s = Store.open(store_url)
        barrier.wait()
        results.append(s.run_fire("j", 1000.0, 1001.0, [Firing(scheduled_at=1000.0)], "skip",
                                  lambda f: [TaskPlan(kind="job", owner=f"n{i}")]))
        s.close()

    threads = [threading.Thread(target=node, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and len(store.run_list("j")) == 1


def test_unique_instant_even_without_the_compare_and_set(store):
    _job(store, next_fire=5.0)
    store.run_fire("j", 5.0, 6.0, [Firing(scheduled_at=5.0)], "concurrent", lambda f: [])
    _job(store, next_fire=5.0)  # unchanged spec: no reset
    with store.db.transaction() as tx:
        tx.run("job_advance", name="j", expected=6.0, new_next=5.0)
    store.run_fire("j", 5.0, 6.0, [Firing(scheduled_at=5.0)], "concurrent", lambda f: [])
    assert len(store.run_list("j")) == 1


def test_claims_are_exclusive_and_fenced(store, store_url):
    _job(store)
    tasks = [TaskPlan(kind="job", max_attempts=3) for _ in range(40)]
    store.run_fire("j", store.job_get("j")["next_fire_at"], None,
                   [Firing(scheduled_at=1.0)], "skip", lambda f: tasks)
    claimed: list = []
    lock = threading.Lock()

    def node(i: int) -> None:
        s = Store.open(store_url)
        while batch := s.task_claim(f"n{i}", 3, [], None, 30):
            with lock:
                claimed.extend(batch)
        s.close()

    run_id = store.run_list("j")[0]["id"]
    assert store.run_get(run_id)["state"] == "pending"
    threads = [threading.Thread(target=node, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(t.id for t in claimed) == sorted({t.id for t in claimed})
    assert len(claimed) == 40
    assert store.run_get(run_id)["state"] == "running", "a claim marks its run running"
    tokens = [t.token for t in claimed]
    t0 = claimed[0]
    assert store.task_fail(t0.id, t0.token, "boom", 0).retried
    again = store.task_claim("other", 1, [], None, 30)[0]
    assert again.id == t0.id and again.token > max(tokens)
    assert store.task_complete(t0.id, t0.token).stale  # the old owner's completion
    assert not store.task_complete(again.id, again.token).stale
    run = store.run_list("j")[0]
    assert run["stale"] == 1


def test_expired_lease_is_reaped_then_dead_after_last_attempt(store):
    _job(store)
    store.run_fire("j", store.job_get("j")["next_fire_at"], None, [Firing(scheduled_at=1.0)],
                   "skip", lambda f: [TaskPlan(kind="job", max_attempts=2)])
    t1 = store.task_claim("a", 1, [], None, 0.05)[0]
    time.sleep(0.1)  # let the 50 ms lease lapse (database time)
    assert store.task_reap(node_ttl=60) == []
    t2 = store.task_claim("b", 1, [], None, 0.05)[0]
    assert t2.id == t1.id and t2.attempt == 2 and (t1.claims, t2.claims) == (1, 2)
    time.sleep(0.1)
    died = store.task_reap(node_ttl=60)
    assert [d["id"] for d in died] == [t1.id]
    run = store.run_list("j")[0]
    assert run["state"] == "lost" and "lease expired on node b" in run["error"]


def test_renewal_keeps_a_lease_alive(store):
    _job(store)
    store.run_fire("j", store.job_get("j")["next_fire_at"], None, [Firing(scheduled_at=1.0)],
                   "skip", lambda f: [TaskPlan(kind="job")])
    t = store.task_claim("a", 1, [], None, 0.3)[0]
    for _ in range(4):
        time.sleep(0.1)
        assert store.task_renew("a", [(t.id, t.token)], 0.3) == {t.id: (t.token, False)}
        assert store.task_renew("a", [(t.id, t.token - 1)], 0.3) == {}
        store.task_reap(node_ttl=60)
    assert not store.task_complete(t.id, t.token).stale


def test_group_checkpoint_applies_current_tokens_and_reports_stale_ones(store):
    from sluice.store import Counts

    _job(store)
    store.run_fire("j", store.job_get("j")["next_fire_at"], None, [Firing(scheduled_at=1.0)],
                   "skip", lambda f: [TaskPlan(kind="exec") for _ in range(3)])
    a, b, c = sorted(store.task_claim("n", 3, [], None, 30), key=lambda t: t.id)
    run_id = a.run_id
    store.task_release(b.id, b.token)
    b2 = store.task_claim("m", 1, [], None, 30)[0]  # b taken over: its old token is stale
    stale = store.task_checkpoint([
        (c.id, c.token, {"done": [0, 1]}, run_id, Counts(executed=2)),
        (a.id, a.token, {"done": [0]}, run_id, Counts(executed=1)),
        (b.id, b.token, {"done": [0]}, run_id, Counts(executed=1)),
    ])
    assert stale == {b.id} and b2.id == b.id
    # a hand-back does not count as an attempt, but the next holder knows it is not the first
    assert (a.claims, b2.attempt, b2.claims) == (1, 1, 2)
    run = store.run_get(run_id)
    assert (run["executed"], run["stale"]) == (3, 1)
    progress = {t["id"]: t["progress"] for t in store.run_tasks(run_id)}
    assert progress[a.id] == '{"done":[0]}' and progress[c.id] == '{"done":[0,1]}'
    assert progress[b.id] == "[]"


def test_rate_backlog_counts_loaded_not_executed_records_and_open_loaders(store):
    from sluice.store import Counts

    _job(store)
    store.run_fire("j", store.job_get("j")["next_fire_at"], None, [Firing(scheduled_at=1.0)],
                   "skip", lambda f: [TaskPlan(kind="load") for _ in range(2)])
    loader = store.task_claim("n", 1, [], None, 30)[0]
    store.task_spawn(loader.id, loader.token, [TaskPlan(kind="exec", parent_id=loader.id)],
                     Counts(loaded=100))
    chunk = next(t for t in store.task_claim("n", 5, [], None, 30) if t.kind == "exec")
    store.task_checkpoint([(chunk.id, chunk.token, {}, chunk.run_id, Counts(executed=30))])
    assert store.rate_backlog("j") == (70, 2)
    assert store.rate_backlog("other") == (0, 0)


def test_a_run_ends_with_its_last_task_and_chunks_leave_the_run_row_alone(store):
    """Chunks are covered by their waiting loader: their ends count on the run only when they
    carry counts, and the run ends when its loader (the last task without a parent) does."""
    from sluice.store import Counts

    _job(store)
    store.run_fire("j", store.job_get("j")["next_fire_at"], None, [Firing(scheduled_at=1.0)],
                   "skip", lambda f: [TaskPlan(kind="load")])
    loader = store.task_claim("n", 1, [], None, 30)[0]
    with pytest.raises(ValueError, match="wait=True"):
        store.task_spawn(loader.id, loader.token, [TaskPlan(kind="exec", parent_id=loader.id)],
                         wait=False)
    store.task_spawn(loader.id, loader.token,
                     [TaskPlan(kind="exec", parent_id=loader.id) for _ in range(2)],
                     Counts(loaded=20))
    assert store.run_get(loader.run_id)["open_tasks"] == 1
    first, second = sorted(store.task_claim("n", 5, [], None, 30), key=lambda t: t.id)
    # the one-statement end (PostgreSQL), fenced: a stale token only counts as stale
    stale = store.task_finish_chunk(first.id, first.token - 1, Counts(executed=7), None, [],
                                    "s", parent_id=loader.id)
    assert stale.stale and store.run_get(loader.run_id)["stale"] == 1
    out = store.task_finish_chunk(first.id, first.token, Counts(executed=3), None, [], "s",
                                  parent_id=loader.id)
    run = store.run_get(loader.run_id)
    assert not out.stale and (run["executed"], run["stale"], run["open_tasks"]) == (3, 1, 1)
    assert store.task_finish_chunk(first.id, first.token, Counts(), None, [], "s",
                                   parent_id=loader.id).stale, "ended once"
    retry = TaskPlan(kind="exec", parent_id=loader.id, payload={"records": [1]})
    out = store.task_finish_chunk(second.id, second.token, Counts(failed=1), retry, [], "s")
    run = store.run_get(loader.run_id)
    assert (run["open_tasks"], run["failed"], run["state"]) == (1, 1, "running")
    assert run["stale"] == 2
    assert out.run_finished is None
    again = store.task_claim("n", 5, [], None, 30)
    assert [t.kind for t in again] == ["exec"]  # the retry; the loader still waits for it
    store.task_finish_chunk(again[0].id, again[0].token, Counts(), None, [], "s",
                            parent_id=loader.id)
    loader = store.task_claim("n", 5, [], None, 30)[0]  # its turn came: load again, or end
    assert store.task_complete(loader.id, loader.token).run_finished == "succeeded"
    assert store.run_get(loader.run_id)["open_tasks"] == 0


def test_a_loader_dispatches_its_chunks_fenced_and_they_keep_what_they_carry(store):
    """One statement on PostgreSQL, a transaction on SQLite: the same outcome."""
    import json

    from sluice.store import Counts

    _job(store)
    store.run_fire("j", store.job_get("j")["next_fire_at"], None, [Firing(scheduled_at=1.0)],
                   "skip", lambda f: [TaskPlan(kind="load", max_attempts=3)])
    loader = store.task_claim("n", 1, [], None, 30)[0]
    records = [{"id": 1, "text": 'quote " back \\ slash {brace}, comma', "ü": None}]
    chunk = TaskPlan(kind="exec", parent_id=loader.id, grp="g1", zone="z",
                     payload={"records": records, "attempts": [0]}, max_attempts=1_000_000)
    later = TaskPlan(kind="exec", parent_id=loader.id, payload={"records": [2]}, delay=60.0)
    assert store.task_spawn(loader.id, loader.token - 1, [chunk], Counts(loaded=5)).stale
    run = store.run_get(loader.run_id)
    assert (run["stale"], run["loaded"]) == (1, 0)
    assert [t["kind"] for t in store.run_tasks(loader.run_id)] == ["load"], "none inserted"
    out = store.task_spawn(loader.id, loader.token, [chunk, later], Counts(loaded=7),
                           progress={"cursor": 5})
    assert not out.stale and store.run_get(loader.run_id)["loaded"] == 7
    tasks = {t["kind"]: t for t in store.run_tasks(loader.run_id)}
    assert tasks["load"]["state"] == "waiting"
    assert json.loads(tasks["load"]["progress"]) == {"cursor": 5}
    claimed = store.task_claim("n", 5, ["g1"], "z", 30)
    assert len(claimed) == 1, "the delayed chunk is not due yet"
    got = claimed[0]
    assert (got.kind, got.parent_id, got.max_attempts) == ("exec", loader.id, 1_000_000)
    assert got.payload == {"records": records, "attempts": [0]}
    assert got.grp == "g1"


def test_claims_skip_execute_chunks_of_saturated_jobs(store):
    """A node whose limiter for a job already has callers waiting takes none of its execute
    chunks, but still its other tasks and other jobs' chunks."""
    _job(store, "a")
    _job(store, "b")
    for name in ("a", "b"):
        store.run_fire(name, store.job_get(name)["next_fire_at"], None,
                       [Firing(scheduled_at=1.0)], "skip",
                       lambda f: [TaskPlan(kind="exec"), TaskPlan(kind="load")])
    got = store.task_claim("n", 10, [], None, 30, saturated=["a"])
    assert sorted((t.job, t.kind) for t in got) == [("a", "load"), ("b", "exec"), ("b", "load")]
    assert [(t.job, t.kind) for t in store.task_claim("n", 10, [], None, 30)] == [("a", "exec")]


def test_overlap_policies_at_the_store(store):
    for policy, expected in (("skip", ["pending", "skipped", "skipped"]),
                             ("queue", ["pending", "queued", "skipped"]),
                             ("concurrent", ["pending", "pending", "pending"]),
                             ("replace", ["pending", "pending", "pending"])):
        name = f"j_{policy}"
        _job(store, name, next_fire=1.0)
        store.run_fire(name, 1.0, 4.0, [Firing(scheduled_at=float(i)) for i in (1, 2, 3)],
                       policy, lambda f: [TaskPlan(kind="job")])
        runs = sorted(store.run_list(name), key=lambda r: r["id"])
        assert [r["state"] for r in runs] == expected, policy
        if policy == "replace":
            assert [r["cancel_requested"] for r in runs] == [1, 1, 0]


def test_queued_run_is_promoted_when_the_active_one_ends(store):
    _job(store, next_fire=1.0)
    store.run_fire("j", 1.0, 3.0, [Firing(scheduled_at=1.0), Firing(scheduled_at=2.0)],
                   "queue", lambda f: [TaskPlan(kind="job")])
    t = store.task_claim("a", 5, [], None, 30)
    assert len(t) == 1
    store.task_complete(t[0].id, t[0].token)
    ready = store.run_ready()
    assert [r["scheduled_at"] for r in ready] == [2.0]
    assert store.run_start(ready[0]["id"], "j", [TaskPlan(kind="job")])
    assert not store.run_start(ready[0]["id"], "j", [TaskPlan(kind="job")])


def test_lock_tokens_increase_and_stale_holders_are_rejected(store):
    a = store.lock_acquire("L", "a", 0.05)
    assert a is not None and store.lock_acquire("L", "b", 10) is None
    time.sleep(0.1)
    b = store.lock_acquire("L", "b", 10)
    assert b is not None and b[0] > a[0]
    assert not store.lock_check("L", a[0]) and store.lock_check("L", b[0])
    assert store.lock_renew("L", a[0], 10) is None
    assert not store.lock_release("L", a[0])
    assert store.lock_release("L", b[0])
    c = store.lock_acquire("L", "c", 10)
    assert c is not None and c[0] > b[0]


def test_sqlite_uses_wal_and_busy_timeout(sqlite_url):
    store = Store.open(sqlite_url)
    assert isinstance(store.db, SQLiteDriver)
    conn = store.db._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
