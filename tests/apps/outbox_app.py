"""An app with an outbox relayed by sluice workers; messages land in $TEST_EVENTS."""

from __future__ import annotations

import os

from sqlalchemy import create_engine

import sluice
from tests.helpers import record

EVENTS = os.environ.get("TEST_EVENTS", "/dev/null")
FAIL_FLAG = os.environ.get("TEST_FAIL_FLAG", "/nonexistent")

app = sluice.App(heartbeat=0.3, node_ttl=1.0, lease_ttl=1.0, drain_timeout=2.0)


def deliver(message: sluice.publishers.OutboxMessage) -> None:
    if os.path.exists(FAIL_FLAG):
        raise ConnectionError("broker down")
    record(EVENTS, id=message.id, key=message.key, payload=message.json())


outbox = sluice.Outbox(create_engine(os.environ.get("TEST_BUSINESS_URL", "sqlite://")),
                       publisher=sluice.publishers.Callable(deliver), backoff=(0.05, 0.2))
app.add_outbox_relay(outbox, every=0.2)
