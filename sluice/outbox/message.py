"""Leaf value types of the outbox: what a publisher receives and what a relay pass reports."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, kw_only=True)
class OutboxMessage:
    """One stored message, as handed to a publisher.

    ``id`` is the outbox row id: unique, never reused, and carried to the broker (AMQP
    ``message_id``, ``Nats-Msg-Id``, an ``id`` field in a Redis stream entry) so consumers and
    brokers can de-duplicate. ``payload`` is the JSON text encoded as UTF-8.
    """

    id: int
    topic: str
    key: str | None
    type: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    ordered: bool = False
    attempts: int = 0
    created_at: datetime | None = None

    def json(self) -> Any:
        """The payload decoded from JSON."""
        return json.loads(self.payload)


@dataclass(frozen=True, kw_only=True)
class RelayStats:
    """What one relay pass did. ``more`` is true when it stopped at ``batch`` with work left."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    parked: int = 0
    released: int = 0
    deleted: int = 0
    seconds: float = 0.0
    more: bool = False

    @property
    def did_work(self) -> bool:
        return bool(self.claimed or self.deleted)
