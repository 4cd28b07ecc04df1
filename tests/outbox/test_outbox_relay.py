"""The relay: retries, parking and alerts, retry and status, clean-up, concurrency, ordering."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest
from outbox_helpers import Collector, wait_until
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from sluice.alerts import Alert
from sluice.outbox import Outbox


def _insert_pending(engine: Engine, n: int, topic: str = "t.bulk") -> None:
    """Rows as the relay finds them when the after-commit send never happened."""
    Outbox(engine, Collector()).status()  # creates the table
    series = (
        "generate_series(1, :n) AS g"
        if engine.dialect.name == "postgresql"
        else "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n) "
        "SELECT g FROM s)"
    )
    payload = "CAST(g AS text)" if engine.dialect.name == "sqlite" else "to_jsonb(g)"
    with engine.begin() as c:
        c.execute(
            text(
                f"INSERT INTO sluice_outbox (aggregatetype, type, payload) "
                f"SELECT :topic, :topic, {payload} FROM {series}"
            ),
            {"n": n, "topic": topic},
        )


def test_failures_back_off_then_park_and_alert(engine: Engine) -> None:
    alerts: list[Alert] = []
    pub = Collector(fail=lambda m: m.topic == "t.poison")
    # backoff long enough that a slow machine still reads the messages as backing off
    ob = Outbox(engine, pub, max_attempts=3, backoff=(1.0, 1.5), on_alert=alerts.append)
    _insert_pending(engine, 2, "t.poison")
    _insert_pending(engine, 1, "t.fine")
    first = ob.relay(owner="n1")
    assert (first.claimed, first.sent, first.failed) == (3, 1, 2)
    assert ob.relay(owner="n1").claimed == 0  # backing off: not due yet
    st = ob.status()
    assert (
        st["pending"] == 2 and st["backing_off"] == 2 and st["topics"]["t.poison"]["pending"] == 2
    )

    def parked() -> bool:
        ob.relay(owner="n1")
        return ob.status()["parked"] == 2

    wait_until(parked, 20, "both poison messages parked")
    assert pub.ids == [3]
    # One alert per pass that parked something (jitter may split the two across passes).
    assert {a.kind for a in alerts} == {"message_parked"} and len(alerts) <= 2
    assert alerts[0].subject == "sluice_outbox"
    assert sorted(i for a in alerts for i in a.details["ids"]) == [1, 2]
    with engine.connect() as c:
        row = c.execute(text("SELECT attempts, last_error FROM sluice_outbox WHERE id = 1")).one()
    assert row[0] == 3 and "refused 1" in row[1]

    pub.fail = None
    assert ob.retry([1]) == 1
    assert ob.relay(owner="n1").sent == 1
    assert ob.retry(all=True) == 1
    assert ob.relay(owner="n1").sent == 1
    assert sorted(pub.ids) == [1, 2, 3] and ob.status()["parked"] == 0
    with pytest.raises(ValueError):
        ob.retry([1], all=True)


def test_sent_messages_are_deleted_after_retention(engine: Engine) -> None:
    ob = Outbox(engine, Collector(), retention=timedelta(milliseconds=1))
    _insert_pending(engine, 5)
    deleted = [ob.relay(owner="n").deleted]
    assert ob.status()["pending"] == 0

    def swept() -> bool:
        # A fresh instance sweeps on its first pass (each process sweeps once a minute).
        fresh = Outbox(engine, Collector(), retention=timedelta(milliseconds=1))
        deleted.append(fresh.relay(owner="n").deleted)
        return sum(deleted) == 5

    wait_until(swept, 10, "sent rows deleted")
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM sluice_outbox")).scalar() == 0


def test_concurrent_relays_send_each_message_once(engine: Engine) -> None:
    _insert_pending(engine, 3000)
    pub = Collector()
    boxes = [Outbox(engine, pub) for _ in range(4)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=b.run_relay_forever, args=(stop, 0.01, 200, f"n{i}"))
        for i, b in enumerate(boxes)
    ]
    for t in threads:
        t.start()
    try:
        pub.wait_for(3000, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sorted(pub.ids) == list(range(1, 3001))  # each exactly once


def test_a_row_committed_after_a_newer_one_is_still_sent(pg_engine: Engine, pg_url: str) -> None:
    """Ids are drawn at insert, not at commit: the relay must not keep a high-water mark."""
    pub = Collector()
    ob = Outbox(pg_engine, pub)
    ob.status()
    slow = psycopg.connect(pg_url)
    early = ob.put(slow, topic="t", key="a", payload=1, ordered=True)  # id drawn, not committed
    with Session(pg_engine) as s, s.begin():
        late = ob.put(s, topic="t", key="b", payload=2, ordered=True)
    assert early < late
    assert ob.relay(owner="n").sent == 1 and pub.ids == [late]
    slow.commit()
    slow.close()
    assert ob.relay(owner="n").sent == 1 and pub.ids == [late, early]


def test_ordered_puts_of_one_key_commit_one_at_a_time(pg_engine: Engine, pg_url: str) -> None:
    pub = Collector()
    ob = Outbox(pg_engine, pub)
    ob.status()
    first = psycopg.connect(pg_url)
    a = ob.put(first, topic="t", key="k", payload="a", ordered=True)
    result: list[int] = []
    second = psycopg.connect(pg_url)
    blocked = threading.Thread(
        target=lambda: result.append(ob.put(second, topic="t", key="k", payload="b", ordered=True))
    )
    blocked.start()

    def waiting_on_lock() -> bool:
        with pg_engine.connect() as c:
            sql = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"
            kind = c.execute(text(sql), {"pid": second.info.backend_pid}).scalar()
        return kind == "Lock"

    wait_until(waiting_on_lock, 10, "the second put to wait for the key lock")
    first.commit()
    blocked.join(10)
    second.commit()
    assert result[0] > a  # the later commit has the later id: per-key id order = commit order
    ob.relay(owner="n")
    assert [m.payload for m in pub.messages] == [b'"a"', b'"b"']
    first.close()
    second.close()


def test_ordered_keys_go_in_order_and_a_parked_head_blocks_only_its_key(engine: Engine) -> None:
    pub = Collector(fail=lambda m: m.json() == "a1")
    ob = Outbox(engine, pub, max_attempts=1)
    with Session(engine) as s, s.begin():
        for i in range(4):
            for key in ("a", "b"):
                ob.put(s, topic="t", key=key, payload=f"{key}{i}", ordered=True)
    stats = ob.relay(owner="n")
    assert (stats.sent, stats.parked, stats.released) == (5, 1, 2)
    assert [m.json() for m in pub.messages if m.key == "a"] == ["a0"]
    assert [m.json() for m in pub.messages if m.key == "b"] == ["b0", "b1", "b2", "b3"]
    assert ob.relay(owner="n").claimed == 0  # the key stays blocked
    st = ob.status()
    assert st["blocked_keys"][0]["key"] == "a" and "refused" in st["blocked_keys"][0]["last_error"]
    pub.fail = None
    ob.retry(all=True)
    ob.relay(owner="n")
    assert [m.json() for m in pub.messages if m.key == "a"] == ["a0", "a1", "a2", "a3"]
    assert ob.status()["blocked_keys"] == []


def test_unordered_fast_path_failure_is_not_the_callers_problem(engine: Engine) -> None:
    pub = Collector(fail=lambda m: True)
    ob = Outbox(engine, pub, backoff=(0.01, 0.01))
    with Session(engine) as s, s.begin():
        ob.put(s, topic="t", payload=1)
    wait_until(lambda: pub.calls >= 1, 10, "the after-commit attempt")
    wait_until(lambda: ob.status()["in_flight"] == 0, 10, "the lease to be handed back")
    pub.fail = None
    wait_until(lambda: ob.relay(owner="n").sent == 1, 10, "the relay to send it")
    with engine.connect() as c:
        assert c.execute(text("SELECT attempts FROM sluice_outbox")).scalar() == 2
