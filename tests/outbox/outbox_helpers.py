"""Helpers and fixtures for the outbox tests: real brokers, unique names per test, consumers
that read back. Test modules import helpers from here (a uniquely named module, unlike
``conftest``); ``conftest.py`` re-exports the fixtures.

Stopping RabbitMQ (``rabbit_stopped``) always brings it back in a ``finally`` and waits for
it with a deadline loop of real connection attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import nats
import pika
import pytest
import redis
from sqlalchemy import Engine, create_engine

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)  # the poll interval of a deadline loop


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(sa_url(pg_url), pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The business database, once per store."""
    return request.getfixturevalue(f"{'pg' if request.param == 'postgresql' else 'sqlite'}_engine")


@dataclass
class Received:
    """One message as a consumer saw it."""

    id: int
    topic: str
    key: str | None
    payload: Any


# -- RabbitMQ ------------------------------------------------------------------------------


@dataclass
class Rabbit:
    exchange: str
    queue: str

    def read(self, n: int, timeout: float = 60.0) -> list[Received]:
        """Consume until ``n`` distinct messages arrived (fails past ``timeout``), plus any
        extras already queued, so duplicates are seen too."""
        out: list[Received] = []
        deadline = time.monotonic() + timeout
        conn = _amqp_connect()
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=2000)
            for method, props, body in ch.consume(
                self.queue, auto_ack=True, inactivity_timeout=0.5
            ):
                if method is None:
                    if len({r.id for r in out}) >= n:
                        break
                    if time.monotonic() > deadline:
                        pytest.fail(f"RabbitMQ: {len(out)} of {n} messages after {timeout}s")
                    continue
                key = (props.headers or {}).get("sluice-key")
                out.append(
                    Received(int(props.message_id), method.routing_key, key, json.loads(body))
                )
            ch.cancel()
        finally:
            conn.close()
        return out


def _amqp_connect() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(AMQP_URL))


@pytest.fixture
def rabbit() -> Iterator[Rabbit]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    conn = _amqp_connect()
    ch = conn.channel()
    ch.exchange_declare(name, "topic", durable=True)
    # Durable, so messages confirmed before a broker stop are still there after it.
    ch.queue_declare(name, durable=True)
    ch.queue_bind(name, name, "#")
    conn.close()
    yield Rabbit(name, name)
    conn = _amqp_connect()
    ch = conn.channel()
    ch.queue_delete(name)
    ch.exchange_delete(name)
    conn.close()


# -- NATS JetStream ------------------------------------------------------------------------


@dataclass
class NatsStream:
    stream: str
    prefix: str  # subjects are "<prefix>.<anything>"

    def read(self, n: int, timeout: float = 60.0) -> list[Received]:
        return asyncio.run(self._read(n, timeout))

    async def _read(self, n: int, timeout: float) -> list[Received]:
        nc = await nats.connect(NATS_URL)
        out: list[Received] = []
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(f"{self.prefix}.>", stream=self.stream)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    # nats-py raises either, depending on where the deadline is noticed
                    msgs = []
                for m in msgs:
                    await m.ack()
                    h = m.headers or {}
                    out.append(
                        Received(
                            int(h["Nats-Msg-Id"]),
                            m.subject,
                            h.get("Sluice-Key"),
                            json.loads(m.data),
                        )
                    )
                if not msgs and len({r.id for r in out}) >= n:
                    return out
                if time.monotonic() > deadline:
                    pytest.fail(f"NATS: {len(out)} of {n} messages after {timeout}s")
        finally:
            await nc.close()


async def _nats_admin(fn: Callable[[Any], Any]) -> Any:
    nc = await nats.connect(NATS_URL)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture
def nats_stream() -> Iterator[NatsStream]:
    name = f"T{uuid.uuid4().hex[:10]}"
    prefix = f"t{name[1:].lower()}"
    asyncio.run(_nats_admin(lambda js: js.add_stream(name=name, subjects=[f"{prefix}.>"])))
    yield NatsStream(name, prefix)
    asyncio.run(_nats_admin(lambda js: js.delete_stream(name)))


# -- Redis Streams -------------------------------------------------------------------------


@dataclass
class RedisPrefix:
    prefix: str

    def read(self, n: int, timeout: float = 60.0) -> list[Received]:
        client = redis.Redis.from_url(REDIS_URL)
        deadline = time.monotonic() + timeout
        while True:
            out = []
            for stream in sorted(client.scan_iter(match=f"{self.prefix}*")):
                topic = stream.decode()[len(self.prefix) :]
                for _entry_id, f in client.xrange(stream):
                    key = f[b"key"].decode() or None
                    out.append(Received(int(f[b"id"]), topic, key, json.loads(f[b"payload"])))
            if len({r.id for r in out}) >= n:
                return out
            if time.monotonic() > deadline:
                pytest.fail(f"Redis: {len(out)} of {n} messages after {timeout}s")
            time.sleep(0.2)  # poll interval of the deadline loop above


@pytest.fixture
def redis_prefix() -> Iterator[RedisPrefix]:
    prefix = f"t:{uuid.uuid4().hex[:10]}:"
    yield RedisPrefix(prefix)
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


# -- stopping the real RabbitMQ; cutting the others off -----------------------------------


def _rabbit_up() -> bool:
    try:
        _amqp_connect().close()
        return True
    except Exception:
        return False


def _rabbitmqctl(command: str) -> None:
    subprocess.run(["rabbitmqctl", command], check=True, capture_output=True, timeout=120)


@contextmanager
def rabbit_stopped() -> Iterator[None]:
    """Stop the real RabbitMQ application for the body of the ``with``; restart it in a
    ``finally`` and wait until it accepts connections again."""
    _rabbitmqctl("stop_app")
    try:
        wait_until(lambda: not _rabbit_up(), 30, "RabbitMQ to stop", every=0.2)
        yield
    finally:
        _rabbitmqctl("start_app")
        wait_until(_rabbit_up, 120, "RabbitMQ to come back", every=0.2)


class TcpProxy:
    """A TCP relay in front of a real server, which a test can cut off and restore.

    Used to make NATS and Redis unreachable without stopping them: Redis here runs without
    persistence, so a real restart would lose what it had acknowledged, and the NATS server is
    shared with the rest of the machine. While cut, every connection is reset and new ones
    are refused.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url_port(self) -> int:
        return self.port

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(), which otherwise keeps the port.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def nats_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(4222)
    yield proxy
    proxy.close()


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(6379)
    yield proxy
    proxy.close()


# -- an in-process publisher that records what it was given --------------------------------


class Collector:
    """A publisher that keeps every message; ``fail`` decides which ones to refuse."""

    def __init__(self, fail: Callable[[Any], bool] | None = None) -> None:
        self.messages: list[Any] = []
        self.calls = 0
        self.fail = fail
        self._lock = threading.Lock()

    def publish(self, batch: Any) -> list[Any]:
        out: list[Any] = []
        with self._lock:
            self.calls += 1
            for m in batch:
                if self.fail is not None and self.fail(m):
                    out.append(RuntimeError(f"refused {m.id}"))
                else:
                    self.messages.append(m)
                    out.append(True)
        return out

    def close(self) -> None:
        pass

    @property
    def ids(self) -> list[int]:
        with self._lock:
            return [m.id for m in self.messages]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[int]:
        return wait_until(lambda: len(self.ids) >= n and self.ids, timeout, f"{n} messages")
