"""Schedules as the store sees them: instants in epoch seconds, computed the same on every node.

Every node must compute the same next instant from the same stored one, or two nodes would
disagree about which instant is due; so each schedule is a pure function of the previous
instant (never of a node's clock), except for the first instant after (re)declaration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sluice.errors import ConfigError

if TYPE_CHECKING:
    from sluice.schedule.cron import Cron


def seconds(value: Any, field: str, where: str, *, allow_zero: bool = False) -> float:
    """A duration given as seconds or ``timedelta``, validated; raises ConfigError naming it."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: {field} must be a number of seconds or a timedelta, "
                          f"got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where}: {field} must be {bound} seconds, got {value!r}")
    return float(value)


class Schedule:
    kind: str

    def first(self, now: float) -> float:
        """The first instant for a job declared (or re-declared) at ``now``."""
        raise NotImplementedError

    def next_after(self, instant: float) -> float | None:
        """The instant after ``instant``; None when the schedule never fires again."""
        raise NotImplementedError

    @property
    def finish_delay(self) -> float | None:
        """Seconds from a run's end to the next firing (fixed delay only)."""
        return None

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class CronSchedule(Schedule):
    cron: Cron
    initial_delay: float = 0.0
    kind = "cron"

    def first(self, now: float) -> float:
        nxt = self.next_after(now + self.initial_delay)
        return nxt if nxt is not None else math.inf

    def next_after(self, instant: float) -> float | None:
        nxt = self.cron.next_after(datetime.fromtimestamp(instant, UTC))
        return nxt.timestamp() if nxt is not None else None

    def spec(self) -> dict[str, Any]:
        return {"cron": self.cron.expression, "timezone": str(self.cron.timezone),
                "initial_delay": self.initial_delay}

    def describe(self) -> str:
        return f"cron {self.cron.expression!r} {self.cron.timezone}"


@dataclass(frozen=True)
class FixedRate(Schedule):
    every: float
    initial_delay: float = 0.0
    kind = "fixed_rate"

    def first(self, now: float) -> float:
        return now + self.initial_delay

    def next_after(self, instant: float) -> float | None:
        return instant + self.every

    def spec(self) -> dict[str, Any]:
        return {"fixed_rate": self.every, "initial_delay": self.initial_delay}

    def describe(self) -> str:
        return f"every {self.every:g}s"


@dataclass(frozen=True)
class FixedDelay(Schedule):
    delay: float
    initial_delay: float = 0.0
    kind = "fixed_delay"

    def first(self, now: float) -> float:
        return now + self.initial_delay

    def next_after(self, instant: float) -> float | None:
        return None  # the next instant is set when the run finishes: end + delay

    @property
    def finish_delay(self) -> float | None:
        return self.delay

    def spec(self) -> dict[str, Any]:
        return {"fixed_delay": self.delay, "initial_delay": self.initial_delay}

    def describe(self) -> str:
        return f"{self.delay:g}s after each run"


def build(where: str, *, cron: str | None = None, fixed_rate: Any = None,
          fixed_delay: Any = None, initial_delay: Any = None,
          timezone: str | None = None) -> Schedule | None:
    """The schedule for one declaration; None when the job only runs when triggered."""
    given = [k for k, v in (("cron", cron), ("fixed_rate", fixed_rate),
                            ("fixed_delay", fixed_delay)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"{where}: give one schedule kind, got {' and '.join(given)}; "
                          "use cron=, fixed_rate= or fixed_delay=")
    delay = 0.0 if initial_delay is None else seconds(initial_delay, "initial_delay", where,
                                                      allow_zero=True)
    if timezone is not None and cron is None:
        raise ConfigError(f"{where}: timezone= only applies to cron= schedules")
    if cron is not None:
        if not isinstance(cron, str):
            raise ConfigError(f"{where}: cron must be a string such as '0 */5 * * * ?', "
                              f"got {cron!r}")
        from sluice.schedule.cron import Cron

        try:
            parsed = Cron.parse(cron, timezone or "UTC")
        except ConfigError as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        return CronSchedule(parsed, delay)
    if fixed_rate is not None:
        return FixedRate(seconds(fixed_rate, "fixed_rate", where), delay)
    if fixed_delay is not None:
        return FixedDelay(seconds(fixed_delay, "fixed_delay", where), delay)
    if initial_delay is not None:
        raise ConfigError(f"{where}: initial_delay= needs a schedule (cron=, fixed_rate= or "
                          "fixed_delay=)")
    return None


def from_spec(where: str, spec: dict[str, Any]) -> Schedule | None:
    """Rebuild a schedule from its stored form (``Schedule.spec()``)."""
    keys = ("cron", "fixed_rate", "fixed_delay", "initial_delay", "timezone")
    return build(where, **{k: spec.get(k) for k in keys})
