"""A publisher that calls a function per message: for brokers sluice has no adapter for."""

from __future__ import annotations

import threading
from collections.abc import Callable as CallableType
from collections.abc import Sequence

from sluice.errors import ConfigError
from sluice.outbox.message import OutboxMessage
from sluice.outbox.publisher import Outcome


class Callable:
    """Publish by calling ``fn(message)``; it must return only once the broker acknowledged.

    A raised exception is that message's failure (retried by the relay). ``fn`` is never called
    from two threads at once.
    """

    def __init__(self, fn: CallableType[[OutboxMessage], object]) -> None:
        if not callable(fn):
            raise ConfigError(f"Callable publisher needs a function, got {fn!r}")
        self.fn = fn
        self._lock = threading.Lock()

    def publish(self, batch: Sequence[OutboxMessage]) -> Sequence[Outcome]:
        out: list[Outcome] = []
        with self._lock:
            for message in batch:
                try:
                    self.fn(message)
                    out.append(True)
                except Exception as exc:
                    out.append(exc)
        return out

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"Callable({self.fn!r})"
