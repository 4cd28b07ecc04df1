"""Which instants to fire now, which to record as missed, and the next instant to wait for.

A firing is on time while it is discovered within ``misfire_grace`` of its instant; older
ones were missed (no node was up, or all were stalled) and follow the job's misfire policy.
"""

from __future__ import annotations

from sluice.schedule.triggers import Schedule
from sluice.store.rows import Firing

# Counting missed instants stops here; a summary row says "at least" this many.
MISSED_COUNT_CAP = 10_000


def plan_firings(schedule: Schedule, due: float, now: float, *, misfire: str,
                 catch_up_limit: int, misfire_grace: float) -> tuple[list[Firing], float | None]:
    """Firings for a job whose next instant ``due`` has come, at database time ``now``."""
    on_time: list[float] = []
    missed: list[float] = []
    instant: float | None = due
    count = 0
    while instant is not None and instant <= now and count < MISSED_COUNT_CAP:
        (on_time if instant >= now - misfire_grace else missed).append(instant)
        instant = schedule.next_after(instant)
        count += 1
    if count >= MISSED_COUNT_CAP and instant is not None and instant <= now:
        instant = schedule.next_after(now)  # too far behind to walk: jump to the future
    firings = [Firing(scheduled_at=t) for t in on_time]
    if missed:
        firings = _missed(missed, bool(on_time), misfire, catch_up_limit) + firings
    if schedule.finish_delay is not None:
        # Fixed delay: the run's end sets the next instant; with nothing fired, wait from now.
        fired = any(not f.missed for f in firings)
        instant = None if fired else now + schedule.finish_delay
    return firings, instant


def _missed(missed: list[float], covered: bool, misfire: str, limit: int) -> list[Firing]:
    """Fire what the policy asks for and summarise the rest in one ``missed`` row."""
    if misfire == "catch_up":
        fire, rest = missed[-limit:], missed[:-limit]
        fired = [Firing(scheduled_at=t, trigger="catch_up") for t in fire]
    elif misfire == "fire_once" and not covered:
        fire, rest = missed[-1:], missed[:-1]
        fired = [Firing(scheduled_at=fire[0], trigger="misfire")]
    else:  # skip, or fire_once already covered by an on-time firing
        fired, rest = [], missed
    if not rest:
        return fired
    summary = Firing(scheduled_at=rest[0], missed=True, stats={
        "missed": len(rest), "first": rest[0], "last": rest[-1],
        "capped": len(missed) >= MISSED_COUNT_CAP,
    })
    return [summary, *fired]
