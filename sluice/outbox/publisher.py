"""The publisher port: how the outbox hands messages to a broker.

A publisher is synchronous because the relay is; adapters for asyncio-only clients run a private
event loop in a background thread (see ``sluice.outbox.nats``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from sluice.outbox.message import OutboxMessage

#: One outcome per message: ``True`` once the broker acknowledged it, else the exception that
#: explains why not (the relay stores its text as ``last_error`` and retries later).
Outcome = bool | Exception


@runtime_checkable
class Publisher(Protocol):
    def publish(self, batch: Sequence[OutboxMessage]) -> Sequence[Outcome]:
        """Send ``batch`` and return one outcome per message, in the same order.

        Returns only after the broker acknowledged (or refused) each message. Never raises for a
        per-message or connection error: those become ``Exception`` outcomes, and the next call
        reconnects. Must be safe to call from several threads (the relay and the after-commit
        sender share one publisher).
        """
        ...

    def close(self) -> None:
        """Release connections and threads. The publisher may be used again afterwards."""
        ...
