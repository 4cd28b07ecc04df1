"""The two database drivers behind the store: connections, transactions, clock and wake-ups.

A driver only runs named statements (``sql/queries.sql``) inside transactions; every decision
about what to run lives in ``sluice.store.store``. SQLite: one connection per thread, WAL,
``BEGIN IMMEDIATE`` for writes so a busy database waits instead of failing on upgrade.
PostgreSQL: a small connection pool that re-checks connections, so a restarted server is
reconnected to on the next transaction, and a LISTEN thread that turns NOTIFY into wake-ups.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from sluice.errors import StoreError
from sluice.store.pgarray import with_array_literals
from sluice.store.queries import render

IDLE_CHECK_AFTER = 2.0  # seconds; see _check_if_idle

log = logging.getLogger("sluice.store")

Row = dict[str, Any]


class Tx:
    """A transaction: run named statements and read rows as dicts."""

    def __init__(self, driver: Driver, cur: Any) -> None:
        self._driver = driver
        self._cur = cur
        self._notified: set[str] = set()

    def _exec(self, name: str, params: dict[str, Any]) -> Any:
        sql, params = self._driver.prepare(self._cur, name, params)
        self._cur.execute(sql, params)
        return self._cur

    def all(self, name: str, /, **params: Any) -> list[Row]:
        return [dict(r) for r in self._exec(name, params).fetchall()]

    def one(self, name: str, /, **params: Any) -> Row | None:
        row = self._exec(name, params).fetchone()
        return dict(row) if row is not None else None

    def run(self, name: str, /, **params: Any) -> int:
        return int(self._exec(name, params).rowcount)

    def notify(self, channel: str) -> None:
        """Wake the listening nodes at commit; once per channel per transaction (the server
        would fold repeats anyway, but each call is a round trip)."""
        if channel not in self._notified:
            self._notified.add(channel)
            self._driver.pending_notify(self, channel)


class Driver:
    dialect: str
    tokens: tuple[tuple[str, str], ...]
    notifies = False  # whether a change wakes the other processes (else they poll)

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        raise NotImplementedError

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        """A transaction that only reads (dashboards, metrics): on SQLite it takes no write
        lock, so it never queues behind the workers' writes."""
        return self.transaction()

    def single(self) -> contextlib.AbstractContextManager[Tx]:
        """For one statement, which is atomic by itself: on PostgreSQL it runs in autocommit
        (one round trip instead of BEGIN, statement, COMMIT)."""
        return self.transaction()

    def prepare(self, cur: Any, name: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return render(name, self.dialect, self.tokens), params

    def pending_notify(self, tx: Tx, channel: str) -> None:
        tx.one("notify", channel=channel)

    def listen(self, callback: Callable[[str], None], stop: threading.Event) -> None:
        """Call ``callback(channel)`` on every wake-up until ``stop`` is set (no-op by default)."""

    def migrate(self, scripts: list[tuple[int, str]]) -> int:
        """Apply the scripts newer than the stored schema version, atomically; return it."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class SQLiteDriver(Driver):
    dialect = "sqlite"
    tokens = (("now", ":now_"), ("next_token", ":next_token_"), ("skip_locked", ""))

    def __init__(self, path: str, busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        # One writer per process at a time: SQLite's busy handler polls with growing sleeps,
        # so dozens of threads waiting on the file lock starve each other (and the heartbeat).
        # Queued on a lock, they go in turn and only processes contend for the file.
        self._write_lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=self.busy_timeout)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite {self.path}: cannot open: {exc}") from exc
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._write_lock:
            yield from self._transaction()

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        yield from self._transaction("BEGIN")

    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[Tx]:
        conn = self._conn()
        cur = conn.cursor()
        try:
            # IMMEDIATE: take the write lock up front so the busy timeout applies (a deferred
            # transaction that read first fails at once when it tries to write).
            cur.execute(begin)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite {self.path}: cannot start a transaction: {exc}") from exc
        try:
            yield Tx(self, cur)
        except sqlite3.OperationalError as exc:
            conn.rollback()
            raise StoreError(f"SQLite {self.path}: {exc}") from exc
        except BaseException:
            conn.rollback()
            raise
        else:
            try:
                conn.commit()
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite {self.path}: commit failed: {exc}") from exc
        finally:
            cur.close()

    def prepare(self, cur: Any, name: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        sql = render(name, self.dialect, self.tokens)
        if ":now_" in sql:
            params = {**params, "now_": time.time()}
        if ":next_token_" in sql:
            cur.execute("UPDATE sluice_counters SET value = value + 1 WHERE name = 'token' "
                        "RETURNING value")
            params = {**params, "next_token_": cur.fetchone()[0]}
        return sql, params

    def pending_notify(self, tx: Tx, channel: str) -> None:
        pass  # processes sharing one SQLite file poll; there is no wake-up channel

    def migrate(self, scripts: list[tuple[int, str]]) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # serialises concurrent first use by several workers
        try:
            version = _sqlite_version(conn)
            for number, sql in scripts:
                if number > version:
                    for statement in _statements(sql):
                        conn.execute(statement)
                    version = number
            conn.execute("INSERT INTO sluice_meta VALUES ('schema_version', ?) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value", (str(version),))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return version

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before lending a connection: a round trip only for one idle long
    enough that the server may have restarted meanwhile. A connection broken in the last
    seconds fails its transaction once (a StoreError its caller retries) and is discarded."""
    if time.monotonic() - getattr(conn, "_sluice_used", 0.0) > IDLE_CHECK_AFTER:
        ConnectionPool.check_connection(conn)


class PostgresDriver(Driver):
    dialect = "postgresql"
    notifies = True
    tokens = (
        ("now", "extract(epoch from clock_timestamp())::float8"),
        ("next_token", "nextval('sluice_token_seq')"),
        ("skip_locked", "FOR UPDATE SKIP LOCKED"),
    )

    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, timeout=30.0,
            kwargs={"row_factory": dict_row, "autocommit": False,
                    "application_name": "sluice"},  # who is who in pg_stat_activity
            check=_check_if_idle, name="sluice",
        )

    def prepare(self, cur: Any, name: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return render(name, self.dialect, self.tokens), with_array_literals(params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn:
                with conn.transaction(), conn.cursor() as cur:
                    yield Tx(self, cur)
                conn._sluice_used = time.monotonic()  # type: ignore[attr-defined]
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreError(f"PostgreSQL unavailable: {exc}".strip()) from exc

    @contextlib.contextmanager
    def single(self) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn:
                conn.autocommit = True
                try:
                    with conn.cursor() as cur:
                        yield Tx(self, cur)
                finally:
                    conn.autocommit = False
                conn._sluice_used = time.monotonic()  # type: ignore[attr-defined]
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreError(f"PostgreSQL unavailable: {exc}".strip()) from exc

    def migrate(self, scripts: list[tuple[int, str]]) -> int:
        try:
            return self._migrate(scripts)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreError(f"PostgreSQL unavailable: {exc}".strip()) from exc

    def _migrate(self, scripts: list[tuple[int, str]]) -> int:
        with self._pool.connection() as conn, conn.transaction():
            # Serialises concurrent first use by several workers; released at commit.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('sluice_migrate'))")
            row: Any = conn.execute("SELECT to_regclass('sluice_meta') AS t").fetchone()
            version = 0
            if row and row["t"]:
                got = conn.execute("SELECT value FROM sluice_meta WHERE key = 'schema_version'")
                found: Any = got.fetchone()
                version = int(found["value"]) if found else 0
            for number, sql in scripts:
                if number > version:
                    for statement in _statements(sql):
                        conn.execute(statement.encode())
                    version = number
            conn.execute("INSERT INTO sluice_meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value", (str(version),))
        return version

    def listen(self, callback: Callable[[str], None], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True,
                                     application_name="sluice-listen") as conn:
                    conn.execute("LISTEN sluice")
                    callback("*")  # anything may have happened while we were not listening
                    while not stop.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=64):
                            callback(note.payload)
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                stop.wait(1.0)

    def close(self) -> None:
        self._pool.close()


def _statements(script: str) -> list[str]:
    """Split a migration script on semicolons at line ends (the scripts hold no procedures)."""
    body = "\n".join(ln for ln in script.splitlines() if not ln.strip().startswith("--"))
    return [st.strip() for st in body.split(";\n") if st.strip().rstrip(";")]


def _sqlite_version(conn: sqlite3.Connection) -> int:
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sluice_meta'").fetchone():
        return 0
    row = conn.execute("SELECT value FROM sluice_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0
