"""The caller's transaction, whatever shape it comes in.

``put`` and ``after_commit`` accept a SQLAlchemy ``Session``, a SQLAlchemy ``Connection``, or a
raw DB-API connection (psycopg 3, sqlite3). This module tells them apart and runs a statement
inside that transaction, never committing or rolling back anything itself.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from sluice.errors import ConfigError

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _psycopg_connection_type() -> type | None:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a core dependency
        return None
    return psycopg.Connection


@dataclass(frozen=True)
class Target:
    """``kind`` is ``session``, ``connection``, ``psycopg`` or ``sqlite3``."""

    kind: str
    dialect: str  # "postgresql" or "sqlite"
    obj: Any

    def execute(self, sql: str, params: dict[str, Any]) -> Any:
        """Run ``sql`` (named ``:param`` style) and return the first row, if any."""
        if self.kind in ("session", "connection"):
            result = self.obj.execute(text(sql), params)
            return result.first() if result.returns_rows else None
        if self.kind == "psycopg":
            cur = self.obj.execute(_NAMED.sub(r"%(\1)s", sql), params)
            return cur.fetchone() if cur.description else None
        cursor = self.obj.execute(sql, params)
        return cursor.fetchone() if cursor.description else None

    def dbapi(self) -> Any:
        """The driver connection underneath (psycopg or sqlite3)."""
        if self.kind == "session":
            return self.obj.connection().connection.dbapi_connection
        if self.kind == "connection":
            return self.obj.connection.dbapi_connection
        return self.obj


def classify(obj: Any) -> Target:
    if isinstance(obj, Session):
        return Target("session", obj.get_bind().dialect.name, obj)
    if isinstance(obj, Connection):
        return Target("connection", obj.dialect.name, obj)
    if isinstance(obj, sqlite3.Connection):
        return Target("sqlite3", "sqlite", obj)
    pg = _psycopg_connection_type()
    if pg is not None and isinstance(obj, pg):
        return Target("psycopg", "postgresql", obj)
    raise ConfigError(
        f"cannot use {type(obj).__module__}.{type(obj).__qualname__} as a transaction: pass a "
        "SQLAlchemy Session or Connection, a psycopg 3 connection or a sqlite3 connection"
    )
