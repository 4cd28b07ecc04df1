"""One relay pass: claim due messages, publish them, record each outcome.

Unordered messages go out as one batch. Ordered messages go out in rounds: each round holds at
most one message per key, and a key's next message joins the next round only once the broker
acknowledged the previous one. A failure stops its key for this pass; the rest of that key's
claimed run is handed back untouched.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.alerts import Alert, AlertSink, dispatch
from sluice.outbox.message import OutboxMessage, RelayStats
from sluice.outbox.publisher import Outcome, Publisher
from sluice.outbox.store import OutboxStore

log = logging.getLogger("sluice.outbox")

CLEANUP_EVERY = 60.0  # seconds between retention sweeps of one process
CLEANUP_LIMIT = 5000  # rows deleted per sweep, to keep the transaction short


@dataclass(kw_only=True)
class Policy:
    max_attempts: int
    backoff: tuple[float, float]
    retention: float
    lease: float
    sinks: list[AlertSink] = field(default_factory=list)

    def delay(self, attempts: int) -> float:
        """Capped exponential backoff with jitter, so failed rows do not return in lockstep."""
        base, cap = self.backoff
        return min(cap, base * 2 ** max(0, attempts - 1)) * random.uniform(0.5, 1.0)


def publish_safely(publisher: Publisher, batch: Sequence[OutboxMessage]) -> list[Outcome]:
    """Publish, turning a raising or miscounting publisher into per-message failures."""
    try:
        outcomes = list(publisher.publish(batch))
    except Exception as exc:
        return [exc] * len(batch)
    if len(outcomes) != len(batch):
        err = RuntimeError(f"publisher returned {len(outcomes)} outcomes for {len(batch)} messages")
        return [err] * len(batch)
    return [o if o is True or isinstance(o, Exception) else RuntimeError(repr(o)) for o in outcomes]


def record(
    store: OutboxStore,
    policy: Policy,
    msgs: Sequence[OutboxMessage],
    owners: Sequence[str],
    outcomes: Sequence[Outcome],
    *,
    bump: int,
) -> tuple[int, int, int]:
    """Store outcomes; ``bump`` is 1 when the attempt was not counted at claim time."""
    sent = [(m.id, o) for m, o, out in zip(msgs, owners, outcomes, strict=True) if out is True]
    failed = [
        (m, o, out) for m, o, out in zip(msgs, owners, outcomes, strict=True) if out is not True
    ]
    store.mark_sent([i for i, _ in sent], [o for _, o in sent], bump=bump)
    parked = store.mark_failed(
        [m.id for m, _, _ in failed],
        [o for _, o, _ in failed],
        [policy.delay(m.attempts + bump) for m, _, _ in failed],
        [f"{type(e).__name__}: {e}"[:2000] for _, _, e in failed],
        bump=bump,
        max_attempts=policy.max_attempts,
    )
    if parked:
        alert_parked(store.table, policy, parked)
    return len(sent), len(failed), len(parked)


def alert_parked(table: str, policy: Policy, parked: list[dict[str, Any]]) -> None:
    """One alert per batch of parked messages, not one per message."""
    ids = [int(p["id"]) for p in parked]
    keys = sorted({p["aggregateid"] for p in parked if p["aggregateid"] is not None})
    message = (
        f"{len(ids)} outbox message(s) parked after {policy.max_attempts} attempts "
        f"(ids {', '.join(map(str, ids[:10]))}{'…' if len(ids) > 10 else ''}); "
        "fix the cause, then run `sluice outbox retry`"
    )
    details = {"ids": ids, "topics": sorted({p["aggregatetype"] for p in parked}), "keys": keys}
    dispatch(
        policy.sinks, Alert(kind="message_parked", subject=table, message=message, details=details)
    )


class Relay:
    def __init__(self, store: OutboxStore, publisher: Publisher, policy: Policy) -> None:
        self.store = store
        self.publisher = publisher
        self.policy = policy
        self._last_cleanup = 0.0

    def run_once(self, *, batch: int, owner: str) -> RelayStats:
        started = time.monotonic()
        # A fresh owner per pass: a later pass of the same node must not complete rows that an
        # earlier, timed-out pass claimed.
        me = f"{owner}/{uuid.uuid4().hex[:8]}"
        totals = [0, 0, 0, 0, 0]  # claimed, sent, failed, parked, released
        unordered = self.store.claim_unordered(me, batch, self.policy.lease)
        if unordered:
            outcomes = publish_safely(self.publisher, unordered)
            counts = record(
                self.store, self.policy, unordered, [me] * len(unordered), outcomes, bump=0
            )
            totals = _add(totals, [len(unordered), *counts, 0])
        ordered = self.store.claim_ordered(me, batch, self.policy.lease)
        if ordered:
            totals = _add(totals, [len(ordered), *self._send_ordered(ordered, me, started)])
        deleted = self._cleanup()
        stats = RelayStats(
            claimed=totals[0], sent=totals[1], failed=totals[2], parked=totals[3],
            released=totals[4], deleted=deleted, seconds=time.monotonic() - started,
            more=len(unordered) >= batch or len(ordered) >= batch,
        )  # fmt: skip
        if stats.did_work:
            log.info(
                "outbox %s relay %s: claimed=%d sent=%d failed=%d parked=%d released=%d "
                "deleted=%d in %.3fs", self.store.table, owner, stats.claimed, stats.sent,
                stats.failed, stats.parked, stats.released, stats.deleted, stats.seconds,
            )  # fmt: skip
        return stats

    def _send_ordered(self, claimed: list[OutboxMessage], me: str, started: float) -> list[int]:
        runs: dict[str | None, list[OutboxMessage]] = {}
        for m in claimed:  # claimed is sorted by id, so each run is in commit order
            runs.setdefault(m.key, []).append(m)
        sent = failed = parked = 0
        # Stop starting rounds well before the lease runs out, so no other relay can take a
        # key over while this one is still publishing it.
        deadline = started + self.policy.lease / 2
        while runs and time.monotonic() < deadline:
            heads = [run[0] for run in runs.values()]
            outcomes = publish_safely(self.publisher, heads)
            s, f, p = record(self.store, self.policy, heads, [me] * len(heads), outcomes, bump=0)
            sent, failed, parked = sent + s, failed + f, parked + p
            for m, out in zip(heads, outcomes, strict=True):
                if out is True:
                    runs[m.key].pop(0)
                else:
                    self._release(runs[m.key][1:], me)
                    runs[m.key] = []
            runs = {k: run for k, run in runs.items() if run}
        rest = [m for run in runs.values() for m in run]
        self._release(rest, me)
        released = len(claimed) - sent - failed
        return [sent, failed, parked, released]

    def _release(self, msgs: Sequence[OutboxMessage], me: str) -> None:
        # Not attempted: give back the attempt counted at claim time.
        self.store.release([m.id for m in msgs], [me] * len(msgs), unbump=1)

    def _cleanup(self) -> int:
        now = time.monotonic()
        if now - self._last_cleanup < CLEANUP_EVERY:
            return 0
        self._last_cleanup = now
        return self.store.delete_sent(self.policy.retention, CLEANUP_LIMIT)


def _add(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]
