"""RabbitMQ publisher: AMQP 0-9-1 with publisher confirms, via pika.

A batch is pipelined: every message is written, then the connection is pumped until the broker
has confirmed (or refused) each one. pika's ``BlockingChannel`` only offers one round trip per
confirmed message (about 5,000/s here, against about 30,000/s pipelined), so this adapter drives
the blocking connection's underlying channel (``channel._impl``) for the publish and confirm
callbacks, and the blocking connection's own loop for I/O.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sluice.errors import ConfigError, PublishError
from sluice.outbox.message import OutboxMessage
from sluice.outbox.publisher import Outcome

log = logging.getLogger("sluice.outbox")

Route = Callable[[OutboxMessage], tuple[str, str]]


class RabbitMQ:
    """Publish to ``exchange`` with the message topic as routing key.

    ``url``: an AMQP URL (``amqp://guest:guest@127.0.0.1:5672/%2F``). ``exchange`` ("sluice")
    of ``exchange_type`` ("topic") is declared durable when ``declare`` is true. ``route``
    optionally maps a message to ``(exchange, routing_key)`` instead. ``mandatory`` (False):
    when true, a message no queue is bound for counts as failed. ``timeout`` (10 s): how long
    a batch waits for confirms. Messages are persistent, carry the outbox id as ``message_id``
    and the ordering key in the ``sluice-key`` header.
    """

    def __init__(
        self,
        url: str,
        exchange: str = "sluice",
        exchange_type: str = "topic",
        declare: bool = True,
        *,
        route: Route | None = None,
        mandatory: bool = False,
        timeout: float = 10.0,
    ) -> None:
        try:
            import pika
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "RabbitMQ publisher needs pika: pip install 'sluice[rabbitmq]'"
            ) from exc
        self._pika = pika
        self.url = url
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.declare = declare
        self.route = route
        self.mandatory = mandatory
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._chan: Any = None
        self._tag = 0  # delivery tag of the last message published on this channel
        self._waiting: dict[int, int] = {}  # delivery tag -> index in the current batch
        self._outcomes: list[Outcome | None] = []
        self._returned: set[str] = set()

    def publish(self, batch: Sequence[OutboxMessage]) -> Sequence[Outcome]:
        if not batch:
            return []
        with self._lock:
            self._outcomes = [None] * len(batch)
            self._returned = set()
            try:
                self._connect()
                self._send(batch)
                self._await_confirms()
            except Exception as exc:
                self._fail_unresolved(PublishError(f"RabbitMQ {self.exchange}: {exc!r}"))
                self._drop()
            for i, m in enumerate(batch):
                if self._outcomes[i] is True and str(m.id) in self._returned:
                    self._outcomes[i] = PublishError(f"message {m.id} unroutable: no queue bound")
            return [o if o is not None else PublishError("no confirm") for o in self._outcomes]

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connect(self) -> None:
        if self._conn is not None and self._conn.is_open and self._chan.is_open:
            return
        self._drop()
        params = self._pika.URLParameters(self.url)
        params.socket_timeout = self.timeout
        params.blocked_connection_timeout = self.timeout
        params.connection_attempts = 1
        self._conn = self._pika.BlockingConnection(params)
        self._chan = self._conn.channel()
        if self.declare:
            self._chan.exchange_declare(self.exchange, self.exchange_type, durable=True)
        impl = self._chan._impl
        selected: list[bool] = []

        def on_select_ok(_frame: Any) -> None:
            selected.append(True)
            self._wake()

        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=on_select_ok)
        impl.add_on_return_callback(self._on_return)
        self._tag = 0
        self._pump(lambda: bool(selected))

    def _send(self, batch: Sequence[OutboxMessage]) -> None:
        self._waiting = {}
        for i, m in enumerate(batch):
            exchange, key = self.route(m) if self.route else (self.exchange, m.topic)
            headers = dict(m.headers)
            if m.key is not None:
                headers["sluice-key"] = m.key
            props = self._pika.BasicProperties(
                message_id=str(m.id),
                type=m.type,
                content_type="application/json",
                delivery_mode=2,
                headers=headers,
                timestamp=int(m.created_at.timestamp()) if m.created_at else None,
            )
            self._chan._impl.basic_publish(exchange, key, m.payload, props, self.mandatory)
            self._tag += 1
            self._waiting[self._tag] = i

    def _await_confirms(self) -> None:
        if not self._pump(lambda: not self._waiting):
            self._fail_unresolved(PublishError(f"no confirm within {self.timeout}s"))
            self._drop()  # tags of late confirms would be misattributed on this channel

    def _pump(self, done: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + self.timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._conn.process_data_events(time_limit=min(left, 0.05))
        return True

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok: Outcome = True
        if method.NAME == "Basic.Nack":
            ok = PublishError("broker refused the message (nack)")
        tags = (
            [t for t in self._waiting if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            index = self._waiting.pop(tag, None)
            if index is not None:
                self._outcomes[index] = ok
        if not self._waiting:
            self._wake()

    def _wake(self) -> None:
        # process_data_events(time_limit) returns early only for events the blocking layer
        # queued itself; confirms handled on the underlying channel are not among them. A
        # no-op "thread-safe callback" is, so the wait ends as soon as the last confirm lands.
        self._conn.add_callback_threadsafe(_noop)

    def _on_return(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        self._returned.add(str(properties.message_id))

    def _fail_unresolved(self, err: Exception) -> None:
        for i, outcome in enumerate(self._outcomes):
            if outcome is None:
                self._outcomes[i] = err
        self._waiting = {}

    def _drop(self) -> None:
        conn, self._conn, self._chan = self._conn, None, None
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                log.debug("closing RabbitMQ connection failed", exc_info=True)

    def __repr__(self) -> str:
        return f"RabbitMQ(exchange={self.exchange!r})"


def _noop() -> None:
    pass
