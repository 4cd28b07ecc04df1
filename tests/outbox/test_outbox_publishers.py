"""Each publisher against the real broker on this machine: acks, ids, refusals, reconnects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
import pytest
from outbox_helpers import AMQP_URL, NATS_URL, REDIS_URL, NatsStream, Rabbit, RedisPrefix, TcpProxy

from sluice import publishers
from sluice.errors import ConfigError, PublishError
from sluice.outbox import OutboxMessage, Publisher


def _msgs(topic_prefix: str, n: int, start: int = 1) -> list[OutboxMessage]:
    return [
        OutboxMessage(
            id=i,
            topic=f"{topic_prefix}.created",
            key=f"k{i % 3}",
            type="created",
            payload=b'{"n": %d}' % i,
            headers={"trace": f"t{i}"},
            created_at=datetime.now(UTC),
        )
        for i in range(start, start + n)
    ]


def test_every_publisher_satisfies_the_protocol() -> None:
    for p in (
        publishers.RabbitMQ(AMQP_URL),
        publishers.NATS(NATS_URL),
        publishers.RedisStreams(REDIS_URL),
        publishers.Callable(print),
    ):
        assert isinstance(p, Publisher)
        assert p.publish([]) == []
        p.close()


def test_rabbitmq_confirms_and_carries_the_outbox_id(rabbit: Rabbit) -> None:
    pub = publishers.RabbitMQ(AMQP_URL, exchange=rabbit.exchange)
    try:
        assert pub.publish(_msgs("order", 300)) == [True] * 300
        assert pub.publish(_msgs("order", 5, start=301)) == [True] * 5
    finally:
        pub.close()
    got = rabbit.read(305)
    assert [r.id for r in got] == list(range(1, 306))
    assert got[0].topic == "order.created" and got[0].key == "k1" and got[0].payload == {"n": 1}


def test_rabbitmq_mandatory_reports_unroutable(rabbit: Rabbit) -> None:
    pub = publishers.RabbitMQ(
        AMQP_URL,
        exchange=rabbit.exchange,
        mandatory=True,
        route=lambda m: (rabbit.exchange if m.id % 2 else "amq.direct", m.topic),
    )
    try:
        outcomes = pub.publish(_msgs("order", 4))
    finally:
        pub.close()
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], PublishError) and "unroutable" in str(outcomes[1])
    assert isinstance(outcomes[3], PublishError)


def test_rabbitmq_unreachable_is_an_outcome_not_an_exception() -> None:
    pub = publishers.RabbitMQ("amqp://guest:guest@127.0.0.1:1/%2F", timeout=1.0)
    outcomes = pub.publish(_msgs("x", 2))
    assert all(isinstance(o, PublishError) for o in outcomes)


def test_nats_jetstream_acks_and_deduplicates_by_outbox_id(nats_stream: NatsStream) -> None:
    pub = publishers.NATS(NATS_URL, stream=nats_stream.stream)
    try:
        assert pub.publish(_msgs(nats_stream.prefix, 200)) == [True] * 200
        # A re-send (relay after a lost status update) is acknowledged but stored once.
        assert pub.publish(_msgs(nats_stream.prefix, 50)) == [True] * 50
    finally:
        pub.close()
    got = nats_stream.read(200)
    assert sorted(r.id for r in got) == list(range(1, 201))
    assert got[0].key is not None


def test_nats_creates_its_stream_when_asked() -> None:
    name = "TCREATE" + datetime.now().strftime("%H%M%S%f")
    pub = publishers.NATS(NATS_URL, stream=name, subjects=[f"{name.lower()}.>"])
    try:
        assert pub.publish(_msgs(name.lower(), 3)) == [True] * 3
    finally:
        pub.close()

    async def drop() -> int:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        info = await js.stream_info(name)
        await js.delete_stream(name)
        await nc.close()
        return info.state.messages

    assert asyncio.run(drop()) == 3


def test_nats_subject_outside_the_stream_fails(nats_stream: NatsStream) -> None:
    pub = publishers.NATS(NATS_URL, stream=nats_stream.stream, timeout=2.0)
    try:
        outcomes = pub.publish(_msgs("nowhere", 1))
    finally:
        pub.close()
    assert isinstance(outcomes[0], Exception)


def test_nats_reconnects_after_a_cut(nats_stream: NatsStream, nats_proxy: TcpProxy) -> None:
    pub = publishers.NATS(f"nats://127.0.0.1:{nats_proxy.port}", timeout=1.0)
    try:
        assert pub.publish(_msgs(nats_stream.prefix, 1)) == [True]
        nats_proxy.cut()
        assert all(isinstance(o, Exception) for o in pub.publish(_msgs(nats_stream.prefix, 2, 2)))
        nats_proxy.restore()
        ok = False
        for _ in range(30):  # each call waits up to its own time-out
            if pub.publish(_msgs(nats_stream.prefix, 2, 2)) == [True, True]:
                ok = True
                break
        assert ok
    finally:
        pub.close()
    assert sorted({r.id for r in nats_stream.read(3)}) == [1, 2, 3]


def test_redis_streams_xadd_carries_the_outbox_id(redis_prefix: RedisPrefix) -> None:
    pub = publishers.RedisStreams(REDIS_URL, stream_prefix=redis_prefix.prefix)
    try:
        assert pub.publish(_msgs("order", 100)) == [True] * 100
    finally:
        pub.close()
    got = redis_prefix.read(100)
    assert [r.id for r in got] == list(range(1, 101))
    assert got[0].topic == "order.created" and got[0].payload == {"n": 1}


def test_redis_reconnects_after_a_cut(redis_prefix: RedisPrefix, redis_proxy: TcpProxy) -> None:
    url = f"redis://127.0.0.1:{redis_proxy.port}/0"
    pub = publishers.RedisStreams(url, stream_prefix=redis_prefix.prefix, timeout=1.0)
    try:
        assert pub.publish(_msgs("a", 1)) == [True]
        redis_proxy.cut()
        assert all(isinstance(o, Exception) for o in pub.publish(_msgs("a", 1, 2)))
        redis_proxy.restore()
        assert pub.publish(_msgs("a", 1, 2)) == [True]
    finally:
        pub.close()
    assert [r.id for r in redis_prefix.read(2)] == [1, 2]


def test_callable_publisher_turns_exceptions_into_outcomes() -> None:
    def fn(m: OutboxMessage) -> None:
        if m.id == 2:
            raise RuntimeError("no")

    outcomes = publishers.Callable(fn).publish(_msgs("x", 3))
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], RuntimeError)
    with pytest.raises(ConfigError):
        publishers.Callable(42)  # type: ignore[arg-type]
