"""Transactional outbox: messages written in the business transaction, delivered to a broker.

``Outbox.put`` stores a message inside the caller's transaction; unordered messages are sent right
after commit, and a relay (``Outbox.relay``, registered by ``app.add_outbox_relay``) sends
whatever that missed, retries with backoff, parks what keeps failing and sends ordered messages
one at a time per key. See docs/outbox.md.
"""

from sluice.outbox.hooks import after_commit
from sluice.outbox.message import OutboxMessage, RelayStats
from sluice.outbox.outbox import Outbox
from sluice.outbox.publisher import Outcome, Publisher

__all__ = ["Outbox", "OutboxMessage", "Outcome", "Publisher", "RelayStats", "after_commit"]
