"""SmoothLimiter and gcra_reserve, on a virtual clock (one short real-time smoke test at the end).

Expected values come from Guava's formulas written out independently here (floats, seconds),
not from the implementation's integer arithmetic.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import sys
import threading
import time
import types
from typing import Any

import pytest

from sluice.errors import ConfigError
from sluice.rate import limiter as limiter_mod
from sluice.rate.limiter import NS, SmoothLimiter, gcra_reserve


class FakeClock:
    """Virtual nanosecond clock; a sleep wakes at (the sleeper's last reading + duration).

    Several threads or tasks may sleep "at once": the clock only moves forward to the latest wake
    time, so overlapping sleeps do not add up the way sequential ones would.
    """

    def __init__(self, t: int = 10 * NS) -> None:
        self.t = t
        self._last = threading.local()
        self._lock = threading.Lock()

    def __call__(self) -> int:
        self._last.t = self.t
        return self.t

    def last(self) -> int:
        return self._last.t

    def advance(self, seconds: float) -> None:
        self.t += round(seconds * NS)

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.t = max(self.t, self._last.t + round(seconds * NS))


def grants(lim: SmoothLimiter, clock: FakeClock, n: int, permits: int = 1) -> list[float]:
    """Times (s, relative to now) at which n sequential acquires are granted."""
    t0 = clock.t
    out = []
    for _ in range(n):
        slept = lim.acquire(permits)
        out.append((clock.last() + round(slept * NS) - t0) / NS)
    return out


def fresh_grants(rate: float, warmup: float, n: int) -> list[float]:
    """Grant times of a brand-new limiter on its own clock: the single-caller reference."""
    other = FakeClock()
    return grants(make(other, rate, warmup), other, n)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def cold_elapsed(rate: float, warmup: float, n: float) -> float:
    """Guava: time to pay for n permits from a fully cold limiter (the integral of the curve)."""
    stable, cold = 1 / rate, 3 / rate
    threshold, max_permits = 0.5 * warmup / stable, warmup / stable
    slope = (cold - stable) / (max_permits - threshold)
    spent = min(n, max_permits)
    above = max(0.0, min(spent, max_permits - threshold))  # trapezoid from the top
    top = max_permits - threshold
    area_above = stable * above + slope * (top * above - above * above / 2)
    area_below = stable * (spent - above)
    return area_above + area_below + (n - spent) * stable


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, rate: float, warmup: float = 1.0) -> SmoothLimiter:
    return SmoothLimiter(rate, warmup=warmup, clock=clock, sleep=clock.sleep)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, -5, math.inf, math.nan, "10", None, True, 2e9])
def test_bad_rate_is_a_config_error_naming_rate(rate):
    with pytest.raises(ConfigError, match=r"^rate must be"):
        SmoothLimiter(rate)


@pytest.mark.parametrize("warmup", [-1, math.inf, "1"])
def test_bad_warmup_is_a_config_error(warmup):
    with pytest.raises(ConfigError, match=r"^warmup must be .*>= 0"):
        SmoothLimiter(10, warmup=warmup)


def test_bad_permits_timeout_and_set_rate(clock):
    lim = make(clock, 10)
    bad: Any
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match=r"^permits must be an integer >= 1"):
            lim.reserve(bad)
    with pytest.raises(ConfigError, match=r"^timeout must be"):
        lim.try_reserve(1, timeout=-0.1)
    with pytest.raises(ConfigError, match=r"^rate must be .* got -5"):
        lim.set_rate(-5)
    assert lim.rate == 10


# -- shape of the rate ----------------------------------------------------------------------


def test_steady_spacing_at_the_stable_rate_once_warm(clock):
    lim = make(clock, 10, warmup=1.0)
    grants(lim, clock, 15)  # 10 permits drain the trapezoid, 5 the flat part: now warm
    assert gaps(grants(lim, clock, 20)) == pytest.approx([0.1] * 19, abs=1e-9)
    bursty = make(clock, 7, warmup=0)  # starts empty: no burst, spaced from the first grant
    assert gaps(grants(bursty, clock, 8)) == pytest.approx([1 / 7] * 7, abs=1e-9)


def test_warmup_curve_follows_guava(clock):
    rate, warmup = 10, 3.0  # Guava's example: stable 100 ms, cold 300 ms, threshold 15, max 30
    times = grants(lim := make(clock, rate, warmup), clock, 40)
    intervals = gaps(times)
    # Interval k is the curve's mean over permit k: linear in the permit count, 3/rate -> 1/rate.
    for k in (0, 5, 10, 14):
        assert intervals[k] == pytest.approx(0.3 - 4 * (k + 0.5) * 0.01 / warmup, abs=1e-9)
    assert intervals[0] == pytest.approx(3 / rate, rel=0.03)
    # Cold to threshold (15 permits) takes exactly the warm-up period; after that, stable.
    assert times[15] == pytest.approx(warmup, abs=1e-9)
    assert intervals[15:] == pytest.approx([0.1] * len(intervals[15:]), abs=1e-9)
    # In time the ramp is not linear: interval(t) = stable * sqrt(9 - 8 t / warmup).
    for k in (0, 4, 8, 12):
        mid = times[k] + intervals[k] / 2
        assert intervals[k] == pytest.approx(0.1 * math.sqrt(9 - 8 * mid / warmup), rel=0.002)
    assert lim.rate == rate


def test_mean_rate_over_1000_saturated_permits_matches_the_integral(clock):
    rate, warmup, n = 100, 2.0, 1000
    lim = make(clock, rate, warmup)
    elapsed = sum(lim.acquire() for _ in range(n))  # the last caller waits for n-1 permits
    predicted = cold_elapsed(rate, warmup, n - 1)
    assert (n - 1) / elapsed == pytest.approx((n - 1) / predicted, rel=0.01)
    assert (n - 1) / elapsed < 0.95 * rate  # the warm-up is visible in the mean


def test_cool_down_after_idle(clock):
    lim = make(clock, 10, warmup=3.0)
    grants(lim, clock, 40)  # fully warm; the last grant leaves 0.1 s of debt
    clock.advance(0.1 + 3.0)  # idle one warm-up period
    assert gaps(grants(lim, clock, 20)) == pytest.approx(gaps(fresh_grants(10, 3.0, 20)), abs=1e-9)
    grants(lim, clock, 40)
    clock.advance(0.1 + 2.25)  # three quarters cold: credit 2.25 s = 22.5 permits
    first = gaps(grants(lim, clock, 3))[0]
    assert first == pytest.approx(0.1 * (4 * (2.25 - 0.05) / 3.0 - 1), abs=1e-9)


def test_no_burst_beyond_one_second_after_a_long_idle(clock):
    warming = make(clock, 10, warmup=1.0)
    grants(warming, clock, 30)
    clock.advance(3600)
    times = grants(warming, clock, 20)
    assert times.count(0.0) == 1  # only the pay-later grant; then it is cold and slow
    assert sum(t < 1.0 for t in times) <= 10
    bursty = make(clock, 10, warmup=0)
    clock.advance(3600)
    times = grants(bursty, clock, 20)
    assert times.count(0.0) == 10  # one second's worth, counting the grant on credit
    assert gaps(times[9:]) == pytest.approx([0.1] * 10, abs=1e-9)
    slow = make(clock, 0.5, warmup=0)
    clock.advance(3600)
    assert grants(slow, clock, 3) == pytest.approx([0.0, 2.0, 4.0])


def test_pay_later_for_a_large_acquire(clock):
    lim = make(clock, 10, warmup=3.0)  # cold: 30 stored permits cost 3 s + 1.5 s
    assert lim.acquire(100) == 0.0  # starts at once ...
    assert lim.reserve() == pytest.approx(4.5 * NS + 70 * 0.1 * NS, abs=1)  # ... the next pays
    one_by_one = fresh_grants(10, 3.0, 4)[-1]
    other = FakeClock()
    big = make(other, 10, 3.0)
    big.acquire(3)
    assert big.reserve() / NS == pytest.approx(one_by_one, abs=1e-9)  # acquire(3) = 3 x acquire(1)


def test_set_rate_up_and_down_mid_stream(clock):
    lim = make(clock, 10, warmup=0)
    assert gaps(grants(lim, clock, 3)) == pytest.approx([0.1, 0.1])
    lim.set_rate(20)
    assert lim.rate == 20
    # The debt booked at 10/s stands; the new rate applies from the next reservation.
    assert grants(lim, clock, 4) == pytest.approx([0.1, 0.15, 0.2, 0.25])
    lim.set_rate(5)
    assert grants(lim, clock, 3) == pytest.approx([0.05, 0.25, 0.45])
    # Stored permits are rescaled: a full bucket stays full (9 + 1 at 10/s -> 19 + 1 at 20/s).
    lim.set_rate(10)
    clock.advance(60)
    lim.set_rate(20)
    assert grants(lim, clock, 21).count(0.0) == 20
    clock.advance(60)
    lim.set_rate(5)  # and shrinks with the rate: 4 + 1 at 5/s
    assert grants(lim, clock, 6).count(0.0) == 5


def test_set_rate_mid_warmup_keeps_the_remaining_warmup(clock):
    lim = make(clock, 10, warmup=3.0)
    times = grants(lim, clock, 6)  # 6 of the 15 warm-up permits spent, at t = times[-1] + debt
    lim.set_rate(20)
    after = grants(lim, clock, 60)
    new = gaps(after)
    # Credit is unchanged in time units: 6 permits at 10/s = 12 permits at 20/s into the ramp.
    assert new[0] == pytest.approx(0.05 * (3 - 4 * 12.5 * 0.05 / 3.0), abs=1e-9)
    warm_at = next(i for i, g in enumerate(new) if abs(g - 0.05) < 1e-9)
    assert times[-1] + after[warm_at] == pytest.approx(3.0, abs=1e-6)  # warm-up ends on time


def test_try_reserve_with_and_without_timeout(clock):
    lim = make(clock, 10, warmup=0)
    assert lim.try_reserve() == 0
    assert lim.try_reserve() is None  # 100 ms of debt outstanding
    assert lim.try_reserve(5, timeout=0.05) is None
    assert lim.try_reserve(5, timeout=0.1) == 100_000_000  # books 5; nothing booked on failure
    assert lim.try_reserve(timeout=0.5) is None
    assert lim.try_reserve(timeout=0.6) == 600_000_000
    assert lim.try_acquire(timeout=0.1) is False
    t = clock.t
    assert lim.try_acquire(timeout=1.0) is True
    assert clock.t - t == 700_000_000


# -- concurrency ----------------------------------------------------------------------------


def test_many_threads_get_the_same_slots_as_one(clock):
    rate, per_thread, n_threads = 100, 40, 8
    expected = fresh_grants(rate, 1.0, per_thread * n_threads)
    lim = make(clock, rate, 1.0)
    t0, seen, barrier = clock.t, [], threading.Barrier(n_threads)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            slept = lim.acquire()
            seen.append((clock.last() + round(slept * NS) - t0) / NS)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave threads as much as possible
    try:
        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert sorted(seen) == pytest.approx(expected, abs=1e-9)  # no lost or doubled slot
    assert (len(seen) - 1) / max(seen) == pytest.approx(
        (len(seen) - 1) / cold_elapsed(rate, 1.0, len(seen) - 1), rel=0.01
    )


def test_asyncio_tasks_share_one_limiter(clock, monkeypatch):
    real_sleep, wakes = asyncio.sleep, {}

    async def fake_sleep(seconds: float) -> None:
        # Runs straight after the task's reserve (no suspension in between), so clock.last()
        # is still that task's reading.
        wakes[asyncio.current_task()] = clock.last() + round(seconds * NS)
        clock.sleep(seconds)
        await real_sleep(0)

    monkeypatch.setattr(limiter_mod, "asyncio", types.SimpleNamespace(sleep=fake_sleep))
    lim = make(clock, 50, 0.5)
    t0 = clock.t

    async def task() -> list[float]:
        out = []
        for _ in range(10):
            slept = await lim.aacquire()
            granted = wakes[asyncio.current_task()] if slept else clock.last()
            out.append((granted - t0) / NS)
        return out

    async def main() -> list[list[float]]:
        return await asyncio.gather(*(task() for _ in range(5)))

    seen = sorted(t for ts in asyncio.run(main()) for t in ts)
    assert seen == pytest.approx(fresh_grants(50, 0.5, 50), abs=1e-9)


def test_real_time_threads_and_asyncio_at_once():
    rate, n_thread, n_task = 400.0, 4, 2
    lim = SmoothLimiter(rate, warmup=0)  # bursty limiters start empty: spacing from the start
    start = time.monotonic()

    def work() -> None:
        for _ in range(20):
            lim.acquire()

    async def tasks() -> None:
        async def one() -> None:
            for _ in range(20):
                await lim.aacquire()

        await asyncio.gather(*(one() for _ in range(n_task)))

    threads = [threading.Thread(target=work) for _ in range(n_thread)]
    for th in threads:
        th.start()
    asyncio.run(tasks())
    for th in threads:
        th.join()
    elapsed = time.monotonic() - start
    ideal = (20 * (n_thread + n_task) - 1) / rate  # 0.2975 s
    # Generous: a slow thread start lets a few permits of idle credit through early.
    assert ideal * 0.8 <= elapsed <= ideal + 0.5


# -- GCRA -----------------------------------------------------------------------------------


def test_gcra_conformance_spacing_and_burst():
    t = 100 * NS
    assert gcra_reserve(0, t, 1, 10, 0) == (t + 10, t)  # idle bucket: start now
    assert gcra_reserve(t + 50, t, 1, 10, 20) == (t + 60, t + 30)  # behind: wait tat - burst
    tat, starts = 0, []
    for _ in range(4):  # pure spacing (burst 0)
        tat, start = gcra_reserve(tat, t, 1, 250, 0)
        starts.append(start - t)
    assert starts == [0, 250, 500, 750]
    tat, starts = 0, []
    for _ in range(7):  # a bucket of 5: burst_ns = 4 * emission
        tat, start = gcra_reserve(tat, t, 1, 100, 400)
        starts.append(start - t)
    assert starts == [0, 0, 0, 0, 0, 100, 200]
    tat, start = gcra_reserve(0, t, 50, 100, 0)  # pay-later: a big request starts now ...
    assert start == t
    assert gcra_reserve(tat, t, 1, 100, 0)[1] == t + 5000  # ... and the next waits for it
    with pytest.raises(ConfigError):
        gcra_reserve(0, t, 0, 100, 0)


def test_gcra_matches_the_bursty_limiter():
    rng = random.Random(7)
    for rate in (0.7, 3.0, 10.0, 250.0):
        clock = FakeClock()
        lim = make(clock, rate, warmup=0)
        emission = round(NS / rate)
        burst = max(NS - emission, 0)
        tat = clock.t + burst  # an empty bucket, as the limiter starts
        for _ in range(300):
            clock.advance(rng.choice([0, 0, 0.01, 0.3, 2.0]) / rate)
            n = rng.choice([1, 1, 1, 2, 5])
            tat, start = gcra_reserve(tat, clock.t, n, emission, burst)
            assert lim.reserve(n) == start - clock.t
