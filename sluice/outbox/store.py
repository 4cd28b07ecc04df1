"""The outbox's storage port: runs the statements of ``sql.py`` against the business database.

PostgreSQL uses the caller's engine (its pool and connect options). SQLite gets a private engine
on the same file whose transactions start with ``BEGIN IMMEDIATE`` and wait on a busy timeout:
SQLite has a single writer, and a deferred transaction that reads before writing fails at once
with ``SQLITE_BUSY`` instead of waiting.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text

from sluice.errors import ConfigError, StoreError
from sluice.outbox import schema, sql
from sluice.outbox.message import OutboxMessage

SQLITE_BUSY_TIMEOUT = 30.0
KEYS_DIVISOR = 10  # an ordered claim takes at most batch/10 keys, so relays spread over keys


def _sqlite_engine(engine: Engine) -> Engine:
    own = create_engine(engine.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})

    @event.listens_for(own, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves

    @event.listens_for(own, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return own


class OutboxStore:
    def __init__(self, engine: Engine, table: str) -> None:
        self.table = schema.check_table_name(table)
        self.dialect = engine.dialect.name
        if self.dialect == "postgresql":
            if engine.dialect.driver != "psycopg":
                raise ConfigError(
                    f"outbox engine uses driver {engine.dialect.driver!r}; use psycopg 3 "
                    "(a 'postgresql+psycopg://' URL)"
                )
            self.q = sql.postgres(self.table)
            self.engine = engine
        elif self.dialect == "sqlite":
            import sqlite3

            if sqlite3.sqlite_version_info < (3, 38):
                raise ConfigError(f"the outbox needs SQLite ≥ 3.38, found {sqlite3.sqlite_version}")
            if engine.url.database in (None, "", ":memory:"):
                raise ConfigError("the outbox needs a file SQLite database, not :memory:")
            self.q = sql.sqlite(self.table)
            self.engine = _sqlite_engine(engine)
        else:
            raise ConfigError(f"the outbox supports PostgreSQL and SQLite, not {self.dialect!r}")
        self._ready = False
        self._ready_lock = threading.Lock()

    # -- schema ---------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create or upgrade the table once per process; safe when many processes race."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with self.tx() as conn:
                if self.dialect == "postgresql":
                    # Concurrent CREATE TABLE IF NOT EXISTS can still collide on the catalog.
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": self.table}
                    )
                create, *indexes = schema.create_statements(self.dialect, self.table)
                conn.exec_driver_sql(create)
                schema_name, _, name = self.table.rpartition(".")
                cols = inspect(conn).get_columns(name, schema=schema_name or None)
                existing = {c["name"] for c in cols}
                # Columns before indexes: an older table's indexes may use the new columns.
                for stmt in schema.add_column_statements(self.dialect, self.table, existing):
                    conn.exec_driver_sql(stmt)
                for stmt in indexes:
                    conn.exec_driver_sql(stmt)
            self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready

    def create_statements(self) -> list[str]:
        """The idempotent CREATE statements, for running inside a caller's transaction."""
        return schema.create_statements(self.dialect, self.table)

    @contextmanager
    def tx(self, *, fast_commit: bool = False) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                if fast_commit and self.dialect == "postgresql":
                    # Losing a status update in a crash only causes a duplicate send, which
                    # consumers absorb; not waiting for the WAL flush doubles relay throughput.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                yield conn
        except ConfigError:
            raise
        except Exception as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"outbox table {self.table}: {exc}") from exc

    # -- claims ---------------------------------------------------------------------------

    def claim_unordered(self, owner: str, limit: int, lease: float) -> list[OutboxMessage]:
        params = {"owner": owner, "limit": limit, "lease": lease}
        with self.tx() as conn:
            rows = conn.execute(text(self.q.claim_unordered), params).all()
        return sorted((self._message(r) for r in rows), key=lambda m: m.id)

    def claim_ordered(self, owner: str, limit: int, lease: float) -> list[OutboxMessage]:
        keys = max(1, limit // KEYS_DIVISOR)
        params: dict[str, Any] = {"owner": owner, "limit": limit, "lease": lease, "keys": keys}
        with self.tx() as conn:
            if self.dialect == "postgresql":
                lock = {"seed": random.getrandbits(62), "ns": self.table + "\x1f", "keys": keys}
                locked = conn.execute(text(self.q.lock_ready_keys), lock).scalars().all()
                if not locked:
                    return []
                params["keys"] = list(locked)
            rows = conn.execute(text(self.q.claim_ordered), params).all()
        return sorted((self._message(r) for r in rows), key=lambda m: m.id)

    def fetch(self, ids: Sequence[int], owners: Sequence[str]) -> list[OutboxMessage]:
        """Pending rows among (id, owner) pairs: the after-commit sender's existence check."""
        with self.tx() as conn:
            rows = conn.execute(text(self.q.fetch), self._pairs(ids, owners)).all()
        return sorted((self._message(r) for r in rows), key=lambda m: m.id)

    # -- outcomes -------------------------------------------------------------------------

    def mark_sent(self, ids: Sequence[int], owners: Sequence[str], *, bump: int) -> None:
        if ids:
            with self.tx(fast_commit=True) as conn:
                conn.execute(text(self.q.mark_sent), {**self._pairs(ids, owners), "bump": bump})

    def mark_failed(
        self,
        ids: Sequence[int],
        owners: Sequence[str],
        delays: Sequence[float],
        errors: Sequence[str],
        *,
        bump: int,
        max_attempts: int,
    ) -> list[dict[str, Any]]:
        """Record failed attempts; returns the rows that were parked by this call."""
        if not ids:
            return []
        params = {**self._pairs(ids, owners, delays, errors), "bump": bump}
        params["max_attempts"] = max_attempts
        with self.tx(fast_commit=True) as conn:
            rows = conn.execute(text(self.q.mark_failed), params).mappings().all()
        return [dict(r) for r in rows if r["status"] == "parked"]

    def release(self, ids: Sequence[int], owners: Sequence[str], *, unbump: int) -> None:
        if ids:
            with self.tx(fast_commit=True) as conn:
                conn.execute(text(self.q.release), {**self._pairs(ids, owners), "unbump": unbump})

    def delete_sent(self, retention: float, limit: int) -> int:
        with self.tx(fast_commit=True) as conn:
            res = conn.execute(text(self.q.delete_sent), {"retention": retention, "limit": limit})
        return int(res.rowcount or 0)

    # -- operations -----------------------------------------------------------------------

    def status(self, blocked_limit: int = 100) -> dict[str, Any]:
        with self.tx() as conn:
            groups = conn.execute(text(self.q.status)).all()
            blocked = conn.execute(text(self.q.blocked_keys), {"limit": blocked_limit}).all()
        topics: dict[str, dict[str, int]] = {}
        out: dict[str, Any] = {"table": self.table, "pending": 0, "in_flight": 0}
        out.update(backing_off=0, parked=0, oldest_pending_age_seconds=None)
        for topic, status, count, age, in_flight, backing_off in groups:
            topics.setdefault(topic, {"pending": 0, "parked": 0})[status] = int(count)
            out[status] += int(count)
            if status == "pending":
                out["in_flight"] += int(in_flight or 0)
                out["backing_off"] += int(backing_off or 0)
                old = out["oldest_pending_age_seconds"]
                out["oldest_pending_age_seconds"] = max(float(age), old or 0.0)
        out["topics"] = dict(sorted(topics.items()))
        out["blocked_keys"] = [
            {"key": k, "id": i, "topic": tp, "attempts": a, "last_error": e}
            for k, i, tp, a, e in blocked
        ]
        return out

    def retry(self, ids: Sequence[int] | None) -> int:
        with self.tx() as conn:
            if ids is None:
                res = conn.execute(text(self.q.retry_all))
            else:
                param = list(ids) if self.dialect == "postgresql" else json.dumps(list(ids))
                res = conn.execute(text(self.q.retry_ids), {"ids": param})
        return int(res.rowcount or 0)

    # -- helpers --------------------------------------------------------------------------

    def _pairs(
        self,
        ids: Sequence[int],
        owners: Sequence[str],
        delays: Sequence[float] = (),
        errors: Sequence[str] = (),
    ) -> dict[str, Any]:
        if self.dialect == "postgresql":
            # unnest() pads the shorter arrays with NULLs, so delays/errors may be empty.
            return {"ids": list(ids), "owners": list(owners), "delays": list(delays),
                    "errors": list(errors)}  # fmt: skip
        rows = [
            [i, o, delays[n] if delays else None, errors[n] if errors else None]
            for n, (i, o) in enumerate(zip(ids, owners, strict=True))
        ]
        return {"rows": json.dumps(rows)}

    def _message(self, r: Sequence[Any]) -> OutboxMessage:
        id_, topic, key, type_, payload, headers, ordered, attempts, created = r
        if isinstance(created, int | float):
            created = datetime.fromtimestamp(created, UTC)
        return OutboxMessage(
            id=int(id_),
            topic=topic,
            key=key,
            type=type_,
            payload=payload.encode() if isinstance(payload, str) else bytes(payload),
            headers=json.loads(headers) if isinstance(headers, str) else dict(headers or {}),
            ordered=bool(ordered),
            attempts=int(attempts),
            created_at=created,
        )
