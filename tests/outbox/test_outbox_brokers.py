"""End to end with the real brokers: exactly the committed messages arrive, each once, and
nothing is lost while a broker is down or unreachable."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from outbox_helpers import (
    AMQP_URL,
    NatsStream,
    Rabbit,
    RedisPrefix,
    TcpProxy,
    rabbit_stopped,
    wait_until,
)
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from sluice import publishers
from sluice.outbox import Outbox

pytestmark = pytest.mark.slow


class Producer:
    """Business transactions that each put ``per_tx`` messages; every ``rollback_every``-th
    transaction rolls back. Records the ids that were committed and any error raised."""

    def __init__(self, ob: Outbox, engine: Engine, topic: str, kind: str = "session") -> None:
        self.ob, self.engine, self.topic, self.kind = ob, engine, topic, kind
        self.committed: list[int] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        if self.kind == "session":
            with Session(self.engine) as s, s.begin():
                yield s
        elif self.kind == "connection":
            with self.engine.begin() as c:
                yield c
        else:  # a raw psycopg connection
            url = self.engine.url.render_as_string(hide_password=False)
            with psycopg.connect(url.replace("+psycopg", "")) as conn, conn.transaction():
                yield conn

    def run(self, n_tx: int, per_tx: int, rollback_every: int = 10, offset: int = 0) -> None:
        try:
            for t in range(n_tx):
                ids: list[int] = []
                rollback = (t + offset) % rollback_every == 0
                try:
                    with self._tx() as tx:
                        for i in range(per_tx):
                            ids.append(self.ob.put(tx, topic=self.topic, payload={"t": t, "i": i}))
                        if rollback:
                            raise _RollBack
                except _RollBack:
                    continue
                with self._lock:
                    self.committed += ids
        except BaseException as exc:
            self.errors.append(exc)

    def run_threads(self, threads: int, n_tx: int, per_tx: int) -> None:
        workers = [
            threading.Thread(target=self.run, args=(n_tx, per_tx, 10, k)) for k in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not self.errors, self.errors


class _RollBack(Exception):
    pass


@contextmanager
def relaying(ob: Outbox) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=ob.run_relay_forever, args=(stop, 0.1, 500, "test"))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _exactly_once(received: list[Any], committed: list[int]) -> None:
    counts = collections.Counter(r.id for r in received)
    assert set(counts) == set(committed), "the committed messages and only those"
    assert max(counts.values()) == 1, "each once"


def _ten_thousand(ob: Outbox, engine: Engine, topic: str, kind: str, read: Callable) -> None:
    producer = Producer(ob, engine, topic, kind)
    with relaying(ob):
        producer.run_threads(threads=4, n_tx=500, per_tx=5)  # 10,000 puts, 1,000 rolled back
        assert len(producer.committed) == 9000
        received = read(9000)
    _exactly_once(received, producer.committed)
    assert ob.status()["pending"] == 0
    ob.close()


def test_ten_thousand_puts_rabbitmq(pg_engine: Engine, rabbit: Rabbit) -> None:
    ob = Outbox(pg_engine, publishers.RabbitMQ(AMQP_URL, exchange=rabbit.exchange))
    _ten_thousand(ob, pg_engine, "order.shipped", "session", rabbit.read)


def test_ten_thousand_puts_nats(pg_engine: Engine, nats_stream: NatsStream) -> None:
    ob = Outbox(pg_engine, publishers.NATS(stream=nats_stream.stream))
    _ten_thousand(ob, pg_engine, f"{nats_stream.prefix}.shipped", "psycopg", nats_stream.read)


def test_ten_thousand_puts_redis(pg_engine: Engine, redis_prefix: RedisPrefix) -> None:
    ob = Outbox(pg_engine, publishers.RedisStreams(stream_prefix=redis_prefix.prefix))
    _ten_thousand(ob, pg_engine, "order.shipped", "connection", redis_prefix.read)


def test_sqlite_business_database_rabbitmq(sqlite_engine: Engine, rabbit: Rabbit) -> None:
    ob = Outbox(sqlite_engine, publishers.RabbitMQ(AMQP_URL, exchange=rabbit.exchange))
    producer = Producer(ob, sqlite_engine, "order.shipped", "connection")
    with relaying(ob):
        producer.run_threads(threads=2, n_tx=200, per_tx=5)  # 2,000 puts, 200 rolled back
        received = rabbit.read(len(producer.committed))
    _exactly_once(received, producer.committed)
    ob.close()


def _through_an_outage(
    ob: Outbox, engine: Engine, topic: str, outage: Callable[[], Any], read: Callable
) -> list[Any]:
    """Put messages at a steady pace before, during and after a 10 s outage."""
    producer = Producer(ob, engine, topic, "session")
    stop = threading.Event()

    def paced() -> None:
        while not stop.is_set():
            producer.run(n_tx=1, per_tx=2, rollback_every=10**9, offset=1)
            stop.wait(0.01)  # pacing of the producer, not a wait for a condition

    thread = threading.Thread(target=paced)
    with relaying(ob):
        thread.start()
        try:
            wait_until(lambda: len(producer.committed) >= 200, 30, "traffic before the outage")
            with outage():
                before = len(producer.committed)
                hold = time.monotonic() + 10.0
                while time.monotonic() < hold:  # the broker stays away for 10 s
                    assert not producer.errors, producer.errors
                    stop.wait(0.1)
                assert len(producer.committed) > before + 200, "commits went on meanwhile"
            wait_until(lambda: len(producer.committed) >= before + 600, 30, "traffic after")
        finally:
            stop.set()
            thread.join()
        assert not producer.errors, "the callers' transactions never failed"
        received = read(len(producer.committed), timeout=90)
    assert {r.id for r in received} == set(producer.committed), "nothing lost"
    ob.close()
    return received


def test_rabbitmq_stopped_for_ten_seconds(pg_engine: Engine, rabbit: Rabbit) -> None:
    pub = publishers.RabbitMQ(AMQP_URL, exchange=rabbit.exchange, timeout=2.0)
    ob = Outbox(pg_engine, pub, backoff=(0.2, 1.0), max_attempts=1000)
    received = _through_an_outage(ob, pg_engine, "order.shipped", rabbit_stopped, rabbit.read)
    # Only messages whose confirm was lost in the stop may arrive twice.
    assert len(received) - len({r.id for r in received}) <= 50


def test_nats_unreachable_for_ten_seconds(
    pg_engine: Engine, nats_stream: NatsStream, nats_proxy: TcpProxy
) -> None:
    pub = publishers.NATS(f"nats://127.0.0.1:{nats_proxy.port}", nats_stream.stream, timeout=2.0)
    ob = Outbox(pg_engine, pub, backoff=(0.2, 1.0), max_attempts=1000)

    @contextmanager
    def cut() -> Iterator[None]:
        nats_proxy.cut()
        try:
            yield
        finally:
            nats_proxy.restore()

    received = _through_an_outage(ob, pg_engine, f"{nats_stream.prefix}.x", cut, nats_stream.read)
    assert len(received) == len({r.id for r in received}), "the stream de-duplicated re-sends"


def test_redis_unreachable_for_ten_seconds(
    pg_engine: Engine, redis_prefix: RedisPrefix, redis_proxy: TcpProxy
) -> None:
    url = f"redis://127.0.0.1:{redis_proxy.port}/0"
    pub = publishers.RedisStreams(url, stream_prefix=redis_prefix.prefix, timeout=2.0)
    ob = Outbox(pg_engine, pub, backoff=(0.2, 1.0), max_attempts=1000)

    @contextmanager
    def cut() -> Iterator[None]:
        redis_proxy.cut()
        try:
            yield
        finally:
            redis_proxy.restore()

    _through_an_outage(ob, pg_engine, "order.shipped", cut, redis_prefix.read)
