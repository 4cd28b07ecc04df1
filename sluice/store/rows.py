"""Leaf data types passed to and from the store (no imports from the rest of sluice)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def dumps(value: Any) -> str:
    """Compact, canonical JSON: the only serialisation sluice uses for user data."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True, kw_only=True)
class TaskPlan:
    """A task to create. ``owner`` set means the creating node claims it in the same transaction."""

    kind: str  # job | broadcast | shard | split | load | exec
    payload: dict[str, Any] = field(default_factory=dict)
    target_node: str | None = None
    grp: str | None = None
    zone: str | None = None
    max_attempts: int = 1
    delay: float = 0.0
    owner: str | None = None
    parent_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class Firing:
    """One scheduled instant to record: fired (``missed=False``) or recorded as missed."""

    scheduled_at: float
    trigger: str = "schedule"  # schedule | misfire | catch_up | manual | retry
    missed: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class ClaimedTask:
    id: int
    run_id: int
    job: str
    kind: str
    token: int
    attempt: int
    max_attempts: int
    payload: dict[str, Any]
    progress: Any
    parent_id: int | None = None
    grp: str | None = None
    scheduled_at: float = 0.0
    cancel: bool = False
    claims: int = 1  # times claimed, hand-backs included: above 1, someone held it before

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClaimedTask:
        return cls(
            id=row["id"], run_id=row["run_id"], job=row["job"], kind=row["kind"],
            token=row["token"], attempt=row["attempt"], max_attempts=row["max_attempts"],
            payload=json.loads(row["payload"]), progress=json.loads(row.get("progress") or "null"),
            parent_id=row.get("parent_id"), grp=row.get("grp"),
            scheduled_at=row.get("scheduled_at") or 0.0, claims=row.get("claims") or 1,
        )


@dataclass(frozen=True, kw_only=True)
class Counts:
    """Increments to a run's counters."""

    shards: int = 0
    loaded: int = 0
    executed: int = 0
    failed: int = 0
    parked: int = 0
    reexecuted: int = 0
    stale: int = 0

    def any(self) -> bool:
        return any(vars(self).values())


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What ending a task did: ``stale`` when its fencing token was no longer current."""

    stale: bool = False
    dead: bool = False
    retried: bool = False
    run_finished: str | None = None  # the run's final state when this task closed it
