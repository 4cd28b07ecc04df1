"""The after-commit sender: publishes unordered messages right after their transaction commits.

``put`` inserts each unordered row already leased to a one-off owner (``ac:<token>``), so the
relay leaves it alone while this thread handles it. Once the commit is seen, the thread re-reads
the rows by (id, owner) — a row rolled back with a savepoint is simply not found — publishes them
in one batch and records the outcome. If the process dies first, the lease expires and the relay
sends the row: the relay, not this thread, owns delivery.

For SQLite connections without a commit event, rows are submitted unconfirmed and this thread
polls for them until they appear or their lease runs out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

from sluice.outbox.publisher import Publisher
from sluice.outbox.relay import Policy, publish_safely, record
from sluice.outbox.store import OutboxStore

log = logging.getLogger("sluice.outbox")

BATCH = 500
BREAKER = 1.0  # seconds the fast path hands rows straight to the relay after a total failure
QUEUE_LIMIT = 100_000  # beyond this, rows wait for the relay instead of growing memory


@dataclass(frozen=True)
class _Item:
    id: int
    owner: str
    confirmed: bool
    at: float


class AfterCommitSender:
    def __init__(self, store: OutboxStore, publisher: Publisher, policy: Policy) -> None:
        self.store = store
        self.publisher = publisher
        self.policy = policy
        self._q: queue.Queue[_Item | None] = queue.Queue(QUEUE_LIMIT)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._broken_until = 0.0

    def submit(self, id_: int, owner: str, *, confirmed: bool) -> None:
        self._start()
        # When full, the row stays leased and the relay sends it once the lease expires.
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(_Item(id_, owner, confirmed, time.monotonic()))

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread = self._thread
            if thread is None or self._pid != os.getpid():
                return
            self._q.put(None)
            self._thread = None
        thread.join(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._q = queue.Queue(QUEUE_LIMIT)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="sluice-outbox-sender")
            self._thread.daemon = True
            self._thread.start()

    def _run(self) -> None:
        q = self._q
        waiting: list[_Item] = []  # unconfirmed SQLite rows, polled until they appear
        poll = 0.002
        while True:
            items, stop = self._take(q, timeout=poll if waiting else None)
            batch = waiting + items
            if batch:
                try:
                    waiting = self._handle(batch)
                except Exception:
                    log.exception("outbox %s after-commit send failed", self.store.table)
                    waiting = []  # rows keep their lease; the relay takes them later
                poll = 0.002 if items else min(poll * 2, 0.1)
            if stop:
                return

    def _take(
        self, q: queue.Queue[_Item | None], timeout: float | None
    ) -> tuple[list[_Item], bool]:
        items: list[_Item] = []
        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            return items, False
        while True:
            if item is None:
                return items, True
            items.append(item)
            if len(items) >= BATCH:
                return items, False
            try:
                item = q.get_nowait()
            except queue.Empty:
                return items, False

    def _handle(self, batch: list[_Item]) -> list[_Item]:
        found = self.store.fetch([i.id for i in batch], [i.owner for i in batch])
        by_id = {i.id: i for i in batch}
        now = time.monotonic()
        seen = {m.id for m in found}
        # Unconfirmed rows not yet visible may still commit; stop looking once their lease is
        # over, when the relay is free to take them anyway.
        waiting = [
            i for i in batch
            if not i.confirmed and i.id not in seen and now - i.at < self.policy.lease
        ]  # fmt: skip
        if not found:
            return waiting
        owners = [by_id[m.id].owner for m in found]
        if now < self._broken_until:
            self.store.release([m.id for m in found], owners, unbump=0)
            return waiting
        outcomes = publish_safely(self.publisher, found)
        if all(o is not True for o in outcomes):
            self._broken_until = time.monotonic() + BREAKER
        record(self.store, self.policy, found, owners, outcomes, bump=1)
        return waiting
