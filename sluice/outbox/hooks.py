"""``after_commit(conn_or_session, fn)``: run ``fn`` once the caller's transaction commits.

``fn`` never runs if the transaction rolls back, and runs on sluice's after-commit thread (one
per process, callbacks in commit order), never in the committing thread: a slow or failing
callback cannot delay or fail the caller. Exceptions from ``fn`` are logged and dropped.

How the commit is observed, per kind of transaction:

* SQLAlchemy ``Session``: the session's ``after_commit`` / ``after_soft_rollback`` events.
  Callbacks registered inside a savepoint that rolls back are dropped, as Django does.
* psycopg 3 (raw, or under a SQLAlchemy ``Connection``): PostgreSQL has no commit hook, but a
  ``NOTIFY`` is delivered exactly when, and only if, its transaction (and savepoint) commits. The
  connection listens on a channel named after its own backend pid and is notified of its own
  commits, with a token naming the callback.
* sqlite3 (raw, or under a SQLAlchemy ``Connection``): a marker row in ``sluice_after_commit``
  written inside the transaction; a watcher thread polls for it from its own connection, so
  seeing the row proves the commit. Needs a file database.

A transaction that never commits leaves its token registered until it expires (one hour).
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from sluice.errors import ConfigError
from sluice.outbox.targets import classify

log = logging.getLogger("sluice.outbox")

Callback = Callable[[], object]
EXPIRY = 3600.0  # seconds a registration waits for a commit that may never come
_SESSION_KEY = "sluice.after_commit"
_CHANNEL = "sluice_ac_"


class _Runner:
    """The after-commit thread: runs callbacks in the order their commits were seen."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Callback] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, fn: Callback) -> None:
        with self._lock:
            # A forked child inherits the object but not the thread.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._q = queue.SimpleQueue()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="sluice-after-commit")
                self._thread.daemon = True
                self._thread.start()
        self._q.put(fn)

    def _run(self) -> None:
        q = self._q
        while True:
            fn = q.get()
            try:
                fn()
            except Exception:
                log.exception("after-commit callback %r failed", fn)


_runner = _Runner()


def after_commit(conn_or_session: Any, fn: Callback) -> None:
    """Run ``fn()`` after the current transaction of ``conn_or_session`` commits.

    With no transaction open (autocommit), ``fn`` is scheduled at once. Raises ``ConfigError``
    for an unsupported connection type or an in-memory SQLite database.
    """
    target = classify(conn_or_session)
    if target.kind == "session":
        _register_session(target.obj, fn)
        return
    if target.kind == "connection" and not target.obj.in_transaction():
        _runner.submit(fn)
        return
    dbapi = target.dbapi()
    if target.dialect == "postgresql":
        _register_psycopg(dbapi, fn)
    else:
        _register_sqlite(dbapi, fn)


# -- SQLAlchemy Session --------------------------------------------------------------------


def _register_session(session: Session, fn: Callback) -> None:
    if not session.in_transaction():
        _runner.submit(fn)
        return
    pending = session.info.get(_SESSION_KEY)
    if pending is None:
        pending = session.info[_SESSION_KEY] = []
        event.listen(session, "after_commit", _session_committed)
        event.listen(session, "after_soft_rollback", _session_rolled_back)
    tx = session.get_nested_transaction() or session.get_transaction()
    pending.append((tx, fn))


def _session_committed(session: Session) -> None:
    pending = session.info.get(_SESSION_KEY) or []
    session.info[_SESSION_KEY] = []
    for _tx, fn in pending:
        _runner.submit(fn)


def _session_rolled_back(session: Session, previous: SessionTransaction) -> None:
    def inside(tx: SessionTransaction | None) -> bool:
        while tx is not None:
            if tx is previous:
                return True
            tx = tx.parent
        return False

    pending = session.info.get(_SESSION_KEY) or []
    session.info[_SESSION_KEY] = [(tx, fn) for tx, fn in pending if not inside(tx)]


# -- psycopg: self-NOTIFY ------------------------------------------------------------------


class _Tokens:
    """Callbacks waiting for their commit, by token, with expiry of abandoned ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, Callback]] = {}
        self._swept = time.monotonic()

    def add(self, fn: Callback) -> str:
        token = uuid.uuid4().hex
        now = time.monotonic()
        with self._lock:
            self._items[token] = (now, fn)
            if now - self._swept > 60.0:
                self._swept = now
                for t in [t for t, (at, _) in self._items.items() if now - at > EXPIRY]:
                    del self._items[t]
        return token

    def pop(self, token: str) -> Callback | None:
        with self._lock:
            item = self._items.pop(token, None)
        return item[1] if item else None

    def tokens(self) -> list[str]:
        with self._lock:
            return list(self._items)


_pg_tokens = _Tokens()
_pg_hooked: weakref.WeakSet[Any] = weakref.WeakSet()


def _on_notify(notify: Any) -> None:
    # Runs inside the committing call of psycopg: hand over and return at once.
    if notify.channel.startswith(_CHANNEL):
        fn = _pg_tokens.pop(notify.payload)
        if fn is not None:
            _runner.submit(fn)


def _register_psycopg(conn: Any, fn: Callback) -> None:
    from psycopg.pq import TransactionStatus

    status = conn.info.transaction_status
    if status == TransactionStatus.IDLE:
        _runner.submit(fn)
        return
    if status != TransactionStatus.INTRANS:
        return  # the transaction failed and can only roll back: fn must never run
    if conn not in _pg_hooked:
        conn.add_notify_handler(_on_notify)
        _pg_hooked.add(conn)
    token = _pg_tokens.add(fn)
    channel = f"{_CHANNEL}{conn.info.backend_pid}"
    # LISTEN is itself transactional, so it is repeated in every transaction: one that rolled
    # back would otherwise leave the connection deaf. Both go in one round trip (simple query
    # protocol, no parameters; the token is hex).
    conn.execute(f"LISTEN {channel}; NOTIFY {channel}, '{token}'".encode())


# -- sqlite3: marker rows polled by a watcher ----------------------------------------------

_MARKERS = "sluice_after_commit"


class _SqliteWatcher:
    """Polls one database file for committed markers and runs their callbacks."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tokens = _Tokens()
        self._wake = threading.Event()
        thread = threading.Thread(target=self._run, name="sluice-after-commit-sqlite")
        thread.daemon = True
        thread.start()

    def add(self, fn: Callback) -> str:
        token = self.tokens.add(fn)
        self._wake.set()
        return token

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        delay = 0.002
        while True:
            waiting = self.tokens.tokens()
            if not waiting:
                self._wake.wait(5.0)
                self._wake.clear()
                delay = 0.002
                continue
            try:
                found = self._poll(conn, waiting)
            except sqlite3.Error:
                log.exception("after-commit watcher on %s failed; retrying", self.path)
                found = []
            for token in found:
                fn = self.tokens.pop(token)
                if fn is not None:
                    _runner.submit(fn)
            delay = 0.002 if found else min(delay * 2, 0.1)
            time.sleep(delay)  # polling interval of a watcher, not a test wait

    def _poll(self, conn: sqlite3.Connection, waiting: list[str]) -> list[str]:
        marks = ",".join("?" * len(waiting[:500]))
        sql = f"SELECT token FROM {_MARKERS} WHERE token IN ({marks})"
        try:
            found = [r[0] for r in conn.execute(sql, waiting[:500])]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # the first marker's transaction has not committed yet
            raise
        if found:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"DELETE FROM {_MARKERS} WHERE token IN ({marks})", waiting[:500])
            conn.execute("COMMIT")
        return found


_watchers: dict[str, _SqliteWatcher] = {}
_watchers_lock = threading.Lock()


def _register_sqlite(conn: sqlite3.Connection, fn: Callback) -> None:
    if not conn.in_transaction:
        _runner.submit(fn)
        return
    path = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not path:
        raise ConfigError("after_commit on SQLite needs a file database, not :memory:")
    with _watchers_lock:
        watcher = _watchers.get(path)
        if watcher is None:
            watcher = _watchers[path] = _SqliteWatcher(path)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_MARKERS} (token TEXT PRIMARY KEY)")
    conn.execute(f"INSERT INTO {_MARKERS} (token) VALUES (?)", (watcher.add(fn),))
