"""``sluice.TableSource`` against real SQLite and PostgreSQL databases, without workers.

Each test builds its shard tables, then drives ``load`` / ``fence`` / ``complete`` / ``park``
the way the pipeline runtime does, and reads the rows back to check the state machine.
"""

from __future__ import annotations

import datetime
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

import sluice
from sluice.context import Context, NodeInfo, utc
from tests.helpers import wait_for

SHARD = "01"
TABLE = f"item_{SHARD}"
DDL = sluice.TableSource("sqlite://", "t_{shard}", shards=[]).state_ddl()


def new_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A SQLAlchemy URL to an empty business database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'business.db'}"
    return request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def engine(db_url) -> Iterator[Engine]:
    eng = new_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


def make_table(engine: Engine, rows: int, table: str = TABLE, ddl: str = DDL) -> None:
    with engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, '
                          f"payload VARCHAR(20) NOT NULL, {ddl})"))
        if rows:
            conn.execute(text(f'INSERT INTO "{table}" (id, payload) VALUES (:id, :p)'),
                         [{"id": i, "p": f"p{i}"} for i in range(1, rows + 1)])


def ctx(task_id: int, token: int, node: str = "node-1") -> Context:
    """The context a load task gets: its task id is stable across retries, its token is not."""
    return Context(job="items", run_id=1, scheduled_at=utc(0), attempt=1, task_id=task_id,
                   fencing_token=token, node=NodeInfo(id=node, group=None, zone=None,
                                                      concurrency=1))


def rows(engine: Engine, table: str = TABLE, key: str = "id") -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execute(text(f'SELECT * FROM "{table}" ORDER BY {key}')).mappings().all()
    return {r[key]: dict(r) for r in result}


def source(engine: Engine, **kwargs: Any) -> sluice.TableSource:
    return sluice.TableSource(engine, "item_{shard}", shards=[SHARD], **kwargs)


def ids(records: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in records]


# -- load ------------------------------------------------------------------------------------


def test_load_claims_pending_rows_in_key_order_and_stamps_the_claim(engine):
    make_table(engine, 10)
    src = source(engine)
    first = src.load(ctx(task_id=5, token=100), SHARD, 4)
    assert ids(first) == [1, 2, 3, 4]
    # a record is the row without its claim columns (status, lease owner, expiry, token)
    assert first[0] == {"id": 1, "payload": "p1", "attempts": 1, "version": 0}
    assert ids(src.load(ctx(task_id=6, token=101), SHARD, 4)) == [5, 6, 7, 8]
    assert ids(src.load(ctx(task_id=7, token=102), SHARD, 4)) == [9, 10]
    assert src.load(ctx(task_id=8, token=103), SHARD, 4) == []
    state = rows(engine)
    assert {r["status"] for r in state.values()} == {"PROCESSING"}
    assert state[1]["lease_owner"] == "load:5" and state[1]["lease_token"] == 100
    assert state[9]["lease_owner"] == "load:7" and state[9]["lease_token"] == 102
    assert all(r["attempts"] == 1 and r["lease_until"] is not None for r in state.values())
    assert src.split(None) == [SHARD]


def test_loads_go_on_from_the_cursor_then_take_rows_left_behind_it(engine):
    """A load leaves ctx.cursor at the last key it took and the next one starts there, so its
    cost does not grow with the rows already done; rows put back behind the cursor are taken
    once those ahead of it are."""
    make_table(engine, 10)
    src = source(engine)
    load = ctx(task_id=5, token=100)
    first = src.load(load, SHARD, 4)
    assert ids(first) == [1, 2, 3, 4] and load.cursor == 4
    assert src.complete(SHARD, first, 100) == 0
    with engine.begin() as conn:  # 2 is pending again behind the cursor; 6 is taken elsewhere
        conn.execute(text(f'UPDATE "{TABLE}" SET status = \'PENDING\' WHERE id = 2'))
        conn.execute(text(f'UPDATE "{TABLE}" SET status = \'DONE\' WHERE id = 6'))
    second = src.load(load, SHARD, 4)
    assert ids(second) == [5, 7, 8, 9] and load.cursor == 9
    assert src.complete(SHARD, second, 100) == 0
    third = src.load(load, SHARD, 4)
    assert ids(third) == [2, 10] and load.cursor == 10
    assert src.complete(SHARD, third, 100) == 0
    assert src.load(load, SHARD, 4) == [] and load.cursor == 10


def test_two_concurrent_loaders_on_separate_engines_never_get_the_same_row(engine, db_url):
    total = 1500
    make_table(engine, total)
    barrier = threading.Barrier(2)
    got: dict[int, list[int]] = {1: [], 2: []}
    owners: dict[int, set[str]] = {1: set(), 2: set()}
    errors: list[BaseException] = []

    def loader(me: int) -> None:
        # Each call is a load of its own task (a task reloading would take back its own
        # claims): loader 1 uses odd task ids, loader 2 even ones.
        own = new_engine(db_url)
        src = source(own)
        deadline = time.monotonic() + 30
        try:
            barrier.wait(10)
            for task_id in itertools.count(me, 2):
                assert time.monotonic() < deadline, "loaders did not finish"
                batch = src.load(ctx(task_id=task_id, token=task_id), SHARD, 23)
                if not batch and len(got[1]) + len(got[2]) >= total:
                    return
                got[me].extend(ids(batch))
                owners[me].add(f"load:{task_id}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=loader, args=(t,)) for t in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    if engine.dialect.name == "postgresql":
        # SQLite serialises writers: one loader may win the lock for every load, which is
        # correct; only PostgreSQL lets both claim at once, so only there must both get rows.
        assert got[1] and got[2], "both loaders claimed rows"
    assert not set(got[1]) & set(got[2]), "a row was claimed by both loaders"
    assert len(got[1]) == len(set(got[1])) and len(got[2]) == len(set(got[2]))
    assert sorted(got[1] + got[2]) == list(range(1, total + 1))
    state = rows(engine)
    for me, claimed in got.items():
        assert {state[i]["lease_owner"] for i in claimed} <= owners[me]
    assert all(r["attempts"] == 1 for r in state.values()), "no row claimed twice"


def test_retry_of_the_same_load_task_reclaims_the_rows_its_lost_attempt_claimed(engine):
    make_table(engine, 10)
    src = source(engine)
    assert ids(src.load(ctx(task_id=7, token=1), SHARD, 5)) == [1, 2, 3, 4, 5]
    # the attempt's node died before dispatching them; another load task cannot take them
    assert ids(src.load(ctx(task_id=8, token=2), SHARD, 5)) == [6, 7, 8, 9, 10]
    assert src.load(ctx(task_id=9, token=3), SHARD, 5) == []
    # ... but the retry of task 7 (same task id, new token, maybe another node) can
    again = src.load(ctx(task_id=7, token=4, node="node-2"), SHARD, 5)
    assert ids(again) == [1, 2, 3, 4, 5]
    state = rows(engine)
    assert {state[i]["lease_token"] for i in range(1, 6)} == {4}
    assert {state[i]["lease_token"] for i in range(6, 11)} == {2}


def test_rows_stuck_processing_past_their_lease_are_reclaimed(engine):
    make_table(engine, 3)
    src = source(engine, lease=0.3)
    assert ids(src.load(ctx(task_id=1, token=10), SHARD, 10)) == [1, 2, 3]
    assert src.load(ctx(task_id=2, token=11), SHARD, 10) == [], "still leased"
    token = iter(range(12, 10_000))
    reclaimed = wait_for(lambda: src.load(ctx(task_id=2, token=next(token)), SHARD, 10), 10,
                         message="the lapsed rows reclaimed")
    assert ids(reclaimed) == [1, 2, 3]
    state = rows(engine)
    assert {r["lease_owner"] for r in state.values()} == {"load:2"}
    assert {r["attempts"] for r in state.values()} == {2}
    # the first claim's token no longer completes them
    assert src.complete(SHARD, reclaimed, 10) == 3
    assert src.complete(SHARD, reclaimed, state[1]["lease_token"]) == 0
    assert {r["status"] for r in rows(engine).values()} == {"DONE"}


def test_rows_to_take_back_are_claimed_before_pending_ones(engine):
    """A lapsed row is taken back at the next load, even when it sorts after many pending rows
    (each pick walks the (status, key) index on its own)."""
    make_table(engine, 10)
    with engine.begin() as conn:
        conn.execute(text(f'UPDATE "{TABLE}" SET status = \'PROCESSING\', lease_owner = '
                          "'load:99', lease_until = 0, lease_token = 5 WHERE id >= 9"))
    src = source(engine)
    assert ids(src.load(ctx(task_id=1, token=10), SHARD, 3)) == [1, 9, 10]
    assert ids(src.load(ctx(task_id=2, token=11), SHARD, 3)) == [2, 3, 4]


# -- fence and complete ----------------------------------------------------------------------


def test_fence_then_complete_with_the_current_token_marks_rows_done(engine):
    make_table(engine, 4)
    src = source(engine)
    loaded = src.load(ctx(task_id=1, token=50), SHARD, 10)
    src.fence(SHARD, loaded[:3], 51, "node-1")
    state = rows(engine)
    assert [state[i]["lease_token"] for i in (1, 2, 3, 4)] == [51, 51, 51, 50]
    assert state[1]["lease_owner"] == "node-1"
    assert src.complete(SHARD, loaded[:3], 51) == 0
    state = rows(engine)
    assert [state[i]["status"] for i in (1, 2, 3, 4)] == ["DONE"] * 3 + ["PROCESSING"]
    assert all(state[i]["lease_owner"] is None and state[i]["lease_until"] is None
               for i in (1, 2, 3))
    assert src.complete(SHARD, loaded[:3], 51) == 3, "a second completion changes nothing"


def test_complete_with_a_stale_token_is_rejected_and_leaves_the_row_untouched(engine):
    make_table(engine, 2)
    src = source(engine)
    loaded = src.load(ctx(task_id=1, token=50), SHARD, 10)
    src.fence(SHARD, loaded, 51, "node-1")
    src.fence(SHARD, loaded, 52, "node-2")  # the chunk was reclaimed by another node
    src.fence(SHARD, loaded, 51, "node-1")  # an older token never overwrites a newer one
    before = rows(engine)
    assert {r["lease_token"] for r in before.values()} == {52}
    assert {r["lease_owner"] for r in before.values()} == {"node-2"}
    assert src.complete(SHARD, loaded, 51) == 2
    assert src.complete_many([(SHARD, loaded[:1], 51), (SHARD, loaded[1:], 50)]) == [1, 1]
    assert rows(engine) == before
    assert src.complete(SHARD, loaded, 52) == 0
    assert {r["status"] for r in rows(engine).values()} == {"DONE"}


def test_version_bump_while_processing_sends_the_row_back_to_pending(engine):
    make_table(engine, 2)
    src = source(engine)
    loaded = src.load(ctx(task_id=1, token=10), SHARD, 10)
    src.fence(SHARD, loaded, 11, "node-1")
    with engine.begin() as conn:  # a business change re-marks row 1 while it is processed
        assert sluice.mark_pending(conn, TABLE, 1) == 1
    state = rows(engine)
    assert state[1]["status"] == "PROCESSING" and state[1]["version"] == 1
    assert src.complete(SHARD, loaded, 11) == 0
    state = rows(engine)
    assert state[1]["status"] == "PENDING", "the change must be processed again"
    assert state[2]["status"] == "DONE"
    again = src.load(ctx(task_id=1, token=12), SHARD, 10)
    assert ids(again) == [1] and again[0]["version"] == 1
    src.fence(SHARD, again, 13, "node-1")
    assert src.complete(SHARD, again, 13) == 0
    assert rows(engine)[1]["status"] == "DONE"
    with engine.begin() as conn:  # re-marking a finished row makes it pending at once
        assert sluice.mark_pending(conn, TABLE, 2) == 1
        assert sluice.mark_pending(conn, TABLE, 999) == 0
    assert rows(engine)[2]["status"] == "PENDING" and rows(engine)[2]["version"] == 1


def test_park_marks_rows_failed_and_a_later_fence_takes_them_back(engine):
    make_table(engine, 2)
    src = source(engine)
    loaded = src.load(ctx(task_id=1, token=10), SHARD, 10)
    src.fence(SHARD, loaded, 11, "node-1")
    src.park(SHARD, loaded[:1], 10)  # a stale token parks nothing
    assert rows(engine)[1]["status"] == "PROCESSING"
    src.park(SHARD, loaded[:1], 11)
    assert rows(engine)[1]["status"] == "FAILED" and rows(engine)[1]["lease_owner"] is None
    assert src.load(ctx(task_id=2, token=12), SHARD, 10) == [], "parked rows are not loaded"
    src.fence(SHARD, loaded[:1], 20, "node-3")  # ``sluice dead retry`` runs it again
    assert rows(engine)[1]["status"] == "PROCESSING"
    assert src.complete(SHARD, loaded[:1], 20) == 0
    assert rows(engine)[1]["status"] == "DONE"


def test_renamed_state_columns_and_custom_state_values(engine):
    src = sluice.TableSource(engine, "job_{shard}", shards=[SHARD], key="job_id",
                             columns={"status": "state", "version": "rev"}, pending="new",
                             processing="busy", done="ok", failed="bad")
    with engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "job_{SHARD}" (job_id INTEGER PRIMARY KEY, '
                          f"{src.state_ddl()})"))
        conn.execute(text(f'INSERT INTO "job_{SHARD}" (job_id) VALUES (1), (2)'))
    loaded = src.load(ctx(task_id=1, token=5), SHARD, 10)
    assert [r["job_id"] for r in loaded] == [1, 2] and "state" not in loaded[0]
    assert {r["state"] for r in rows(engine, f"job_{SHARD}", key="job_id").values()} == {"busy"}
    src.fence(SHARD, loaded, 6, "node-1")
    with engine.begin() as conn:
        sluice.mark_pending(conn, f"job_{SHARD}", 2, key_column="job_id", status_column="state",
                            version_column="rev", pending="new", processing="busy")
    assert src.complete(SHARD, loaded, 6) == 0
    state = rows(engine, f"job_{SHARD}", key="job_id")
    assert {i: r["state"] for i, r in state.items()} == {1: "ok", 2: "new"}


# -- contract errors -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"table": 'item"_{shard}'},
    {"table": "item {shard}"},
    {"table": "item_{shard}; drop"},
    {"table": "item"},  # no {shard}
    {"key": 'id"'},
    {"key": "my id"},
    {"columns": {"status": "st atus"}},
    {"columns": {"lease_owner": 'owner"'}},
    {"columns": {"colour": "x"}},  # not a state column
])
def test_identifiers_are_validated_at_declaration(bad):
    kwargs = {"table": "item_{shard}", **bad}
    with pytest.raises(sluice.ConfigError) as err:
        sluice.TableSource("sqlite://", kwargs.pop("table"), shards=[SHARD], **kwargs)
    assert "TableSource" in str(err.value)


def test_shard_keys_and_mark_pending_names_are_validated():
    src = sluice.TableSource("sqlite://", "item_{shard}", shards=["a b"])
    with pytest.raises(sluice.ConfigError, match="not a plain SQL identifier"):
        src.table_for("a b")
    with pytest.raises(sluice.ConfigError):
        src.table_for('x"')
    assert src.table_for(7) == "item_7"
    for kwargs in ({"table": 'item"'}, {"table": "item 1"}, {"key_column": "id;"},
                   {"status_column": "st atus"}, {"version_column": 'v"'}):
        args = {"table": "item_01", **kwargs}
        with pytest.raises(sluice.ConfigError):
            sluice.mark_pending(None, args.pop("table"), 1, **args)


def test_missing_table_or_state_column_is_a_pipeline_error_naming_the_fix(engine):
    src = source(engine)
    with pytest.raises(sluice.PipelineError, match="'item_01' does not exist; create it"):
        src.load(ctx(task_id=1, token=1), SHARD, 10)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{TABLE}" (id INTEGER PRIMARY KEY, status TEXT)'))
    with pytest.raises(sluice.PipelineError) as err:
        src.load(ctx(task_id=1, token=1), SHARD, 10)
    message = str(err.value)
    assert "lacks column(s)" in message and "lease_token" in message and "state_ddl" in message
    assert "status" not in message.split("lacks column(s)")[1].split(";")[0]


def test_uuid_keys_and_timestamp_columns_load_as_text_and_complete(engine):
    """Keys and columns of types JSON lacks travel as text and still find their rows."""
    uuid_type = "UUID" if engine.dialect.name == "postgresql" else "VARCHAR(36)"
    keys = [str(uuid.UUID(int=i)) for i in range(1, 6)]
    with engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{TABLE}" (id {uuid_type} PRIMARY KEY, '
                          f"due TIMESTAMP NOT NULL, {DDL})"))
        conn.execute(text(f'INSERT INTO "{TABLE}" (id, due) VALUES (:id, :due)'),
                     [{"id": k, "due": datetime.datetime(2026, 12, 1, 9, 30)} for k in keys])
    src = source(engine)
    loaded = src.load(ctx(task_id=1, token=7), SHARD, 10)
    assert [r["id"] for r in loaded] == keys
    assert all(isinstance(r["due"], str) and r["due"].startswith("2026-12-01") for r in loaded)
    json.dumps(loaded)  # a chunk's payload
    assert src.complete_many([(SHARD, loaded[:2], 7), (SHARD, loaded[2:], 6)]) == [0, 3]
    assert [r["status"] for r in rows(engine).values()] == ["DONE"] * 2 + ["PROCESSING"] * 3

