"""NATS JetStream publisher, via nats-py.

nats-py is asyncio-only and the relay is synchronous, so the publisher owns a private event loop
on a background thread; ``publish`` submits a coroutine to it and waits. A batch is published
concurrently (one PubAck each), which JetStream stores in arrival order on the one connection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from sluice.errors import ConfigError, PublishError
from sluice.outbox.message import OutboxMessage
from sluice.outbox.publisher import Outcome

log = logging.getLogger("sluice.outbox")


class NATS:
    """Publish each message to the subject named by its topic, on JetStream.

    ``url`` ("nats://127.0.0.1:4222"). ``stream``: when given, the server checks that the
    subject belongs to it (``Nats-Expected-Stream``); with ``subjects`` as well, the stream is
    created if missing. Each message carries ``Nats-Msg-Id: <msg_id_prefix><outbox id>``, so the
    stream drops a re-send inside its duplicate window (2 min by default), plus ``Sluice-Key``
    and ``Sluice-Type`` headers. ``timeout`` (5 s): how long a batch waits for its PubAcks.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        stream: str | None = None,
        *,
        subjects: Sequence[str] | None = None,
        msg_id_prefix: str = "",
        timeout: float = 5.0,
    ) -> None:
        try:
            import nats
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("NATS publisher needs nats-py: pip install 'sluice[nats]'") from exc
        if subjects and not stream:
            raise ConfigError("NATS publisher: subjects= needs stream= to create the stream")
        self._nats = nats
        self.url = url
        self.stream = stream
        self.subjects = list(subjects or [])
        self.msg_id_prefix = msg_id_prefix
        self.timeout = timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Any = None

    def publish(self, batch: Sequence[OutboxMessage]) -> Sequence[Outcome]:
        if not batch:
            return []
        with self._lock:
            loop = self._ensure_loop()
            future = asyncio.run_coroutine_threadsafe(self._publish(batch), loop)
            try:
                return future.result(self.timeout * 3)
            except Exception as exc:
                future.cancel()
                err = PublishError(f"NATS {self.url}: {exc!r}")
                return [err] * len(batch)

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(self._disconnect(), loop).result(self.timeout)
            except Exception:
                log.debug("closing NATS connection failed", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
            loop.close()
            self._loop = self._thread = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="sluice-nats", daemon=True)
            thread.start()
            self._loop, self._thread, self._nc = loop, thread, None
        return self._loop

    async def _publish(self, batch: Sequence[OutboxMessage]) -> list[Outcome]:
        try:
            js = await self._jetstream()
        except Exception as exc:
            await self._disconnect()
            return [PublishError(f"NATS connect {self.url}: {exc!r}")] * len(batch)
        results = await asyncio.gather(
            *(self._publish_one(js, m) for m in batch), return_exceptions=True
        )
        return [r if isinstance(r, Exception) else True for r in results]

    async def _publish_one(self, js: Any, m: OutboxMessage) -> None:
        headers = {**m.headers, "Nats-Msg-Id": f"{self.msg_id_prefix}{m.id}", "Sluice-Type": m.type}
        if m.key is not None:
            headers["Sluice-Key"] = m.key
        await js.publish(
            m.topic, m.payload, timeout=self.timeout, stream=self.stream, headers=headers
        )

    async def _jetstream(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            # With unlimited reconnects, connect() itself would retry forever: bound it here.
            connect = self._nats.connect(
                self.url,
                connect_timeout=self.timeout,
                # Keep reconnecting in the background after a server restart; a publish made
                # meanwhile times out and the relay retries it.
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=self._on_error,
                disconnected_cb=self._on_event,
                reconnected_cb=self._on_event,
            )
            self._nc = await asyncio.wait_for(connect, self.timeout)
            if self.stream and self.subjects:
                await self._ensure_stream(self._nc.jetstream(timeout=self.timeout))
        return self._nc.jetstream(timeout=self.timeout)

    async def _ensure_stream(self, js: Any) -> None:
        try:
            await js.stream_info(self.stream)
        except self._nats.js.errors.NotFoundError:
            await js.add_stream(name=self.stream, subjects=self.subjects)

    async def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception:
                log.debug("closing NATS connection failed", exc_info=True)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS %s: %r", self.url, exc)

    async def _on_event(self) -> None:
        log.debug("NATS %s connection state changed", self.url)

    def __repr__(self) -> str:
        return f"NATS({self.url!r}, stream={self.stream!r})"
