"""A job declaration: validated once, where it is declared, so a typo fails at import."""

from __future__ import annotations

import difflib
import inspect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sluice.errors import ConfigError
from sluice.schedule.triggers import Schedule, build, from_spec, seconds

ROUTINGS = ("single", "broadcast", "sharded")
OVERLAPS = ("skip", "queue", "concurrent", "replace")
MISFIRES = ("fire_once", "skip", "catch_up")
RATE_MODES = ("local", "global")
DEFAULT_INTERVAL = 5.0  # seconds: a pipeline's loading interval when its schedule names none


def one_of(where: str, field_name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value in allowed:
        return str(value)
    hint = difflib.get_close_matches(str(value), allowed, n=1)
    did = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ConfigError(f"{where}: {field_name}={value!r} is not one of "
                      f"{', '.join(map(repr, allowed))}{did}")


def positive_int(where: str, field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {field_name} must be an integer >= 1, got {value!r}")
    return value


def positive_number(where: str, field_name: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value <= 0):
        raise ConfigError(f"{where}: {field_name} must be a number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits up to min(cap, base * 2**(n-1))."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Everything sluice knows about one job. Built by ``App.job`` and ``App.pipeline``."""

    name: str
    func: Callable[..., Any] | None
    schedule: Schedule | None
    kind: str = "job"  # job | pipeline
    routing: str = "single"
    shards: tuple[str, ...] = ()
    overlap: str = "skip"
    misfire: str = "fire_once"
    catch_up_limit: int = 10
    misfire_grace: float = 5.0
    max_attempts: int = 1
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float | None = None
    qps: float | None = None
    warmup: float = 1.0
    rate_mode: str = "local"
    options: dict[str, Any] = field(default_factory=dict)

    def stored(self) -> dict[str, Any]:
        """The declaration as stored (a change restarts the schedule from now)."""
        return {
            "schedule": self.schedule.spec() if self.schedule else None,
            "routing": self.routing, "shards": list(self.shards), "overlap": self.overlap,
            "misfire": self.misfire, "catch_up_limit": self.catch_up_limit,
            "max_attempts": self.max_attempts, "timeout": self.timeout, "qps": self.qps,
            "warmup": self.warmup, "rate_mode": self.rate_mode, **self.options,
        }

    def effective_schedule(self, overrides: dict[str, Any]) -> Schedule | None:
        """The schedule after ``sluice set`` changes (stored overrides win over the code)."""
        keys = ("cron", "fixed_rate", "fixed_delay", "timezone")
        if not any(k in overrides for k in keys):
            return self.schedule
        spec = {k: v for k, v in overrides.items() if k in (*keys, "initial_delay")}
        return from_spec(f"job {self.name!r}", spec)

    def interval(self) -> float:
        """Seconds between runs: the loading interval of the rate formulas (fixed rate or fixed
        delay; 5 s for cron and manual jobs)."""
        return interval_of(self.schedule)

    @property
    def is_async(self) -> bool:
        return self.func is not None and inspect.iscoroutinefunction(self.func)


def check_options(where: str, given: dict[str, Any], allowed: list[str]) -> None:
    """Reject misspelt keyword options with a hint (a typo fails at import)."""
    for key in given:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where}: unknown option {key!r}{did}")


def declare(name: str, func: Callable[..., Any] | None, *, kind: str = "job",
            cron: str | None = None, fixed_rate: Any = None, fixed_delay: Any = None,
            initial_delay: Any = None, timezone: str | None = None, routing: str = "single",
            shards: Any = None, overlap: str = "skip", misfire: str = "fire_once",
            catch_up_limit: int = 10, misfire_grace: Any = 5.0, max_attempts: int = 1,
            backoff: Any = (1.0, 300.0), timeout: Any = None, qps: Any = None,
            warmup: Any = None, rate_mode: str = "local",
            options: dict[str, Any] | None = None) -> JobSpec:
    """Validate a declaration; every error names the job, the field and what is allowed."""
    where = f"job {name!r}"
    if not isinstance(name, str) or not name or len(name) > 200 or name != name.strip():
        raise ConfigError(f"job name must be a non-empty string without surrounding spaces, "
                          f"got {name!r}")
    schedule = build(where, cron=cron, fixed_rate=fixed_rate, fixed_delay=fixed_delay,
                     initial_delay=initial_delay, timezone=timezone)
    routing = one_of(where, "routing", routing, ROUTINGS)
    shard_keys = _shards(where, routing, shards)
    if isinstance(backoff, Backoff):
        backoff_value = backoff
    elif isinstance(backoff, tuple | list) and len(backoff) == 2:
        backoff_value = Backoff(base=seconds(backoff[0], "backoff base", where),
                                cap=seconds(backoff[1], "backoff cap", where))
    else:
        raise ConfigError(f"{where}: backoff must be (base_seconds, cap_seconds), got {backoff!r}")
    return JobSpec(
        name=name, func=func, schedule=schedule, kind=kind, routing=routing, shards=shard_keys,
        overlap=one_of(where, "overlap", overlap, OVERLAPS),
        misfire=one_of(where, "misfire", misfire, MISFIRES),
        catch_up_limit=positive_int(where, "catch_up_limit", catch_up_limit),
        misfire_grace=seconds(misfire_grace, "misfire_grace", where, allow_zero=True),
        max_attempts=positive_int(where, "max_attempts", max_attempts),
        backoff=backoff_value,
        timeout=None if timeout is None else seconds(timeout, "timeout", where),
        options=options or {},
        **_rate(where, kind, routing, schedule, qps, warmup, rate_mode),
    )


def interval_of(schedule: Schedule | None) -> float:
    spec = schedule.spec() if schedule is not None else {}
    return float(spec.get("fixed_rate") or spec.get("fixed_delay") or DEFAULT_INTERVAL)


def _rate(where: str, kind: str, routing: str, schedule: Schedule | None, qps: Any,
          warmup: Any, rate_mode: Any) -> dict[str, Any]:
    """The rate options: ``qps`` (records per second, cluster-wide), ``warmup`` (seconds a cold
    limiter takes to reach it; default 1 s or the interval if shorter, at most the interval)
    and ``rate_mode``."""
    if qps is not None and kind == "job" and routing == "single":
        raise ConfigError(f"{where}: qps= applies to pipelines and to jobs with "
                          "routing='sharded' or 'broadcast' (whose handlers call ctx.acquire())")
    qps_value = None if qps is None else positive_number(where, "qps", qps)
    interval = interval_of(schedule)
    if warmup is None:  # 1 s, or the whole interval when that is shorter
        warmup = min(1.0, interval)
    warm = seconds(warmup, "warmup", where, allow_zero=True)
    if warm > interval:
        raise ConfigError(f"{where}: warmup={warm:g}s is longer than the interval "
                          f"({interval:g}s); allowed: 0 to {interval:g} seconds")
    return {"qps": qps_value, "warmup": warm,
            "rate_mode": one_of(where, "rate_mode", rate_mode, RATE_MODES)}


def _shards(where: str, routing: str, shards: Any) -> tuple[str, ...]:
    if routing != "sharded":
        if shards is not None:
            raise ConfigError(f"{where}: shards= only applies to routing='sharded'")
        return ()
    if shards is None:
        raise ConfigError(f"{where}: routing='sharded' needs shards=N or a list of shard items")
    if isinstance(shards, int) and not isinstance(shards, bool):
        return tuple(str(i) for i in range(positive_int(where, "shards", shards)))
    if isinstance(shards, list | tuple) and shards:
        keys = tuple(str(s) for s in shards)
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{where}: shards contains duplicates")
        return keys
    raise ConfigError(f"{where}: shards must be an integer >= 1 or a non-empty list, "
                      f"got {shards!r}")
