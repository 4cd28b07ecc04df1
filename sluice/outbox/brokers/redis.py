"""Redis Streams publisher: one ``XADD`` per message, pipelined, via redis-py.

The XADD reply (the entry id) is the acknowledgement. Redis before 8.6 has no producer-side
de-duplication, so consumers de-duplicate on the entry's ``id`` field (the outbox id).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from sluice.errors import ConfigError, PublishError
from sluice.outbox.message import OutboxMessage
from sluice.outbox.publisher import Outcome


class RedisStreams:
    """Append each message to the stream ``<stream_prefix><topic>``.

    ``url`` ("redis://127.0.0.1:6379/0"). Entry fields: ``id`` (outbox id), ``type``, ``key``
    (empty when none), ``payload`` (JSON) and ``headers`` (a JSON object). ``maxlen``: trim each
    stream to about this many entries (``XADD MAXLEN ~``); unbounded by default. ``timeout``
    (5 s): socket time-out for a batch.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        stream_prefix: str = "",
        *,
        maxlen: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "RedisStreams publisher needs redis: pip install 'sluice[redis]'"
            ) from exc
        self.url = url
        self.stream_prefix = stream_prefix
        self.maxlen = maxlen
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._lock = threading.Lock()

    def publish(self, batch: Sequence[OutboxMessage]) -> Sequence[Outcome]:
        if not batch:
            return []
        with self._lock:
            pipe = self._client.pipeline(transaction=False)
            for m in batch:
                fields = {
                    "id": str(m.id),
                    "type": m.type,
                    "key": m.key or "",
                    "payload": m.payload,
                    "headers": json.dumps(dict(m.headers)),
                }
                pipe.xadd(
                    self.stream_prefix + m.topic, fields, maxlen=self.maxlen, approximate=True
                )
            try:
                replies = pipe.execute(raise_on_error=False)
            except Exception as exc:
                # The connection is dropped by redis-py and re-made by the next command.
                return [PublishError(f"Redis {self.url}: {exc!r}")] * len(batch)
        return [PublishError(repr(r)) if isinstance(r, Exception) else True for r in replies]

    def close(self) -> None:
        with self._lock:
            self._client.close()

    def __repr__(self) -> str:
        return f"RedisStreams(stream_prefix={self.stream_prefix!r})"
