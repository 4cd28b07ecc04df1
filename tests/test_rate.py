"""Smooth processing without a cluster: the share of each node, the loader size, catch-up in the
limiter, the node's gate, the store's GCRA bucket on both stores, declarations, ``ctx.acquire``
in a running worker, and the ``status`` / ``plan`` / ``set`` commands."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

import sluice
from sluice.errors import ConfigError
from sluice.rate.gate import GlobalBucket, RateGate
from sluice.rate.limiter import NS, SmoothLimiter, gcra_reserve
from sluice.rate.report import plan
from sluice.rate.share import Member, members_from_rows, serving, shares
from sluice.rate.sizing import classic_limit, load_size
from sluice.store import Store
from tests.helpers import ROOT, wait_for, worker_thread

# -- per-node share ------------------------------------------------------------------------


def m(id_: str, weight: float = 8, group: str | None = None, age: float = 0.0,
      serves: tuple[str, ...] = ("flow",)) -> Member:
    return Member(id=id_, weight=weight, group=group, age=age, serves=frozenset(serves))


def test_share_is_qps_times_weight_over_total_weight() -> None:
    assert shares(8000, [m("a"), m("b"), m("c"), m("d")]) == dict.fromkeys("abcd", 2000)
    weighted = shares(900, [m("a", 4), m("b", 8), m("c", 16)])
    assert weighted == pytest.approx({"a": 900 * 4 / 28, "b": 900 * 8 / 28, "c": 900 * 16 / 28})
    assert sum(weighted.values()) == pytest.approx(900)


def test_only_fresh_members_serving_the_job_count_and_me_always() -> None:
    rows = [m("a"), m("b", age=3.0), m("c", serves=("other",)), m("d")]
    live = serving("flow", rows, fresh=1.25, me=m("me"))
    assert [x.id for x in live] == ["a", "d", "me"]
    assert shares(300, live) == pytest.approx({"a": 100, "d": 100, "me": 100})


def test_groups_count_only_their_own_nodes() -> None:
    # Two groups: each works half of the shards at qps / 2, whatever its number of nodes.
    members = [m("a1", group="A"), m("b1", group="B"), m("b2", group="B"), m("b3", group="B")]
    got = shares(600, members, ["A", "B"])
    assert got == pytest.approx({"a1": 300, "b1": 100, "b2": 100, "b3": 100})


def test_an_orphan_group_is_taken_over_by_everyone_or_by_nobody() -> None:
    members = [m("a1", group="A"), m("a2", group="A")]
    assert shares(600, members, ["A", "B"], takeover=True) == pytest.approx(
        {"a1": 300, "a2": 300})
    assert shares(600, members, ["A", "B"], takeover=False) == pytest.approx(
        {"a1": 150, "a2": 150})


def test_nodes_without_a_group_serve_every_group() -> None:
    members = [m("a1", group="A"), m("any", group=None)]
    got = shares(400, members, ["A", "B"], takeover=False)
    assert got == pytest.approx({"a1": 100, "any": 300})  # A: 100 + 100, B: 200 to "any"
    # B has no node of its own: with takeover a1 takes B's shards too.
    assert shares(400, members, ["A", "B"]) == pytest.approx({"a1": 200, "any": 200})


def test_members_from_heartbeat_rows() -> None:
    rows = [{"id": "n1", "concurrency": 8, "grp": "A", "age": 0.4,
             "info": {"rate": {"weight": 2.5, "serves": ["flow"]}}},
            {"id": "n2", "concurrency": 4, "grp": None, "age": 0.1, "info": {}}]
    one, two = members_from_rows(rows)
    assert (one.weight, one.group, one.serves, one.age) == (2.5, "A", frozenset({"flow"}), 0.4)
    assert (two.weight, two.serves) == (4.0, frozenset())


# -- loader size --------------------------------------------------------------------------


def test_classic_loader_size() -> None:
    assert classic_limit(8000, 5, 1000) == 40
    assert classic_limit(5, 5, 1000) == 1  # never below one record
    assert classic_limit(500, 5, 20) == 125


def test_first_loads_take_the_classic_size_and_never_more_than_one_interval() -> None:
    assert load_size(500, 5, 20, backlog=0, open_loaders=20).limit == 125
    # 19 of 20 shards already loaded: the last one still takes its classic batch.
    assert load_size(500, 5, 20, backlog=19 * 125, open_loaders=20).limit == 125


def test_loaders_take_nothing_while_an_interval_is_already_loaded() -> None:
    size = load_size(500, 5, 20, backlog=2500, open_loaders=20, jitter=0.0)
    assert size.limit == 0 and 0.05 <= size.defer <= 5
    # The wait is what it takes to drain enough for one batch: (2500 - 2375) / 500 s.
    assert size.defer == pytest.approx(0.25)
    assert load_size(500, 5, 20, backlog=100_000, open_loaders=20, jitter=0.0).defer == 5


def test_idle_executors_make_the_remaining_loaders_take_more() -> None:
    # Only two shards left with records and nothing loaded: each takes half of an interval.
    size = load_size(500, 5, 20, backlog=0, open_loaders=2)
    assert size.limit == 1250
    assert load_size(500, 5, 20, backlog=2000, open_loaders=2).limit == 250  # the room left


# -- the limiter's catch-up -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000 * NS

    def __call__(self) -> int:
        return self.t


def test_a_late_caller_catches_up_missed_permits_within_catch_up_only() -> None:
    clock = Clock()
    lim = SmoothLimiter(100, warmup=1.0, catch_up=0.25, clock=clock)
    clock.t += 5 * NS  # long idle: fully cold
    for _ in range(300):  # 3 s of saturated use: warm
        clock.t += lim.reserve(1)
    clock.t += 100_000_000  # a 100 ms stall: 10 permits missed
    waits = [lim.reserve(1) for _ in range(12)]
    assert waits[:10] == [0] * 10, "the missed permits are taken at once"
    assert waits[10] > 0
    granted = 0
    clock.t += 2 * NS  # idle far beyond catch_up: no more than 0.25 s of permits at once
    while lim.reserve(1) == 0:
        granted += 1
    assert granted <= 26


def test_catch_up_keeps_bursts_within_one_second() -> None:
    clock = Clock()
    lim = SmoothLimiter(100, warmup=0, catch_up=0.5, clock=clock)
    clock.t += 60 * NS
    at_once = 0
    while lim.reserve(1) == 0:
        at_once += 1
    assert at_once <= 100
    with pytest.raises(ConfigError, match="catch_up"):
        SmoothLimiter(10, catch_up=1.5)


# -- the node's gate --------------------------------------------------------------------------


def spec(qps: float | None = 300, mode: str = "local") -> Any:
    app = sluice.App("sqlite:///unused.db")
    return app.pipeline("flow", qps=qps, rate_mode=mode).spec


def row(id_: str, age: float = 0.0, weight: float = 8) -> dict[str, Any]:
    return {"id": id_, "concurrency": 8, "grp": None, "age": age,
            "info": {"rate": {"weight": weight, "serves": ["flow"]}}}


def gate(store: Any = None, qps: float | None = 300, mode: str = "local") -> RateGate:
    return RateGate([spec(qps, mode)], "me", 8, None, 0.5, store,
                    lambda name: ([], True))


def test_gate_divides_over_live_rows_and_follows_overrides() -> None:
    g = gate()
    g.refresh([row("me"), row("b"), row("c")], {}, now=100.0)
    assert g.rate_of("flow") == pytest.approx(100)
    g.refresh([row("me"), row("b"), row("c", age=2.0)], {}, now=100.5)  # c missed its beats
    assert g.rate_of("flow") == pytest.approx(150)
    g.refresh([row("me"), row("b")], {"flow": {"qps": 600}}, now=101.0)
    assert g.rate_of("flow") == pytest.approx(300)
    g.refresh([row("me"), row("b", weight=24)], {"flow": {"qps": 600}}, now=101.5)
    assert g.rate_of("flow") == pytest.approx(150)
    assert g.info()["jobs"]["flow"]["share"] == pytest.approx(150)
    assert g.info()["serves"] == ["flow"] and g.info()["weight"] == 8


def test_a_node_joining_a_busy_cluster_starts_warm_and_a_cold_cluster_starts_cold() -> None:
    busy = row("b")
    busy["info"]["rate"]["jobs"] = {"flow": {"achieved": 150.0}}
    joiner = gate()
    joiner.refresh([row("me"), busy], {}, now=100.0)
    first = joiner.jobs["flow"].limiter
    assert isinstance(first, SmoothLimiter)
    assert first.reserve(1) == 0 and 0 < first.reserve(1) <= NS / 150 + 1000  # stable spacing
    # ... one heartbeat after the others have seen it and given way.
    assert 0 < joiner.jobs["flow"].hold_until - time.monotonic() <= 0.5
    started = time.monotonic()
    joiner.acquire("flow")
    assert time.monotonic() - started >= 0.3
    cold = gate()
    cold.refresh([row("me"), row("b")], {}, now=100.0)
    limiter = cold.jobs["flow"].limiter
    assert isinstance(limiter, SmoothLimiter)
    limiter.reserve(1)
    assert limiter.reserve(1) >= 2.9 * NS / 150  # three stable intervals: cold
    assert cold.jobs["flow"].hold_until == 0.0, "a cold cluster starts together, at once"


def test_limiter_started_warm_has_no_warm_up() -> None:
    clock = Clock()
    warm = SmoothLimiter(10, warmup=1.0, cold=False, clock=clock)
    assert [warm.reserve(1) for _ in range(3)] == [0, NS // 10, 2 * NS // 10]


def test_gate_without_qps_does_not_wait_and_counts_what_it_grants() -> None:
    g = gate(qps=None)
    g.refresh([row("me")], {}, now=10.0)
    assert g.rate_of("flow") is None
    assert g.acquire("flow", 5) == 0.0 and g.acquire("unknown") == 0.0
    g.refresh([row("me")], {}, now=12.0)
    rate = g.jobs["flow"]
    assert rate.granted == 5 and g.achieved(rate) == pytest.approx(2.5)


def test_gate_is_saturated_while_enough_callers_wait_for_permits() -> None:
    """Callers blocked in acquire mark the job saturated on this node, so it claims no more of
    its execute chunks; a job without a rate never is."""
    from sluice.rate.gate import SATURATED

    class Held:  # a limiter whose permits come when the test says so
        def __init__(self) -> None:
            self.go = threading.Event()

        def acquire(self, permits: int = 1) -> float:
            self.go.wait(10)
            return 0.0

    g = gate()
    g.refresh([row("me")], {}, now=10.0)
    assert g.limited() and g.saturated() == []
    held = Held()
    g.jobs["flow"].limiter = held  # type: ignore[assignment]
    callers = [threading.Thread(target=g.acquire, args=("flow",)) for _ in range(SATURATED)]
    for t in callers[:-1]:
        t.start()
    wait_for(lambda: g.jobs["flow"].waiting == SATURATED - 1, 5, message="callers waiting")
    assert g.saturated() == []
    callers[-1].start()
    wait_for(lambda: g.saturated() == ["flow"], 5, message="the job saturated")
    held.go.set()
    for t in callers:
        t.join(10)
    assert g.saturated() == [] and g.jobs["flow"].granted == SATURATED
    free = gate(qps=None)
    free.refresh([row("me")], {}, now=10.0)
    assert not free.limited() and free.saturated() == []


def test_gate_reports_achieved_over_the_last_ten_seconds() -> None:
    g = gate()
    rate = g.jobs["flow"]
    for second in range(30):
        rate.granted = second * 100
        g.refresh([row("me")], {}, now=1000.0 + second)
    assert g.achieved(rate) == pytest.approx(100)
    rate.granted += 1000  # a burst in the last second counts over the whole window
    g.refresh([row("me")], {}, now=1030.0)
    assert g.achieved(rate) == pytest.approx((2900 + 1000 - 2000) / 10)
    assert g.info()["jobs"]["flow"]["achieved"] == pytest.approx(190)


# -- the shared GCRA bucket (both stores) ------------------------------------------------------


@pytest.fixture
def store(store_url: str) -> Any:
    s = Store.open(store_url)
    yield s
    s.close()


def test_store_bucket_spaces_permits_like_gcra(store: Store) -> None:
    emission = 0.1
    waits = [store.rate_reserve("job:x", 1, emission) for _ in range(5)]
    # Booked back to back: the k-th waits about k emissions (minus the time the calls took).
    for k, wait in enumerate(waits):
        assert k * emission - 0.08 <= wait <= k * emission + 1e-6, waits
    tat, start = gcra_reserve(0, 0, 1, 100, 0)
    assert (tat, start) == (100, 0)
    batch = store.rate_reserve("job:y", 10, emission)
    assert batch == pytest.approx(0.0, abs=0.01)
    assert store.rate_reserve("job:y", 1, emission) == pytest.approx(1.0, abs=0.08)


def test_store_bucket_lets_late_bookers_catch_up_only_the_last_slots(store: Store) -> None:
    store.rate_reserve("job:c", 1, 0.01)
    time.sleep(0.3)  # the bucket stays unbooked for 0.3 s (the situation under test)
    late = store.rate_reserve("job:c", 1, 0.01, catch_up=0.1)
    assert -0.1 - 0.03 <= late <= -0.07, "due 0.1 s ago: the older idle slots are lost"
    assert store.rate_reserve("job:c", 1, 0.01, catch_up=0.1) == pytest.approx(late + 0.01,
                                                                               abs=0.03)
    time.sleep(0.3)
    assert store.rate_reserve("job:c", 1, 0.01) == pytest.approx(0.0, abs=0.03)


def test_global_bucket_hands_out_a_batch_at_the_bucket_spacing(store: Store) -> None:
    bucket = GlobalBucket(store, "job:g", 200)
    assert bucket.batch() == 4
    waits = [bucket.reserve() for _ in range(8)]
    assert waits[0] == 0.0
    assert waits[7] == pytest.approx(7 / 200, abs=0.03)
    bucket.set_rate(5)
    assert bucket.batch() == 1


def test_global_bucket_over_two_nodes_is_one_rate(store_url: str) -> None:
    stores = [Store.open(store_url) for _ in range(2)]
    buckets = [GlobalBucket(s, "job:shared", 40) for s in stores]
    granted: list[float] = []
    lock = threading.Lock()

    def take(b: GlobalBucket) -> None:
        for _ in range(20):
            b.acquire()
            with lock:
                granted.append(time.monotonic())

    threads = [threading.Thread(target=take, args=(b,)) for b in buckets]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    took = max(granted) - start
    assert 39 / 40 - 0.1 <= took <= 39 / 40 + 0.5, took  # 40 permits at 40/s, not 80/s
    for s in stores:
        s.close()


# -- declarations ---------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "named"), [
    ({"qps": 0}, "qps must be a number > 0"),
    ({"qps": -3}, "qps must be a number > 0"),
    ({"qps": "fast"}, "qps must be a number > 0"),
    ({"qps": float("nan")}, "qps"),
    ({"qps": 10, "warmup": 6}, "warmup=6s is longer than the interval (5s)"),
    ({"qps": 10, "warmup": -1}, "warmup"),
    ({"qps": 10, "rate_mode": "strict"}, "rate_mode='strict' is not one of 'local', 'global'"),
])
def test_bad_rate_options_name_the_job_and_the_field(options: dict[str, Any],
                                                     named: str) -> None:
    app = sluice.App("sqlite:///unused.db")
    with pytest.raises(sluice.ConfigError) as caught:
        app.pipeline("remind", fixed_rate=5, **options)
    assert "job 'remind'" in str(caught.value) and named in str(caught.value)


def test_qps_on_jobs_needs_sharded_or_broadcast_routing() -> None:
    app = sluice.App("sqlite:///unused.db")
    with pytest.raises(sluice.ConfigError, match="routing='sharded' or 'broadcast'"):
        app.job(fixed_rate=1, qps=5)(lambda ctx: None)
    app.job(name="b", fixed_rate=1, routing="broadcast", qps=5, warmup=0.5)(lambda ctx: None)
    assert (app.jobs["b"].qps, app.jobs["b"].warmup) == (5.0, 0.5)
    with pytest.raises(sluice.ConfigError, match="warmup"):
        app.job(name="c", fixed_rate=1, routing="broadcast", qps=5, warmup=2)(lambda ctx: None)


def test_set_rejects_qps_on_a_single_node_job_and_keeps_the_value(sqlite_url: str) -> None:
    app = sluice.App(sqlite_url)
    app.job(name="one", fixed_rate=1)(lambda ctx: None)
    pipe = app.pipeline("flow", qps=100)
    store = app.store
    for job in (app.jobs["one"], pipe.spec):
        store.job_register(job.name, job.kind, job.stored(), None, None)
    with pytest.raises(sluice.ConfigError, match="runs on one node"):
        app.set("one", qps=10)
    assert app.set("flow", qps="200") == {"qps": 200.0}
    for bad in ("0", "x", "-1"):
        with pytest.raises(sluice.ConfigError, match="qps"):
            app.set("flow", qps=bad)
    assert store.job_get("flow")["overrides"] == {"qps": 200.0}


# -- ctx.acquire in a running worker (SQLite, in-process) -------------------------------------


def test_broadcast_job_handlers_pace_themselves_with_ctx_acquire(sqlite_url: str) -> None:
    app = sluice.App(sqlite_url, heartbeat=0.3, node_ttl=1.0, lease_ttl=1.0)
    grants: dict[str, list[float]] = {"sync": [], "async": []}

    @app.job(routing="broadcast", qps=40, warmup=0)
    def paced(ctx: sluice.Context) -> None:
        for _ in range(80):
            ctx.acquire()
            grants["sync"].append(time.monotonic())

    @app.job(routing="broadcast", qps=40, warmup=0)
    async def paced_async(ctx: sluice.Context) -> None:
        for _ in range(80):
            await ctx.aacquire()
            grants["async"].append(time.monotonic())

    with worker_thread(app, concurrency=2):
        wait_for(lambda: len(app.store.job_list()) == 2, 10, message="jobs registered")
        app.trigger("paced")
        app.trigger("paced_async")
        wait_for(lambda: all(len(g) == 80 for g in grants.values()), 20,
                 message="both handlers to finish")
    for kind, times in grants.items():
        # An idle bursty limiter may grant up to one second's permits (40) at once; after
        # that, one permit every 25 ms.
        assert times[-1] - times[0] >= 39 / 40 - 0.05, kind
        steady = times[-1] - times[-31]
        assert 30 / 40 - 0.05 <= steady <= 30 / 40 + 0.25, (kind, steady)


def test_acquire_without_a_rate_returns_at_once() -> None:
    from datetime import UTC, datetime

    from sluice.context import Context, NodeInfo

    ctx = Context(job="j", run_id=1, scheduled_at=datetime.now(UTC), attempt=1,
                  node=NodeInfo(id="n", group=None, zone=None, concurrency=1),
                  fencing_token=1)
    assert ctx.acquire(3) == 0.0
    assert asyncio.run(ctx.aacquire()) == 0.0


# -- status, plan, set on the command line ----------------------------------------------------


def sluice_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", "--database-url", url, *args],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_plan_prints_per_node_rate_load_size_and_drain_time(sqlite_url: str) -> None:
    app = sluice.App(sqlite_url)
    pipe = app.pipeline("remind", qps=1000, fixed_rate=5)
    app.store.job_register("remind", "pipeline", pipe.spec.stored(), None, None)
    out = sluice_cli(sqlite_url, "plan", "remind", "--nodes", "40", "--shards", "1000",
                     "--qps", "8000", "--interval", "5")
    assert out.returncode == 0, out.stderr
    assert "per-node rate:        200.0/s" in out.stdout
    assert "per-shard load size:  40 record(s)" in out.stdout
    assert "drain 40,000 record(s): 5 s at full rate, 5.5 s from cold" in out.stdout
    got = json.loads(sluice_cli(sqlite_url, "plan", "remind", "--nodes", "3", "--shards", "20",
                                "--backlog", "3000", "--json").stdout)
    assert got["qps"] == 1000 and got["per_node"] == pytest.approx(333.333)
    assert got["load_size"] == 250 and got["drain_seconds"] == 3.0
    assert plan(8000, 4, 40, 5)["per_node"] == 2000


@pytest.mark.parametrize("args", [
    ("plan", "nosuch", "--nodes", "1", "--shards", "1"),
    ("plan", "remind", "--nodes", "0", "--shards", "1"),
    ("plan", "remind", "--nodes", "2", "--shards", "1", "--qps", "-5"),
    ("status", "nosuch"),
    ("set", "remind", "qps=abc"),
    ("set", "remind", "qps=0"),
    ("set", "remind", "burst=3"),
    ("set", "nosuch", "qps=5"),
])
def test_bad_rate_commands_are_one_line_and_exit_2(sqlite_url: str, args: tuple[str]) -> None:
    app = sluice.App(sqlite_url)
    pipe = app.pipeline("remind", qps=1000)
    app.store.job_register("remind", "pipeline", pipe.spec.stored(), None, None)
    out = sluice_cli(sqlite_url, *args)
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("sluice: ")
    assert app.store.job_get("remind")["overrides"] == {}


def test_status_of_a_job_with_no_live_node(sqlite_url: str, tmp_path: Path) -> None:
    app = sluice.App(sqlite_url)
    pipe = app.pipeline("remind", qps=1000)
    app.store.job_register("remind", "pipeline", pipe.spec.stored(), None, None)
    out = sluice_cli(sqlite_url, "status", "remind")
    assert out.returncode == 0, out.stderr
    assert "target 1,000.0/s, mode local" in out.stdout
    assert "achieved (last 10 s): - over 0 live node(s)" in out.stdout


def test_weight_setting_is_validated_and_reaches_the_gate(monkeypatch: pytest.MonkeyPatch,
                                                          sqlite_url: str) -> None:
    from sluice.config import Settings
    from sluice.rate.gate import for_worker

    with pytest.raises(ConfigError, match="weight"):
        Settings.load(weight=0)
    monkeypatch.setenv("SLUICE_WEIGHT", "2.5")
    assert Settings.load().weight == 2.5
    monkeypatch.setenv("SLUICE_WEIGHT", "heavy")
    with pytest.raises(ConfigError, match="SLUICE_WEIGHT"):
        Settings.load()
    monkeypatch.delenv("SLUICE_WEIGHT")

    class FakeWorker:  # what for_worker reads of a worker
        def __init__(self, app: sluice.App, **settings: Any) -> None:
            self.app, self.settings = app, app.settings.with_(**settings)
            self.node = types.SimpleNamespace(id="me", group=None)
            self.store, self.plugins = None, {}

    app = sluice.App(sqlite_url)
    assert for_worker(FakeWorker(app)) is None, "no pipeline nor sharded/broadcast job"
    app.pipeline("flow", qps=10)
    assert for_worker(FakeWorker(app, concurrency=4)).weight == 4  # type: ignore[union-attr]
    gate_ = for_worker(FakeWorker(app, weight=1.5))
    assert gate_ is not None and gate_.weight == 1.5 and gate_.serves == ["flow"]
