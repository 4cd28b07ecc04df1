"""Turn a firing into tasks: one node, every node, or shard items spread over the live nodes.

Shard items go to nodes by rendezvous (highest random weight) hashing: each item goes to the
node with the highest hash of (item, node). When a node joins or leaves, only the items whose
winner changed move, about 1/N of them, and every node computes the same answer.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sluice.job import JobSpec
from sluice.store.rows import TaskPlan


def _weight(item: str, node: str) -> int:
    digest = hashlib.blake2b(f"{item}\x00{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(items: list[str] | tuple[str, ...], nodes: list[str]) -> dict[str, list[str]]:
    """{node: [items]} by rendezvous hashing; nodes without items are left out."""
    out: dict[str, list[str]] = {}
    if not nodes:
        return out
    for item in items:
        winner = max(nodes, key=lambda n: _weight(item, n))
        out.setdefault(winner, []).append(item)
    return out


def plan_tasks(job: JobSpec, members: list[dict[str, Any]], me: str,
               claim_self: bool) -> list[TaskPlan]:
    """Tasks for one firing of ``job``; with ``claim_self`` this node takes its own task now."""
    owner = me if claim_self else None
    if job.kind == "pipeline":
        return [TaskPlan(kind="split", max_attempts=job.max_attempts, owner=owner)]
    if job.routing == "single":
        return [TaskPlan(kind="job", max_attempts=job.max_attempts, owner=owner)]
    ids = sorted({m["id"] for m in members} | {me})
    if job.routing == "broadcast":
        return [TaskPlan(kind="broadcast", target_node=n, max_attempts=job.max_attempts,
                         owner=owner if n == me else None) for n in ids]
    return [
        TaskPlan(kind="shard", target_node=n, payload={"shards": items},
                 max_attempts=job.max_attempts, owner=owner if n == me else None)
        for n, items in sorted(assign(job.shards, ids).items())
    ]
