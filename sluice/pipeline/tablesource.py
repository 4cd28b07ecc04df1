"""``TableSource``: the ready-made loader over SQL tables, one table per shard.

Each row carries its own state: PENDING → PROCESSING → DONE or FAILED, with attempts, a lease
owner and expiry, a fencing token and a ``version`` (pending counter). Loading claims rows in one
statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer). Before a chunk runs,
its rows are stamped with the chunk's fencing token; a completion only applies where the token
is still that one, so a node that lost its claim cannot mark rows done. The lost-update guard:
``mark_pending`` bumps ``version``; a row whose version changed while it was processed goes back
to PENDING instead of DONE, so the change is processed again.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, create_engine, inspect, text

from sluice.errors import ConfigError, PipelineError
from sluice.store.pgarray import array_param

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
STATE_COLUMNS = ("status", "attempts", "lease_owner", "lease_until", "lease_token", "version")
# state columns a loaded record leaves out: the same on every record of a chunk, or known to
# the chunk (its token is ``ctx.fencing_token``); they would only make chunks bigger
CLAIM_COLUMNS = ("status", "lease_owner", "lease_until", "lease_token")


@dataclass(frozen=True)
class _Table:
    returning: str  # the columns a loaded record carries, for RETURNING
    key_type: str  # PostgreSQL: the key column's type, for an array of keys


def _ident(value: str, what: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ConfigError(f"TableSource: {what} {value!r} is not a plain SQL identifier "
                          "(letters, digits, underscore; not starting with a digit)")
    return value


class TableSource:
    """Split, load and complete records kept in SQL tables.

    ``engine``: a SQLAlchemy Engine or URL, or a function ``shard -> Engine`` for tables spread
    over databases. ``table``: a name template such as ``"coupon_{shard}"``. ``shards``: the
    shard keys (a list, or a function of the context). ``columns``: rename the state columns,
    e.g. ``columns={"status": "state"}``; ``key`` is the primary key column. ``lease``: seconds
    a claimed row stays PROCESSING before another run may reclaim it. Give each table an
    index on ``(status, key)``: loads walk it in order (see docs/pipelines.md).
    """

    def __init__(self, engine: Engine | str | Callable[[Any], Engine], table: str, *,
                 shards: Iterable[Any] | Callable[[Any], Iterable[Any]], key: str = "id",
                 columns: dict[str, str] | None = None, lease: float = 600.0,
                 pending: str = "PENDING", processing: str = "PROCESSING", done: str = "DONE",
                 failed: str = "FAILED") -> None:
        if "{shard}" not in table:
            raise ConfigError(f"TableSource: table {table!r} must contain {{shard}}, "
                              "e.g. 'coupon_{shard}'")
        _ident(table.replace("{shard}", "x"), "table template")
        self.table = table
        self.key = _ident(key, "key column")
        unknown = set(columns or {}) - set(STATE_COLUMNS)
        if unknown:
            raise ConfigError(f"TableSource: unknown state column(s) {sorted(unknown)}; "
                              f"known: {', '.join(STATE_COLUMNS)}")
        self.col = {c: _ident((columns or {}).get(c, c), f"column for {c}") for c in STATE_COLUMNS}
        self.states = {"pending": pending, "processing": processing, "done": done,
                       "failed": failed}
        self.lease = lease
        self._shards = shards
        self._engine = engine
        self._engines: dict[str, Engine] = {}
        self._tables: dict[str, _Table] = {}  # checked tables
        self._lock = threading.Lock()

    # -- pipeline hooks -------------------------------------------------------------------

    def split(self, ctx: Any) -> list[Any]:
        shards = self._shards(ctx) if callable(self._shards) else self._shards
        return list(shards)

    def load(self, ctx: Any, shard: Any, limit: int) -> list[dict[str, Any]]:
        """Claim up to ``limit`` PENDING rows (or PROCESSING rows whose lease lapsed).

        Claimed rows are owned by the load task until a chunk takes them, so a retry of the
        same load task (its node died before dispatching them) claims them again instead of
        leaving them stuck in PROCESSING. Pending rows are taken in key order from where the
        shard's previous load stopped (``ctx.cursor``), then from the start again: rows put
        back to PENDING behind the cursor are found once the rows ahead are taken."""
        engine, table = self._prepare(shard)
        c, s = self.col, self.states
        pg = engine.dialect.name == "postgresql"
        lock = "FOR UPDATE SKIP LOCKED" if pg else ""
        now = _now_sql(engine)
        after = getattr(ctx, "cursor", None)
        # Locked picks, each an ordered walk of an index: rows to take back first (a lapsed
        # lease, or this load's own earlier attempt; few), then pending rows after the cursor,
        # then those before it. A walk from the start would pass every finished row at every
        # load whenever the planner reads the primary key instead of the (status, key) index
        # (as it does on statistics taken while every row was PENDING).
        pick = (f'SELECT "{self.key}" FROM "{table}" WHERE "{c["status"]}" = {{}} '
                f'ORDER BY "{c["status"]}", "{self.key}" LIMIT :limit {lock}')
        picks = [pick.format(f':processing AND ("{c["lease_until"]}" < {now} OR '
                             f'"{c["lease_owner"]}" = :owner)')]
        if after is None:
            picks.append(pick.format(":pending"))
        else:
            picks += [pick.format(f':pending AND "{self.key}" > :after'),
                      pick.format(f':pending AND "{self.key}" <= :after')]
        picked = " UNION ALL ".join(f'SELECT "{self.key}" FROM ({p}) AS p{n}'
                                    for n, p in enumerate(picks)) + " LIMIT :limit"
        # PostgreSQL: = ANY(ARRAY(...)) looks the picked keys up by primary key; IN (...) was
        # planned as a hash join over a scan of the whole table, at every load
        where = f"= ANY(ARRAY({picked}))" if pg else f"IN ({picked})"
        sql = (f'UPDATE "{table}" SET "{c["status"]}" = :processing, "{c["attempts"]}" = '
               f'"{c["attempts"]}" + 1, "{c["lease_owner"]}" = :owner, "{c["lease_until"]}" = '
               f'{now} + :lease, "{c["lease_token"]}" = :token WHERE "{self.key}" {where} '
               f'RETURNING {self._tables[table].returning}')
        with _one_statement(engine) as conn:
            result = conn.execute(text(sql), {
                "processing": s["processing"], "pending": s["pending"], "after": after,
                "owner": f"load:{getattr(ctx, 'task_id', 0) or ctx.node.id}",
                "now": time.time(), "lease": self.lease, "token": ctx.fencing_token,
                "limit": limit})
            keys, rows = list(result.keys()), result.all()
        records = sorted(_jsonable(keys, rows), key=lambda r: r[self.key])
        if records:
            # the next load goes on after the last key taken here (behind the cursor once
            # the rows ahead of it are all taken)
            ahead = [r[self.key] for r in records if after is None or r[self.key] > after]
            ctx.cursor = ahead[-1] if ahead else records[-1][self.key]
        return records

    def fence(self, shard: Any, records: list[dict[str, Any]], token: int,
              owner: str) -> set[Any]:
        """Stamp a chunk's rows with its fencing token before they run (also takes parked rows
        back from FAILED when they are retried). Returns the keys (in their JSON form) of the
        rows now held by ``token``: the others were finished meanwhile (DONE, or PENDING again
        after a change) by an earlier owner of the chunk, and must not run again."""
        if not records:
            return set()
        engine, table = self._prepare(shard)
        c, s = self.col, self.states
        keys = [r[self.key] for r in records]
        stamp = text(f'UPDATE "{table}" SET "{c["lease_token"]}" = :token, "{c["status"]}" = '
                     f':processing, "{c["lease_owner"]}" = :owner, "{c["lease_until"]}" = '
                     f'{_now_sql(engine)} + :lease WHERE "{self.key}" IN :keys AND '
                     f'"{c["lease_token"]}" < :token AND ("{c["status"]}" IN (:processing, '
                     f':failed)) IS TRUE'
                     ).bindparams(bindparam("keys", expanding=True))
        held = text(f'SELECT "{self.key}" FROM "{table}" WHERE "{self.key}" IN :keys AND '
                    f'"{c["lease_token"]}" = :token AND ("{c["status"]}" = :processing) IS TRUE'
                    ).bindparams(bindparam("keys", expanding=True))
        with engine.begin() as conn:
            conn.execute(stamp, {"token": token, "processing": s["processing"],
                                 "failed": s["failed"], "owner": owner, "now": time.time(),
                                 "lease": self.lease, "keys": keys})
            rows = conn.execute(held, {"keys": keys, "token": token,
                                       "processing": s["processing"]}).all()
        return {_json_value(row[0]) for row in rows}

    def key_of(self, record: dict[str, Any]) -> Any:
        """A loaded record's key, comparable with what :meth:`fence` returns."""
        return record[self.key]

    def complete(self, shard: Any, records: list[dict[str, Any]], token: int) -> int:
        """Mark executed rows DONE (or PENDING again if re-marked meanwhile); returns how many
        were rejected because their fencing token is no longer ``token``."""
        return self.complete_many([(shard, records, token)])[0]

    def complete_many(self, items: list[tuple[Any, list[dict[str, Any]], int]]) -> list[int]:
        """``complete`` for several chunks at once: one transaction per database."""
        by_engine: dict[int, list[int]] = {}
        for i, (shard, _, _) in enumerate(items):
            by_engine.setdefault(id(self._prepare(shard)[0]), []).append(i)
        applied = [0] * len(items)
        for positions in by_engine.values():
            engine = self._prepare(items[positions[0]][0])[0]
            updates = [(i, *group) for i in positions for group in self._by_version(items[i])]
            if not updates:
                continue
            if engine.dialect.name == "postgresql":
                changed = self._complete_pg(engine, updates)
            else:
                with engine.begin() as conn:
                    changed = [self._complete(conn, *u[1:]) for u in updates]
            for (i, *_), n in zip(updates, changed, strict=True):
                applied[i] += n
        return [len(records) - n for (_, records, _), n in zip(items, applied, strict=True)]

    def _by_version(self, item: tuple[Any, list[dict[str, Any]], int]
                    ) -> list[tuple[str, int, Any, list[Any]]]:
        """A chunk's completion as one update per distinct loaded version (usually one):
        (table, token, version, keys)."""
        shard, records, token = item
        by_version: dict[Any, list[Any]] = {}
        for r in records:
            by_version.setdefault(r.get(self.col["version"]), []).append(r[self.key])
        return [(self.table_for(shard), token, v, keys) for v, keys in by_version.items()]

    def _update_sql(self, table: str, version: Any, mark: str) -> str:
        """Rows still on the version they were loaded with become DONE, re-marked rows go
        back to PENDING; only while ``token`` still holds them. ``(status = x) IS TRUE`` is
        the same test in a form no index on status serves, so rows are found by key: with
        statistics from a moment ago (every row PENDING) PostgreSQL would otherwise walk all
        the table's PROCESSING rows to complete a few. Ends where the keys go."""
        c = self.col
        same = f'"{c["version"]}" IS NULL' if version is None else f'"{c["version"]}" = {mark}'
        return (f'UPDATE "{table}" SET "{c["status"]}" = CASE WHEN {same} THEN {mark} ELSE '
                f'{mark} END, "{c["lease_owner"]}" = NULL, "{c["lease_until"]}" = NULL WHERE '
                f'"{c["lease_token"]}" = {mark} AND ("{c["status"]}" = {mark}) IS TRUE AND '
                f'"{self.key}" ')

    def _update_params(self, token: int, version: Any) -> list[Any]:
        s = self.states
        head = [] if version is None else [version]
        return [*head, s["done"], s["pending"], token, s["processing"]]

    def _complete(self, conn: Any, table: str, token: int, version: Any, keys: list[Any]) -> int:
        sql = self._update_sql(table, version, "?") + f'IN ({", ".join("?" * len(keys))})'
        return int(conn.exec_driver_sql(sql, (*self._update_params(token, version),
                                              *keys)).rowcount)

    def _complete_pg(self, engine: Engine,
                     updates: list[tuple[int, str, int, Any, list[Any]]]) -> list[int]:
        """PostgreSQL: one statement per table and version whose text does not depend on the
        keys (an array), so the driver prepares it once; with psycopg 3 all of them go in one
        round trip (pipeline mode)."""
        statements = [(self._update_sql(table, version, "%s") +
                       f"= ANY(CAST(%s AS {self._tables[table].key_type}[]))",
                       (*self._update_params(token, version), array_param(keys)))
                      for _, table, token, version, keys in updates]
        with _one_statement(engine) as conn:
            if engine.dialect.driver != "psycopg":
                return [int(conn.exec_driver_sql(sql, params).rowcount)
                        for sql, params in statements]
            raw: Any = conn.connection.driver_connection
            if len(statements) == 1:
                return [int(raw.execute(*statements[0]).rowcount)]
            with raw.pipeline():
                cursors = [raw.execute(sql, params) for sql, params in statements]
            return [int(cur.rowcount) for cur in cursors]

    def park(self, shard: Any, records: list[dict[str, Any]], token: int) -> None:
        """Mark rows FAILED: out of attempts (they can be retried with ``sluice dead retry``)."""
        engine, table = self._prepare(shard)
        c, s = self.col, self.states
        sql = (f'UPDATE "{table}" SET "{c["status"]}" = :failed, "{c["lease_owner"]}" = NULL, '
               f'"{c["lease_until"]}" = NULL WHERE "{self.key}" = :key AND '
               f'"{c["lease_token"]}" = :token')
        with engine.begin() as conn:
            conn.execute(text(sql), [{"failed": s["failed"], "key": r[self.key], "token": token}
                                     for r in records])

    # -- helpers --------------------------------------------------------------------------

    def engine_for(self, shard: Any) -> Engine:
        name = str(shard)
        with self._lock:
            if name not in self._engines:
                eng = self._engine
                if isinstance(eng, str):
                    eng = create_engine(eng)
                    self._engine = eng
                self._engines[name] = eng(shard) if callable(eng) and not isinstance(
                    eng, Engine) else eng  # type: ignore[assignment]
            return self._engines[name]

    def table_for(self, shard: Any) -> str:
        return _ident(self.table.replace("{shard}", str(shard)), "table name")

    def _prepare(self, shard: Any) -> tuple[Engine, str]:
        engine, table = self.engine_for(shard), self.table_for(shard)
        if table not in self._tables:
            self._tables[table] = self._check(engine, table)
        return engine, table

    def _check(self, engine: Engine, table: str) -> _Table:
        """Check that the table has the columns needed; what loads and completions need of
        it."""
        insp = inspect(engine)
        if not insp.has_table(table):
            raise PipelineError(f"TableSource: table {table!r} does not exist; create it or fix "
                                f"the template {self.table!r} / the shard keys")
        names = [col["name"] for col in insp.get_columns(table)]
        have = set(names)
        need = [self.key, *self.col.values()]
        missing = [col for col in need if col not in have]
        if missing:
            raise PipelineError(f"TableSource: table {table!r} lacks column(s) "
                                f"{', '.join(missing)}; add them (see TableSource.state_ddl) or "
                                "map yours with columns={...}")
        claim = {self.col[c] for c in CLAIM_COLUMNS} - {self.key}
        returning = ", ".join('"' + name.replace('"', '""') + '"' for name in names
                              if name not in claim)
        key_type = ""
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                key_type = conn.execute(text(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                    "attrelid = CAST(:table AS regclass) AND attname = :key"),
                    {"table": f'"{table}"', "key": self.key}).scalar_one()
        return _Table(returning, key_type)

    def state_ddl(self) -> str:
        """Column definitions to add to a table so TableSource can keep state in it."""
        c, s = self.col, self.states
        return (f'"{c["status"]}" VARCHAR(16) NOT NULL DEFAULT \'{s["pending"]}\', '
                f'"{c["attempts"]}" INTEGER NOT NULL DEFAULT 0, '
                f'"{c["lease_owner"]}" VARCHAR(200), "{c["lease_until"]}" DOUBLE PRECISION, '
                f'"{c["lease_token"]}" BIGINT NOT NULL DEFAULT 0, '
                f'"{c["version"]}" INTEGER NOT NULL DEFAULT 0')


def mark_pending(conn: Any, table: str, key: Any, *, key_column: str = "id",
                 status_column: str = "status", version_column: str = "version",
                 pending: str = "PENDING", processing: str = "PROCESSING") -> int:
    """Mark a row to be processed (again): bump its version and make it PENDING unless it is
    being processed right now, in which case its completion will see the new version and put
    it back to PENDING. ``conn`` is a SQLAlchemy Connection or Session; runs in its
    transaction. Returns the number of rows changed."""
    t, k = _ident(table, "table"), _ident(key_column, "key column")
    st, ver = _ident(status_column, "status column"), _ident(version_column, "version column")
    sql = (f'UPDATE "{t}" SET "{ver}" = "{ver}" + 1, "{st}" = CASE WHEN "{st}" = :processing '
           f'THEN "{st}" ELSE :pending END WHERE "{k}" = :key')
    result = conn.execute(text(sql), {"processing": processing, "pending": pending, "key": key})
    return int(result.rowcount)


def _now_sql(engine: Engine) -> str:
    """The database's clock on PostgreSQL (leases of rows claimed from several machines);
    SQLite lives on one machine, whose clock is bound as ``:now``."""
    return "extract(epoch from clock_timestamp())" if engine.dialect.name == "postgresql" \
        else ":now"


@contextmanager
def _one_statement(engine: Engine) -> Iterator[Connection]:
    """A connection for a single statement, which is atomic by itself: on PostgreSQL in
    autocommit (one round trip instead of BEGIN, statement, COMMIT)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
        else:
            with conn.begin():
                yield conn


_JSON_TYPES = {type(None), str, int, float, bool}


def _jsonable(keys: list[str], rows: Any) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts; only columns holding other types (dates, decimals, bytes)
    are converted, value by value."""
    odd = [n for n, column in enumerate(zip(*rows, strict=True))
           if not set(map(type, column)) <= _JSON_TYPES]
    records = [dict(zip(keys, row, strict=True)) for row in rows]
    for key in (keys[n] for n in odd):
        for record in records:
            record[key] = _json_value(record[key])
    return records


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    return str(v)  # dates, decimals, UUIDs: their text form
