"""Smooth in-process rate limiting, and the GCRA arithmetic for a strict limit kept in one row.

``SmoothLimiter`` follows Guava's ``SmoothRateLimiter`` (see the research notes, section 1.1):
one "next free" timestamp, pay-later reservations, and stored permits whose cost is the area
under an interval curve. With ``warmup > 0`` it behaves like ``SmoothWarmingUp`` (cold factor 3,
starts cold); with ``warmup == 0`` like ``SmoothBursty``, except that the burst after idling is
capped at one second's worth of permits *including* the permit granted on credit (Guava allows
one more).

Units. Time is integer nanoseconds throughout: float timestamps lose precision and make equal
reservations disagree by a rounding error. Stored permits are kept as *credit* in nanoseconds,
one permit being worth one stable interval. With cold factor 3 Guava's cool-down interval equals
the stable interval, so idle time turns into credit one-for-one, the warm-up bucket holds exactly
``warmup`` of credit whatever the rate, and the interval curve becomes, for credit ``x``::

    interval(x) = stable                      for x <= warmup / 2   (the threshold)
    interval(x) = stable * (4x / warmup - 1)  above it, reaching 3 * stable when full

Spending credit ``[a, b]`` costs the integral of ``interval / stable`` over it, which needs no
division by the rate and stays exact in integers.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sluice.errors import ConfigError

NS = 1_000_000_000


def _interval_ns(rate: Any) -> int:
    """Validate a rate in permits per second and return its stable interval in nanoseconds."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
        raise ConfigError(f"rate must be a finite number > 0 (permits per second), got {rate!r}")
    if rate <= 0:
        raise ConfigError(f"rate must be a number > 0 (permits per second), got {rate!r}")
    if rate > NS:
        raise ConfigError(f"rate must be at most 1e9 permits per second, got {rate!r}")
    return round(NS / rate)


def _seconds_ns(name: str, value: Any) -> int:
    """Validate a finite, non-negative number of seconds and return it in nanoseconds."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return round(value * NS)


def _check_permits(permits: Any) -> int:
    if isinstance(permits, bool) or not isinstance(permits, int) or permits < 1:
        raise ConfigError(f"permits must be an integer >= 1, got {permits!r}")
    return permits


class SmoothLimiter:
    """Token-bucket limiter with Guava warm-up semantics, shared by threads and asyncio tasks.

    ``reserve`` books permits and returns how long the caller must wait; the blocking facades
    sleep outside the lock. A reservation is final: a cancelled ``aacquire`` still used its permits.

    ``catch_up`` (seconds, default 0, at most 1) lets callers that fell behind by less than that
    take the permits they missed at once: a loaded process whose threads stall for 100 ms keeps
    its mean rate instead of losing those permits. Only idleness beyond it cools the limiter.
    Either way no more than one second's permits are ever granted at once.

    ``cold=False`` starts a warming-up limiter warm, as if it had just been saturated: for a
    new caller of a downstream that others keep busy (warm-up protects the downstream, which is
    not cold because this caller is new).
    """

    def __init__(
        self,
        rate: float,
        *,
        warmup: float = 1.0,
        catch_up: float = 0.0,
        cold: bool = True,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._stable_ns = _interval_ns(rate)
        self._catch_up_ns = _seconds_ns("catch_up", catch_up)
        if self._catch_up_ns > NS:
            raise ConfigError(f"catch_up must be at most 1 second, got {catch_up!r}")
        self._rate = float(rate)
        self._warmup_ns = _seconds_ns("warmup", warmup)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._max_ns = self._max_credit_ns(self._stable_ns)
        # Warming-up limiters start cold (full of expensive credit) unless told the downstream
        # is already warm; bursty ones start empty.
        self._credit_ns = self._max_ns if self._warmup_ns and cold else 0
        self._next_free_ns = clock()

    @property
    def rate(self) -> float:
        """The stable rate in permits per second."""
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the stable rate from the next reservation on.

        Debt already booked at the old rate stands. Stored permits are rescaled like Guava's:
        the bucket stays as full, proportionally, so a limiter half-way through its warm-up stays
        half-way (same remaining warm-up time, on the new rate's curve).
        """
        stable_ns = _interval_ns(rate)
        with self._lock:
            self._resync(self._clock())
            new_max = self._max_credit_ns(stable_ns)
            self._credit_ns = self._credit_ns * new_max // self._max_ns if self._max_ns else 0
            self._stable_ns, self._max_ns, self._rate = stable_ns, new_max, float(rate)

    def reserve(self, permits: int = 1) -> int:
        """Book ``permits`` now; return the nanoseconds the caller must wait before using them."""
        permits = _check_permits(permits)
        with self._lock:
            return self._reserve_locked(permits, self._clock())

    def try_reserve(self, permits: int = 1, timeout: float = 0) -> int | None:
        """``reserve`` if the wait is at most ``timeout`` seconds; else None, booking nothing."""
        permits = _check_permits(permits)
        timeout_ns = _seconds_ns("timeout", timeout)
        with self._lock:
            now = self._clock()
            # The wait is known before booking: it is next_free - now, whatever the size asked.
            if self._next_free_ns - timeout_ns > now:
                return None
            return self._reserve_locked(permits, now)

    def acquire(self, permits: int = 1) -> float:
        """Block until ``permits`` may be used; return the seconds slept."""
        waited = self.reserve(permits) / NS
        if waited > 0:
            self._sleep(waited)
        return waited

    def try_acquire(self, permits: int = 1, timeout: float = 0.0) -> bool:
        """Acquire if that takes at most ``timeout`` seconds; otherwise return False at once."""
        wait_ns = self.try_reserve(permits, timeout)
        if wait_ns is None:
            return False
        if wait_ns > 0:
            self._sleep(wait_ns / NS)
        return True

    async def aacquire(self, permits: int = 1) -> float:
        """Asyncio ``acquire``: the lock is held for the arithmetic only, never across the await."""
        waited = self.reserve(permits) / NS
        if waited > 0:
            await asyncio.sleep(waited)
        return waited

    # -- arithmetic, called with the lock held --------------------------------------------

    def _max_credit_ns(self, stable_ns: int) -> int:
        if self._warmup_ns:
            return self._warmup_ns
        # One second's worth of permits at once: the stored ones plus the one granted on credit
        # (and the missed ones a late caller may catch up on).
        return max(NS - stable_ns - self._catch_up_ns, 0)

    def _resync(self, now: int) -> None:
        """Turn idle time since ``next_free`` into stored credit (up to the bucket size).

        The last ``catch_up`` of it is not idleness but lateness: callers that fell behind by
        less than that (a stalled thread, a slow commit) still get the permits they missed, at
        once, instead of losing them; only the time beyond it cools the limiter."""
        idle = now - self._catch_up_ns - self._next_free_ns
        if idle > 0:
            self._credit_ns = min(self._max_ns, self._credit_ns + idle)
            self._next_free_ns = now - self._catch_up_ns

    def _reserve_locked(self, permits: int, now: int) -> int:
        self._resync(now)
        start = self._next_free_ns  # pay-later: this caller only waits out earlier debt
        wanted = permits * self._stable_ns
        spend = min(wanted, self._credit_ns)
        cost = self._stored_cost_ns(self._credit_ns - spend, self._credit_ns) + wanted - spend
        self._credit_ns -= spend
        self._next_free_ns = start + cost
        return max(0, start - now)

    def _stored_cost_ns(self, low: int, high: int) -> int:
        """Time cost of spending stored credit ``[low, high]``: the integral of the curve."""
        if not self._warmup_ns or low == high:
            return 0  # bursty: stored permits are free
        w = self._warmup_ns
        # Work in doubled units so the threshold w/2 is an integer; round once at the end.
        lo, hi = 2 * low, 2 * high
        below = max(0, min(hi, w) - lo)  # flat part, one stable interval per permit
        a = max(lo, w)
        # Above the threshold the integral of (4x/w - 1) dx from a/2 to hi/2, times 2w:
        above = (hi * hi - a * a) - w * (hi - a) if hi > a else 0
        total = below * w + above  # = 2w * cost
        return (total + w) // (2 * w)


def gcra_reserve(
    tat_ns: int, now_ns: int, permits: int, emission_ns: int, burst_ns: int
) -> tuple[int, int]:
    """One GCRA reservation on a shared bucket; returns ``(new_tat_ns, start_at_ns)``.

    The bucket is one number, the theoretical arrival time ``tat``. A reservation always books:
    ``new_tat = max(tat, now) + permits * emission`` and the caller may start at
    ``start_at = max(now, max(tat, now) - burst)``. Like ``SmoothLimiter`` it is pay-later: a big
    request starts as soon as earlier debt allows and later callers wait for it.

    ``emission_ns`` is the interval per permit (1e9 / rate). ``burst_ns`` is the delay-variation
    tolerance: a bucket that may hand out ``B`` permits at once takes ``(B - 1) * emission_ns``;
    0 means pure spacing. ``SmoothLimiter(rate, warmup=0)`` is exactly this with
    ``burst_ns = max(1e9 - emission_ns, 0)`` and ``tat = next_free + burst - credit``.

    In SQL (the notes' section 1.4; ``RETURNING`` sees the new ``tat``)::

        UPDATE ... SET tat = GREATEST(tat, :now) + :n * emission
        RETURNING GREATEST(:now, tat - :n * emission - burst) AS start_at

    A non-blocking caller is admitted when ``start_at == now``, i.e. when
    ``GREATEST(tat, :now) - burst <= :now`` (without the ``+ n * emission`` term).
    """
    if permits < 1 or emission_ns < 1 or burst_ns < 0:
        raise ConfigError(
            "gcra_reserve needs permits >= 1, emission_ns >= 1 and burst_ns >= 0, got "
            f"permits={permits}, emission_ns={emission_ns}, burst_ns={burst_ns}"
        )
    base = max(tat_ns, now_ns)  # an idle bucket does not bank time beyond the burst
    return base + permits * emission_ns, max(now_ns, base - burst_ns)
