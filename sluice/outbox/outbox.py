"""``Outbox``: the public face of the transactional outbox."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, create_engine

from sluice.alerts import Alert
from sluice.errors import ConfigError, PayloadError
from sluice.outbox.fastpath import AfterCommitSender
from sluice.outbox.hooks import after_commit
from sluice.outbox.message import RelayStats
from sluice.outbox.publisher import Publisher
from sluice.outbox.relay import Policy, Relay
from sluice.outbox.store import OutboxStore
from sluice.outbox.targets import classify

log = logging.getLogger("sluice.outbox")


class Outbox:
    """A message table in the business database, plus the machinery that empties it.

    ``engine_or_url``: a SQLAlchemy ``Engine`` or URL of the *business* database (PostgreSQL via
    psycopg 3, or a SQLite file); the transactions passed to ``put`` must be on that database.
    ``publisher``: a ``sluice.publishers`` instance or anything with ``publish``/``close``.
    ``table`` (default ``"sluice_outbox"``): created or upgraded on first use.
    ``max_attempts`` (10): a message that failed this often is parked and an alert fires.
    ``backoff`` ((1.0, 300.0)): base and cap in seconds of the exponential retry delay.
    ``retention`` (7 days): sent messages are deleted after this long.
    ``lease`` (30.0 s): how long a relay, or the after-commit sender, owns a message before
    another node may send it; keep it well above the publisher's time-out.
    ``on_alert``: called with each ``Alert`` (kind ``message_parked``); the log by default.

    Raises ``ConfigError`` for a bad value.
    """

    def __init__(
        self,
        engine_or_url: Engine | str,
        publisher: Publisher,
        *,
        table: str = "sluice_outbox",
        max_attempts: int = 10,
        backoff: tuple[float, float] = (1.0, 300.0),
        retention: timedelta = timedelta(days=7),
        lease: float = 30.0,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        engine = create_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
        if not isinstance(engine, Engine):
            raise ConfigError(f"Outbox needs a SQLAlchemy Engine or URL, got {engine_or_url!r}")
        if not callable(getattr(publisher, "publish", None)) or not callable(
            getattr(publisher, "close", None)
        ):
            raise ConfigError(
                f"publisher {publisher!r} has no publish()/close(): see sluice.publishers"
            )
        _check_positive_int("max_attempts", max_attempts)
        if (
            not isinstance(backoff, tuple) or len(backoff) != 2
            or not all(_is_positive(b) for b in backoff) or backoff[0] > backoff[1]
        ):  # fmt: skip
            raise ConfigError(f"backoff={backoff!r}: give (base, cap) seconds with 0 < base ≤ cap")
        if not isinstance(retention, timedelta) or retention.total_seconds() <= 0:
            raise ConfigError(f"retention={retention!r}: give a positive datetime.timedelta")
        if not _is_positive(lease):
            raise ConfigError(f"lease={lease!r}: give a positive number of seconds")
        self.store = OutboxStore(engine, table)
        self.publisher = publisher
        self.policy = Policy(
            max_attempts=max_attempts,
            backoff=(float(backoff[0]), float(backoff[1])),
            retention=retention.total_seconds(),
            lease=float(lease),
            sinks=[on_alert] if on_alert else [],
        )
        self._relay = Relay(self.store, publisher, self.policy)
        self._sender = AfterCommitSender(self.store, publisher, self.policy)

    @property
    def table(self) -> str:
        return self.store.table

    @property
    def alert_sinks(self) -> list[Callable[[Alert], None]]:
        """Where ``message_parked`` alerts go; an app may append its own sinks."""
        return self.policy.sinks

    def put(
        self,
        conn_or_session: Any,
        *,
        topic: str,
        key: str | int | None = None,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        type: str | None = None,
        ordered: bool = False,
    ) -> int:
        """Store a message inside the caller's open transaction; returns its outbox id.

        Accepts a SQLAlchemy ``Session`` or ``Connection`` or a raw psycopg 3 / sqlite3
        connection; nothing is committed here. Unordered messages are published right after
        the commit, off the caller's thread; ordered ones (``ordered=True``, ``key`` required)
        only by the relay, one at a time per key in commit order. On PostgreSQL an ordered put
        holds a per-key lock until the transaction ends, so concurrent transactions writing
        the same key commit one after the other. ``type`` defaults to ``topic``.

        Raises ``PayloadError`` if ``payload`` or ``headers`` is not JSON-serialisable, and
        ``ConfigError`` for a bad topic, key or connection.
        """
        row = self._row(topic=topic, key=key, payload=payload, headers=headers, type_=type,
                        ordered=ordered)  # fmt: skip
        target = classify(conn_or_session)
        if target.dialect != self.store.dialect:
            raise ConfigError(
                f"outbox {self.table} lives in a {self.store.dialect} database but put() was "
                f"given a {target.dialect} transaction"
            )
        if target.dialect == "sqlite" and not self.store.ready:
            # SQLite has one writer: if the caller's transaction already wrote, DDL from our own
            # connection would wait on it until the busy time-out. Create through theirs.
            for stmt in self.store.create_statements():
                target.execute(stmt, {})
        else:
            self.store.ensure_schema()
        if ordered and self.store.q.lock_key:
            # Taken before the insert draws its id, so for one key, id order is commit order.
            target.execute(self.store.q.lock_key, {"lock": f"{self.table}\x1f{row['key']}"})
        token = None if ordered else f"ac:{os.urandom(12).hex()}"
        row.update(owner=token, lease=None if ordered else self.policy.lease)
        id_ = int(target.execute(self.store.q.insert, row)[0])
        if token is not None:
            if target.dialect == "sqlite" and target.kind != "session":
                self._sender.submit(id_, token, confirmed=False)
            else:
                after_commit(target.obj, lambda: self._sender.submit(id_, token, confirmed=True))
        return id_

    def relay(self, *, batch: int = 500, owner: str) -> RelayStats:
        """One relay pass: send due messages, retry failed ones, park, clean up.

        Synchronous; safe to call from any thread and from many processes at once. ``owner``
        names this node in leases (e.g. ``"host:pid"``).
        """
        _check_positive_int("batch", batch)
        self.store.ensure_schema()
        return self._relay.run_once(batch=batch, owner=owner)

    def run_relay_forever(
        self,
        stop_event: threading.Event,
        every: float = 1.0,
        batch: int = 500,
        owner: str | None = None,
    ) -> None:
        """Relay until ``stop_event`` is set: a pass every ``every`` seconds, or at once while
        a pass leaves work behind. Errors (database or broker down) are logged and retried."""
        owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        while not stop_event.is_set():
            try:
                more = self.relay(batch=batch, owner=owner).more
            except Exception:
                log.exception("outbox %s relay pass failed; retrying in %.1fs", self.table, every)
                more = False
            if not more:
                stop_event.wait(every)

    def status(self) -> dict[str, Any]:
        """Backlog: ``pending``, ``in_flight``, ``backing_off``, ``oldest_pending_age_seconds``,
        ``parked``, ``topics`` ({topic: {"pending", "parked"}}) and ``blocked_keys`` (ordering
        keys whose head message is parked, with its id and last error)."""
        self.store.ensure_schema()
        return self.store.status()

    def retry(self, ids: Sequence[int] | None = None, all: bool = False) -> int:
        """Make messages due now: the given ids (parked or waiting on backoff), or with
        ``all=True`` every parked or backing-off message. Parked messages get a fresh attempt
        count. Returns how many were changed."""
        if all == (ids is not None):
            raise ConfigError("retry() takes either ids or all=True, not both")
        self.store.ensure_schema()
        return self.store.retry(None if all else [int(i) for i in ids or []])

    def close(self) -> None:
        """Stop the after-commit sender (waiting briefly for it) and close the publisher."""
        self._sender.close()
        self.publisher.close()

    def _row(self, *, topic: str, key: Any, payload: Any, headers: Any, type_: Any,
             ordered: bool) -> dict[str, Any]:  # fmt: skip
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"topic={topic!r}: give a non-empty string")
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if key is not None and not isinstance(key, str):
            raise ConfigError(f"key={key!r}: give a string, an int or None")
        if ordered and not key:
            raise ConfigError(f"ordered message on {topic!r} needs a key: order is kept per key")
        if type_ is not None and (not isinstance(type_, str) or not type_):
            raise ConfigError(f"type={type_!r}: give a non-empty string or None")
        if headers is not None and not (
            isinstance(headers, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise PayloadError(
                f"headers for {topic!r} must map strings to strings, got {headers!r}"
            )
        return {
            "topic": topic,
            "key": key,
            "type": type_ or topic,
            "payload": _to_json(payload, f"payload for {topic!r}"),
            "headers": _to_json(dict(headers or {}), f"headers for {topic!r}"),
            "ordered": bool(ordered),
        }


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"{what} is not JSON-serialisable ({exc}); sluice never pickles"
        ) from exc


def _is_positive(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r}: give a whole number ≥ 1")
