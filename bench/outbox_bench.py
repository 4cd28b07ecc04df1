"""Outbox benchmark: relay throughput per broker and after-commit latency.

    .venv/bin/python bench/outbox_bench.py [--messages 20000] [--latency-samples 1000]

Needs the machine's PostgreSQL, RabbitMQ, NATS (JetStream) and Redis. Creates and drops its own
database, exchange, queue, stream and keys. Targets: relay ≥ 5,000 messages/s; after-commit
p50 ≤ 5 ms (commit returned → broker acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import nats
import pika
import psycopg
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from sluice import publishers
from sluice.outbox import Outbox, OutboxMessage

PG = os.environ.get("SLUICE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"
NAME = f"bench{uuid.uuid4().hex[:8]}"


class Timed:
    """Wraps a publisher and notes when each message was acknowledged."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.acked: dict[int, float] = {}
        self.event = threading.Event()

    def publish(self, batch: Sequence[OutboxMessage]) -> Sequence[Any]:
        out = self.inner.publish(batch)
        now = time.perf_counter()
        for m, o in zip(batch, out, strict=True):
            if o is True:
                self.acked[m.id] = now
        self.event.set()
        return out

    def close(self) -> None:
        self.inner.close()


def fill(engine: Engine, n: int, topic: str, ordered_keys: int = 0) -> None:
    key = f"'k' || (g % {ordered_keys})" if ordered_keys else "NULL"
    with engine.begin() as c:
        c.execute(text("TRUNCATE sluice_outbox"))
        c.execute(
            text(
                "INSERT INTO sluice_outbox (aggregatetype, aggregateid, type, payload, ordered) "
                f"SELECT :t, {key}, :t, jsonb_build_object('n', g, 'pad', repeat('x', 100)), "
                f"{'true' if ordered_keys else 'false'} FROM generate_series(1, :n) AS g"
            ),
            {"t": topic, "n": n},
        )


def relay_rate(engine: Engine, publisher: Any, topic: str, n: int, ordered_keys: int = 0) -> float:
    ob = Outbox(engine, publisher)
    ob.status()
    fill(engine, n, topic, ordered_keys)
    started = time.perf_counter()
    sent = 0
    while sent < n:
        stats = ob.relay(batch=500, owner="bench")
        sent += stats.sent
        if stats.failed:
            raise SystemExit(f"relay failed {stats.failed} messages; is the broker up?")
    rate = n / (time.perf_counter() - started)
    ob.close()
    return rate


def latency(engine: Engine, publisher: Any, topic: str, samples: int) -> tuple[float, float]:
    timed = Timed(publisher)
    ob = Outbox(engine, timed)
    ob.status()
    lat = []
    for i in range(samples + 50):
        timed.event.clear()
        with Session(engine) as s:
            s.begin()
            id_ = ob.put(s, topic=topic, payload={"i": i})
            s.commit()
            committed = time.perf_counter()
        while id_ not in timed.acked:
            timed.event.wait(1.0)
            timed.event.clear()
        if i >= 50:  # warm-up: connections, prepared statements
            lat.append((timed.acked[id_] - committed) * 1000)
    ob.close()
    q = statistics.quantiles(lat, n=100)
    return q[49], q[98]


def machine(engine: Engine) -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with engine.connect() as c:
        pg = c.execute(text("SHOW server_version")).scalar()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, PostgreSQL {pg}"


def _setup_brokers() -> Callable[[], None]:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    ch.exchange_declare(NAME, "topic", durable=True)
    ch.queue_declare(NAME, durable=True)
    ch.queue_bind(NAME, NAME, "#")

    async def stream(add: bool) -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        if add:
            await js.add_stream(name=NAME, subjects=[f"{NAME}.>"])
        else:
            await js.delete_stream(NAME)
        await nc.close()

    asyncio.run(stream(True))

    def teardown() -> None:
        ch.queue_delete(NAME)
        ch.exchange_delete(NAME)
        conn.close()
        asyncio.run(stream(False))
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{NAME}:*"):
            client.delete(key)

    return teardown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--latency-samples", type=int, default=1000)
    args = ap.parse_args()
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{NAME}"')
    engine = create_engine(
        PG.rpartition("/")[0].replace("postgresql:", "postgresql+psycopg:") + f"/{NAME}"
    )
    teardown = _setup_brokers()
    try:
        print(f"machine: {machine(engine)}")
        n = args.messages
        brokers: dict[str, Callable[[], Any]] = {
            "RabbitMQ (confirms)": lambda: publishers.RabbitMQ(AMQP, exchange=NAME),
            "NATS JetStream": lambda: publishers.NATS(NATS_URL, stream=NAME),
            "Redis Streams": lambda: publishers.RedisStreams(REDIS_URL, stream_prefix=f"{NAME}:"),
        }
        for name, make in brokers.items():
            rate = relay_rate(engine, make(), f"{NAME}.relay", n)
            print(f"relay {name:<22} unordered: {rate:>8,.0f} messages/s  ({n:,} messages)")
        for name, make in list(brokers.items())[:2]:
            rate = relay_rate(engine, make(), f"{NAME}.ordered", n // 4, ordered_keys=50)
            print(f"relay {name:<22} ordered:   {rate:>8,.0f} messages/s  ({n // 4:,}, 50 keys)")
        for name, make in list(brokers.items())[:2]:
            p50, p99 = latency(engine, make(), f"{NAME}.latency", args.latency_samples)
            print(f"after-commit {name:<15} commit→ack: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    finally:
        teardown()
        engine.dispose()
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')


if __name__ == "__main__":
    main()
