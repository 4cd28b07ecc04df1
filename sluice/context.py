"""The context a handler receives: which run, which attempt, which node, and how to stop."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.errors import Cancelled


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    id: str
    group: str | None
    zone: str | None
    concurrency: int


@dataclass(kw_only=True)
class Context:
    """Passed to every handler.

    ``scheduled_at`` is the instant the run was scheduled for (UTC), the same on every node and
    every retry: together with ``job`` it is the run's idempotency key (``idempotency_key``).
    ``fencing_token`` increases on every claim of this unit of work (for a ``TableSource``
    record: the token its row carries, which a takeover raises); pass it to a downstream that
    can reject stale writers. ``state`` is the job's JSON state, saved when the handler
    returns without error. ``cursor``, in a pipeline's ``@load``: what the previous load of this
    shard in this run left there (None at first); set it, e.g. to the last key read, to go on
    from there next time (JSON-serialisable). ``acquire()`` / ``await aacquire()`` wait for
    the job's rate (``qps=``) before each unit of work.
    """

    job: str
    run_id: int
    scheduled_at: datetime
    attempt: int
    node: NodeInfo
    fencing_token: int
    shards: list[str] = field(default_factory=list)
    task_id: int = 0  # the unit of work (task) this call belongs to; stable across its retries
    state: dict[str, Any] = field(default_factory=dict)
    cursor: Any = None  # a pipeline load's bookmark in its shard (see docs/pipelines.md)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _rate: Any = field(default=None, repr=False)  # the node's RateGate, when it has one
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("sluice.job"),
                                repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.job}@{self.scheduled_at.isoformat()}"

    @property
    def run(self) -> int:
        return self.run_id

    @property
    def cancelled(self) -> bool:
        """True once the run was asked to stop (replaced, timed out, lease lost, shutdown)."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise ``sluice.Cancelled`` if the run was asked to stop; call it between steps."""
        if self._cancel.is_set():
            raise Cancelled(f"run {self.run_id} of {self.job!r} was cancelled")

    def acquire(self, permits: int = 1) -> float:
        """Block until ``permits`` units of work may start at the job's rate (its ``qps=``
        share on this node); returns the seconds waited, 0 at once for a job without a rate.
        Pipelines need not call it: their runtime takes one permit per record."""
        return 0.0 if self._rate is None else float(self._rate.acquire(self.job, permits))

    async def aacquire(self, permits: int = 1) -> float:
        """``acquire`` for async handlers."""
        if self._rate is None:
            return 0.0
        return float(await self._rate.aacquire(self.job, permits))

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on cancellation; True if cancelled."""
        return self._cancel.wait(seconds)


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
