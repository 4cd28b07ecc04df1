"""after_commit(): runs once the transaction commits, never after a rollback, off-thread."""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest
from outbox_helpers import wait_until
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from sluice.errors import ConfigError
from sluice.outbox import after_commit


class Calls:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def fn(self, name: str):
        def call() -> None:
            with self._lock:
                self.names.append(name)
                self.threads.add(threading.get_ident())

        return call

    def wait(self, *names: str) -> None:
        wait_until(lambda: sorted(self.names) == sorted(names), 10, f"callbacks {names}")


def _table(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS biz (n integer)"))


def test_session_commit_rollback_and_savepoints(engine: Engine) -> None:
    _table(engine)
    calls = Calls()
    with Session(engine) as s:
        with s.begin():
            s.execute(text("INSERT INTO biz VALUES (1)"))
            after_commit(s, calls.fn("committed"))
            inner = s.begin_nested()
            after_commit(s, calls.fn("savepoint-rolled-back"))
            inner.rollback()
            with s.begin_nested():
                after_commit(s, calls.fn("savepoint-released"))
        with s.begin():
            after_commit(s, calls.fn("rolled-back"))
            s.rollback()
    calls.wait("committed", "savepoint-released")
    assert threading.get_ident() not in calls.threads  # never on the committing thread


def test_no_transaction_means_now(engine: Engine) -> None:
    calls = Calls()
    with Session(engine) as s:
        after_commit(s, calls.fn("session"))
    with engine.connect() as c:
        after_commit(c, calls.fn("connection"))
    calls.wait("session", "connection")


def test_sqlalchemy_connection(engine: Engine) -> None:
    _table(engine)
    calls = Calls()
    with engine.begin() as c:
        c.execute(text("INSERT INTO biz VALUES (1)"))
        after_commit(c, calls.fn("committed"))
    with engine.connect() as c:
        c.execute(text("INSERT INTO biz VALUES (2)"))
        after_commit(c, calls.fn("rolled-back"))
        c.rollback()
    calls.wait("committed")


def test_psycopg_connection(pg_url: str) -> None:
    calls = Calls()
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE biz (n int)")
        after_commit(conn, calls.fn("first"))
        conn.commit()
        conn.execute("INSERT INTO biz VALUES (1)")
        after_commit(conn, calls.fn("rolled-back"))
        conn.rollback()
        with conn.transaction():
            after_commit(conn, calls.fn("block"))
        conn.autocommit = True
        after_commit(conn, calls.fn("autocommit"))
    calls.wait("first", "block", "autocommit")


def test_sqlite3_connection(tmp_path) -> None:
    calls = Calls()
    conn = sqlite3.connect(tmp_path / "biz.db")
    conn.execute("CREATE TABLE biz (n int)")
    conn.execute("INSERT INTO biz VALUES (1)")
    after_commit(conn, calls.fn("committed"))
    conn.commit()
    conn.execute("INSERT INTO biz VALUES (2)")
    after_commit(conn, calls.fn("rolled-back"))
    conn.rollback()
    after_commit(conn, calls.fn("no-transaction"))
    calls.wait("committed", "no-transaction")
    conn.close()


def test_a_failing_callback_does_not_stop_the_next(engine: Engine) -> None:
    calls = Calls()

    def boom() -> None:
        raise RuntimeError("callback failed")

    with Session(engine) as s, s.begin():
        s.execute(text("SELECT 1"))
        after_commit(s, boom)
        after_commit(s, calls.fn("after"))
    calls.wait("after")


def test_unsupported_targets(tmp_path) -> None:
    with pytest.raises(ConfigError):
        after_commit(object(), lambda: None)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE x (n int)")
    conn.execute("INSERT INTO x VALUES (1)")
    with pytest.raises(ConfigError, match="memory"):
        after_commit(conn, lambda: None)
    with create_engine("sqlite://").connect() as c:
        c.execute(text("CREATE TABLE x (n int)"))
        c.execute(text("INSERT INTO x VALUES (1)"))  # an open transaction on :memory:
        with pytest.raises(ConfigError, match="memory"):
            after_commit(c, lambda: None)
