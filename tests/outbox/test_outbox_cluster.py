"""Several real processes: ordered relays with one killed part-way, and a process killed between
its commit and its after-commit send."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from outbox_helpers import AMQP_URL, Rabbit, wait_until
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from sluice import publishers
from sluice.outbox import Outbox

pytestmark = pytest.mark.slow

PROCS = str(Path(__file__).with_name("outbox_procs.py"))
KEYS, PER_KEY = 50, 100


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, PROCS, *args], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )


def _sent(engine: Engine) -> int:
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM sluice_outbox WHERE status = 'sent'")).scalar()


def _produce_ordered(ob: Outbox, engine: Engine, keys: list[str], seed: int) -> None:
    """Interleave the keys' messages in transactions of five; each key's payload counts up."""
    rng = random.Random(seed)
    todo = [k for k in keys for _ in range(PER_KEY)]
    rng.shuffle(todo)
    seq = dict.fromkeys(keys, 0)
    for start in range(0, len(todo), 5):
        with Session(engine) as s, s.begin():
            for key in todo[start : start + 5]:
                ob.put(s, topic="order.event", key=key, payload={"seq": seq[key]}, ordered=True)
                seq[key] += 1


def test_ordered_three_relays_one_killed(pg_engine: Engine, rabbit: Rabbit) -> None:
    ob = Outbox(pg_engine, publishers.Callable(lambda m: None))  # puts only; relays send
    ob.status()
    relays = [_spawn("relay", _url(pg_engine), rabbit.exchange, f"r{i}", "2.0") for i in range(3)]
    try:
        keys = [f"order-{k:02d}" for k in range(KEYS)]
        # Two producers on disjoint keys: their ids interleave and commit out of id order.
        producers = [
            threading.Thread(target=_produce_ordered, args=(ob, pg_engine, keys[i::2], i))
            for i in range(2)
        ]
        for p in producers:
            p.start()
        wait_until(lambda: _sent(pg_engine) >= 1000, 60, "a fifth of the messages sent")
        relays[0].send_signal(signal.SIGKILL)  # its leased keys resume when the lease expires
        relays[0].wait()
        for p in producers:
            p.join()
        received = rabbit.read(KEYS * PER_KEY, timeout=120)
    finally:
        for r in relays:
            if r.poll() is None:
                r.terminate()
                r.wait(30)
    seen: dict[str, list[int]] = {}
    first: set[int] = set()
    for r in received:
        if r.id not in first:  # a consumer de-duplicates on the outbox id
            first.add(r.id)
            seen.setdefault(r.key, []).append(r.payload["seq"])
    assert len(first) == KEYS * PER_KEY
    assert all(seqs == list(range(PER_KEY)) for seqs in seen.values()), "per-key order"
    assert len(seen) == KEYS


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_killed_between_commit_and_send(
    store: str, request: pytest.FixtureRequest, rabbit: Rabbit
) -> None:
    engine: Engine = request.getfixturevalue("sqlite_engine" if store == "sqlite" else "pg_engine")
    Outbox(engine, publishers.Callable(print)).status()
    child = _spawn("crash", _url(engine), "20")
    try:
        assert child.stdout is not None
        ids = json.loads(child.stdout.readline())  # committed; the send is stuck in the child
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(ids) == 20
    with engine.connect() as c:
        rows = c.execute(text("SELECT status, lease_owner FROM sluice_outbox")).all()
    assert all(s == "pending" and o.startswith("ac:") for s, o in rows), "not sent by the child"
    ob = Outbox(engine, publishers.RabbitMQ(AMQP_URL, exchange=rabbit.exchange))

    def drained() -> bool:
        ob.relay(owner="rescuer")
        return ob.status()["pending"] == 0

    wait_until(drained, 15, "the child's lease to expire and the relay to send everything")
    assert sorted(r.id for r in rabbit.read(20)) == sorted(ids)
    ob.close()
