"""put(): every kind of transaction, rollbacks, savepoints, bad input, the table itself."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import psycopg
import pytest
from outbox_helpers import Collector, wait_until
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import Session

from sluice.errors import ConfigError, PayloadError
from sluice.outbox import Outbox


def _rows(engine: Engine, table: str = "sluice_outbox") -> list[tuple]:
    with engine.connect() as c:
        return list(c.execute(text(f"SELECT id, aggregatetype, status FROM {table} ORDER BY id")))


def _raw(engine: Engine) -> psycopg.Connection | sqlite3.Connection:
    if engine.dialect.name == "postgresql":
        return psycopg.connect(
            engine.url.render_as_string(hide_password=False).replace("+psycopg", "")
        )
    return sqlite3.connect(engine.url.database)


def test_table_has_the_debezium_shape_and_creation_is_idempotent(engine: Engine) -> None:
    Outbox(engine, Collector()).status()
    Outbox(engine, Collector()).status()  # a second instance finds the table in place
    cols = {c["name"] for c in inspect(engine).get_columns("sluice_outbox")}
    assert {"id", "aggregatetype", "aggregateid", "type", "payload", "headers"} <= cols
    assert {"status", "attempts", "next_attempt_at", "created_at", "sent_at", "last_error"} <= cols


def test_an_older_table_gets_the_missing_columns(pg_engine: Engine) -> None:
    with pg_engine.begin() as c:
        c.execute(
            text(
                "CREATE TABLE legacy_outbox (id bigserial PRIMARY KEY, aggregatetype text NOT NULL,"
                " aggregateid text, type text NOT NULL, payload jsonb NOT NULL)"
            )
        )
    Outbox(pg_engine, Collector(), table="legacy_outbox").status()
    cols = {c["name"] for c in inspect(pg_engine).get_columns("legacy_outbox")}
    assert {"status", "lease_owner", "last_error", "ordered"} <= cols


def test_every_kind_of_transaction_sends_after_commit_only(engine: Engine) -> None:
    pub = Collector()
    ob = Outbox(engine, pub)
    with Session(engine) as s, s.begin():
        a = ob.put(s, topic="t.session", payload={"n": 1})
    with Session(engine) as s, s.begin():
        ob.put(s, topic="t.rolled", payload={"n": 0})
        s.rollback()
    with engine.begin() as c:
        b = ob.put(c, topic="t.connection", payload=[1, 2])
    with engine.connect() as c:
        ob.put(c, topic="t.rolled", payload={"n": 0})
        c.rollback()
    raw = _raw(engine)
    try:
        d = ob.put(raw, topic="t.raw", payload="x", headers={"h": "v"})
        raw.commit()
        ob.put(raw, topic="t.rolled", payload="x")
        raw.rollback()
    finally:
        raw.close()
    wait_until(lambda: len(pub.ids) >= 3, 10, "three after-commit sends")
    assert sorted(pub.ids) == sorted([a, b, d])
    assert {m.topic for m in pub.messages} == {"t.session", "t.connection", "t.raw"}
    assert next(m for m in pub.messages if m.id == d).headers == {"h": "v"}
    assert ob.relay(owner="t").claimed == 0  # the relay finds nothing more to do
    assert [r[1] for r in _rows(engine)] == ["t.session", "t.connection", "t.raw"]
    ob.close()


def test_a_savepoint_rolled_back_takes_its_message_with_it(engine: Engine) -> None:
    pub = Collector()
    ob = Outbox(engine, pub)
    with Session(engine) as s, s.begin():
        kept = ob.put(s, topic="t.kept", payload=1)
        nested = s.begin_nested()
        ob.put(s, topic="t.dropped", payload=2)
        nested.rollback()
    pub.wait_for(1)
    assert pub.ids == [kept]
    assert [r[1] for r in _rows(engine)] == ["t.kept"]


def test_psycopg_savepoint_rollback(pg_engine: Engine) -> None:
    pub = Collector()
    ob = Outbox(pg_engine, pub)
    raw = _raw(pg_engine)
    with raw.transaction():
        kept = ob.put(raw, topic="t.kept", payload=1)
        with pytest.raises(RuntimeError), raw.transaction():
            ob.put(raw, topic="t.dropped", payload=2)
            raise RuntimeError("undo the savepoint")
    pub.wait_for(1)
    assert pub.ids == [kept]
    raw.close()


@pytest.mark.parametrize(
    "payload", [{1, 2}, object(), float("nan"), {"when": timedelta(seconds=1)}, b"bytes"]
)
def test_payload_must_be_json(sqlite_engine: Engine, payload: object) -> None:
    ob = Outbox(sqlite_engine, Collector())
    with Session(sqlite_engine) as s, s.begin(), pytest.raises(PayloadError, match=r"t\.bad"):
        ob.put(s, topic="t.bad", payload=payload)


def test_bad_arguments_are_named(sqlite_engine: Engine) -> None:
    ob = Outbox(sqlite_engine, Collector())
    with Session(sqlite_engine) as s, s.begin():
        with pytest.raises(PayloadError, match="headers"):
            ob.put(s, topic="t", payload=1, headers={"n": 1})  # type: ignore[dict-item]
        with pytest.raises(ConfigError, match="needs a key"):
            ob.put(s, topic="t", payload=1, ordered=True)
        with pytest.raises(ConfigError, match="topic"):
            ob.put(s, topic="", payload=1)
        with pytest.raises(ConfigError, match="key"):
            ob.put(s, topic="t", payload=1, key=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="transaction"):
        ob.put(object(), topic="t", payload=1)


def test_bad_configuration_fails_at_construction(sqlite_engine: Engine) -> None:
    for kwargs in (
        {"table": "drop table x"},
        {"max_attempts": 0},
        {"backoff": (5.0, 1.0)},
        {"retention": timedelta(0)},
        {"lease": -1},
    ):
        with pytest.raises(ConfigError):
            Outbox(sqlite_engine, Collector(), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="publish"):
        Outbox(sqlite_engine, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="memory"):
        Outbox(create_engine("sqlite://"), Collector())


def test_a_transaction_on_another_database_kind_is_refused(
    sqlite_engine: Engine, pg_engine: Engine
) -> None:
    ob = Outbox(sqlite_engine, Collector())
    with Session(pg_engine) as s, s.begin(), pytest.raises(ConfigError, match="sqlite"):
        ob.put(s, topic="t", payload=1)


def test_first_sqlite_put_after_a_business_write_does_not_wait_on_itself(
    sqlite_engine: Engine,
) -> None:
    with sqlite_engine.begin() as c:
        c.execute(text("CREATE TABLE biz (n integer)"))
    pub = Collector()
    ob = Outbox(sqlite_engine, pub)
    with Session(sqlite_engine) as s, s.begin():
        s.execute(text("INSERT INTO biz VALUES (1)"))  # the caller holds SQLite's write lock
        ob.put(s, topic="t", payload=1)
    pub.wait_for(1)
