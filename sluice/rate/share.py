"""Each node's share of a job's cluster-wide rate, from live membership.

A node's rate is ``qps × its weight / total weight of the live nodes serving the job``. The
weight defaults to the node's concurrency (``--weight`` changes it). When a pipeline divides
its shards among groups, each group works its own shards at ``qps / groups``, shared among the
nodes that take that group's work: its own nodes, the nodes with no group (they serve every
group), and, for a group with no live node of its own and ``group_takeover``, every node.

Pure functions of the membership a node read at its last heartbeat, so every node computes the
same division from the same rows, and a test needs no cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Member:
    """What the rate division needs of one node row."""

    id: str
    weight: float
    group: str | None = None
    serves: frozenset[str] = frozenset()
    age: float = 0.0  # seconds since its last heartbeat, on the database clock


def members_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Member]:
    """Members from ``Store.node_list_live`` rows; the rate fields live in ``info["rate"]``."""
    out = []
    for row in rows:
        rate = (row.get("info") or {}).get("rate") or {}
        out.append(Member(id=row["id"], weight=float(rate.get("weight") or row["concurrency"]),
                          group=row.get("grp"), serves=frozenset(rate.get("serves") or ()),
                          age=float(row.get("age") or 0.0)))
    return out


def serving(job: str, members: Iterable[Member], fresh: float,
            me: Member | None = None) -> list[Member]:
    """The members that serve ``job`` and beat within ``fresh`` seconds (``me`` always)."""
    out = {m.id: m for m in members if job in m.serves and m.age <= fresh}
    if me is not None:
        out[me.id] = me
    return sorted(out.values(), key=lambda m: m.id)


def shares(qps: float, members: list[Member], groups: list[str] | None = None,
           takeover: bool = True) -> dict[str, float]:
    """{node id: permits per second} for the given live members of one job.

    Without groups: ``qps × weight / total weight``. With groups, each group's ``qps / G`` is
    divided among the nodes taking its work (see the module docstring); a group nobody may take
    gets no rate, because its shards wait anyway.
    """
    rates = {m.id: 0.0 for m in members}
    if not members:
        return rates
    if not groups:
        total = sum(m.weight for m in members)
        return {m.id: qps * m.weight / total for m in members}
    per_group = qps / len(groups)
    own = {m.group for m in members}
    for g in groups:
        if g in own:
            takers = [m for m in members if m.group in (g, None)]
        elif takeover:
            takers = list(members)
        else:
            takers = [m for m in members if m.group is None]
        total = sum(m.weight for m in takers)
        for m in takers:
            rates[m.id] += per_group * m.weight / total
    return rates
