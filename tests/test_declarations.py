"""Declarations are validated where they are written: a bad one raises ``sluice.ConfigError``
at once (no database, no worker), with a message naming the job, the field and what is allowed.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import pytest

import sluice
from sluice.job import Backoff
from sluice.schedule.triggers import CronSchedule, FixedDelay, FixedRate


@pytest.fixture
def app(tmp_path) -> sluice.App:
    # Declaring never touches the store: the file must not even be created.
    return sluice.App(f"sqlite:///{tmp_path / 'never-opened.db'}")


def handler(ctx: sluice.Context) -> None:
    pass


def bad(app: sluice.App, **options: object) -> str:
    """Declare job ``report`` with ``options``; return the ConfigError message it must raise."""
    with pytest.raises(sluice.ConfigError) as caught:
        app.job(name="report", **options)(handler)
    assert "report" not in app.jobs, "a rejected declaration must not be registered"
    return str(caught.value)


# -- schedules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cron, field, allowed",
    [
        ("61 * * * * ?", "second", "0-59"),
        ("0 60 * * * ?", "minute", "0-59"),
        ("0 0 25 * * ?", "hour", "0-23"),
        ("0 0 0 32 * ?", "day-of-month", "1-31"),
        ("0 0 0 1 13 ?", "month", "1-12"),
        ("0 0 0 ? * 8", "day-of-week", "0-7"),
        ("0 0 0 1 FOO ?", "month", "JAN-DEC"),
        ("not a cron", "fields", "5 or 6"),
        ("* * *", "fields", "5 or 6"),
        ("0 ? * * * *", "?", "day-of-month or day-of-week"),
        ("@sometimes", "macro", "@daily"),
    ],
)
def test_invalid_cron_names_job_field_and_allowed_values(app, cron, field, allowed):
    message = bad(app, cron=cron)
    assert "'report'" in message
    assert field in message
    assert allowed in message
    assert cron in message, "the message quotes the expression"


def test_invalid_cron_raises_cron_error_subclass(app):
    with pytest.raises(sluice.CronError):
        app.job(name="report", cron="0 0 0 32 * ?")(handler)


def test_cron_must_be_a_string(app):
    message = bad(app, cron=5)
    assert "'report'" in message and "cron" in message and "string" in message


def test_unknown_timezone(app):
    message = bad(app, cron="0 0 9 * * ?", timezone="Mars/Olympus_Mons")
    assert "'report'" in message
    assert "timezone" in message and "Mars/Olympus_Mons" in message
    assert "IANA" in message


@pytest.mark.parametrize("kind", ["fixed_rate", "fixed_delay"])
@pytest.mark.parametrize("value", [0, -1, -0.5, timedelta(0), timedelta(seconds=-3)])
def test_non_positive_interval(app, kind, value):
    message = bad(app, **{kind: value})
    assert "'report'" in message and kind in message and "> 0" in message


@pytest.mark.parametrize("kind", ["fixed_rate", "fixed_delay"])
@pytest.mark.parametrize("value", ["5", "5s", object(), True, math.nan, math.inf, [1]])
def test_non_numeric_interval(app, kind, value):
    message = bad(app, **{kind: value})
    assert "'report'" in message and kind in message
    assert "number of seconds or a timedelta" in message


def test_negative_initial_delay(app):
    message = bad(app, fixed_rate=5, initial_delay=-1)
    assert "'report'" in message and "initial_delay" in message and ">= 0" in message


def test_initial_delay_without_a_schedule(app):
    message = bad(app, initial_delay=3)
    assert "'report'" in message and "initial_delay" in message
    assert "cron=" in message and "fixed_rate=" in message


@pytest.mark.parametrize(
    "options, named",
    [
        ({"cron": "0 * * * * ?", "fixed_rate": 5}, ("cron", "fixed_rate")),
        ({"fixed_rate": 5, "fixed_delay": 5}, ("fixed_rate", "fixed_delay")),
        ({"cron": "0 * * * * ?", "fixed_delay": 5}, ("cron", "fixed_delay")),
    ],
)
def test_two_schedule_kinds(app, options, named):
    message = bad(app, **options)
    assert "'report'" in message and "one schedule kind" in message
    for kind in named:
        assert kind in message


@pytest.mark.parametrize("schedule", [{"fixed_rate": 5}, {"fixed_delay": 5}, {}])
def test_timezone_without_cron(app, schedule):
    message = bad(app, timezone="Europe/Berlin", **schedule)
    assert "'report'" in message and "timezone" in message and "cron" in message


# -- policy words -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, typo, meant, allowed",
    [
        ("routing", "broadcst", "broadcast", ("single", "broadcast", "sharded")),
        ("routing", "shard", "sharded", ("single", "broadcast", "sharded")),
        ("overlap", "queu", "queue", ("skip", "queue", "concurrent", "replace")),
        ("overlap", "concurent", "concurrent", ("skip", "queue", "concurrent", "replace")),
        ("misfire", "catchup", "catch_up", ("fire_once", "skip", "catch_up")),
        ("misfire", "fire-once", "fire_once", ("fire_once", "skip", "catch_up")),
    ],
)
def test_unknown_policy_word_suggests_the_closest(app, field, typo, meant, allowed):
    message = bad(app, fixed_rate=5, **{field: typo})
    assert "'report'" in message and field in message and repr(typo) in message
    assert f"did you mean {meant!r}?" in message
    for word in allowed:
        assert repr(word) in message


def test_unknown_policy_word_without_a_close_match_has_no_hint(app):
    message = bad(app, fixed_rate=5, overlap="zzzzzz")
    assert "overlap" in message and "'skip'" in message
    assert "did you mean" not in message


# -- routing and shards -------------------------------------------------------------------


@pytest.mark.parametrize("routing", [None, "single", "broadcast"])
def test_shards_without_sharded_routing(app, routing):
    options = {"routing": routing} if routing else {}
    message = bad(app, fixed_rate=5, shards=4, **options)
    assert "'report'" in message and "shards" in message and "sharded" in message


def test_sharded_without_shards(app):
    message = bad(app, fixed_rate=5, routing="sharded")
    assert "'report'" in message and "shards=" in message and "sharded" in message


@pytest.mark.parametrize("shards", [0, -2, [], "abc", 2.5, True])
def test_sharded_with_bad_shards(app, shards):
    message = bad(app, fixed_rate=5, routing="sharded", shards=shards)
    assert "'report'" in message and "shards" in message


def test_sharded_with_duplicate_shard_items(app):
    message = bad(app, fixed_rate=5, routing="sharded", shards=["a", "b", "a"])
    assert "'report'" in message and "duplicate" in message


# -- names ----------------------------------------------------------------------------------


def test_duplicate_job_name(app):
    app.job(name="report", fixed_rate=5)(handler)
    with pytest.raises(sluice.ConfigError) as caught:

        @app.job(fixed_rate=10, name="report")
        def other(ctx):
            pass

    message = str(caught.value)
    assert "'report'" in message and "twice" in message and "unique" in message
    assert app.jobs["report"].func is handler, "the first declaration stays"


def test_duplicate_name_from_function_names(app):
    def tick(ctx):
        pass

    app.job(fixed_rate=5)(tick)
    with pytest.raises(sluice.ConfigError, match="'tick'"):
        app.job(fixed_rate=5)(tick)


def test_duplicate_name_between_job_and_pipeline(app):
    app.job(name="remind", fixed_rate=5)(handler)
    with pytest.raises(sluice.ConfigError, match="'remind'"):
        app.pipeline("remind", fixed_rate=5, qps=10)


@pytest.mark.parametrize("name", [" padded ", "x" * 201, "\t"])
def test_bad_job_name(app, name):
    with pytest.raises(sluice.ConfigError, match="job name"):
        app.job(name=name, fixed_rate=5)(handler)


def test_job_must_decorate_a_callable(app):
    with pytest.raises(sluice.ConfigError, match="function"):
        app.job("not callable")


# -- attempts, backoff, timeout ----------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True])
def test_bad_max_attempts(app, value):
    message = bad(app, fixed_rate=5, max_attempts=value)
    assert "'report'" in message and "max_attempts" in message and ">= 1" in message


@pytest.mark.parametrize("value", [0, -1, "10"])
def test_bad_catch_up_limit(app, value):
    message = bad(app, fixed_rate=5, misfire="catch_up", catch_up_limit=value)
    assert "'report'" in message and "catch_up_limit" in message and ">= 1" in message


@pytest.mark.parametrize("value", [5, "1,300", (1,), (1, 2, 3), None])
def test_backoff_shape(app, value):
    message = bad(app, fixed_rate=5, max_attempts=3, backoff=value)
    assert (
        "'report'" in message and "backoff" in message and "(base_seconds, cap_seconds)" in message
    )


@pytest.mark.parametrize(
    "value, part", [((-1, 5), "base"), ((0, 5), "base"), ((1, 0), "cap"), (("a", 5), "base")]
)
def test_backoff_values(app, value, part):
    message = bad(app, fixed_rate=5, max_attempts=3, backoff=value)
    assert "'report'" in message and f"backoff {part}" in message


@pytest.mark.parametrize("value", [0, -1, "5"])
def test_bad_timeout(app, value):
    message = bad(app, fixed_rate=5, timeout=value)
    assert "'report'" in message and "timeout" in message


def test_negative_misfire_grace(app):
    message = bad(app, fixed_rate=5, misfire_grace=-1)
    assert "'report'" in message and "misfire_grace" in message and ">= 0" in message


def test_unknown_option_is_a_config_error_naming_the_job(app):
    message = bad(app, fixed_rat=5)
    assert "'report'" in message and "fixed_rat" in message and "fixed_rate" in message


def test_unknown_option_fails_at_declaration(app):
    with pytest.raises(
        sluice.ConfigError, match="unknown option 'fixed_rat'; did you mean 'fixed_rate'"
    ):
        app.job(name="report", fixed_rat=5)(handler)
    assert "report" not in app.jobs


# -- App settings and the database URL -----------------------------------------------------


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"heartbeat": -1}, "heartbeat"),
        ({"heartbeat": 0}, "heartbeat"),
        ({"heartbeat": "fast"}, "heartbeat"),
        ({"node_ttl": 0}, "node_ttl"),
        ({"lease_ttl": -5}, "lease_ttl"),
        ({"drain_timeout": 0}, "drain_timeout"),
        ({"drain_timeout": math.nan}, "drain_timeout"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
    ],
)
def test_bad_app_setting(tmp_path, settings, named):
    with pytest.raises(sluice.ConfigError) as caught:
        sluice.App(f"sqlite:///{tmp_path / 'x.db'}", **settings)
    assert named in str(caught.value)
    assert not (tmp_path / "x.db").exists()


def test_node_ttl_must_be_at_least_twice_the_heartbeat(tmp_path):
    with pytest.raises(sluice.ConfigError) as caught:
        sluice.App(f"sqlite:///{tmp_path / 'x.db'}", heartbeat=1.0, node_ttl=1.5)
    message = str(caught.value)
    assert "node_ttl" in message and "heartbeat" in message and "twice" in message


def test_lease_ttl_must_be_at_least_twice_the_heartbeat(tmp_path):
    with pytest.raises(sluice.ConfigError) as caught:
        sluice.App(f"sqlite:///{tmp_path / 'x.db'}", heartbeat=1.0, node_ttl=5, lease_ttl=1.0)
    message = str(caught.value)
    assert "lease_ttl" in message and "heartbeat" in message and "twice" in message


def test_unknown_setting_lists_the_known_ones(tmp_path):
    with pytest.raises(sluice.ConfigError) as caught:
        sluice.App(f"sqlite:///{tmp_path / 'x.db'}", heartbeats=1)
    message = str(caught.value)
    assert "heartbeats" in message and "heartbeat," in message and "node_ttl" in message


def test_bad_setting_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_HEARTBEAT", "often")
    with pytest.raises(sluice.ConfigError, match="SLUICE_HEARTBEAT"):
        sluice.App(f"sqlite:///{tmp_path / 'x.db'}")


def test_explicit_setting_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_HEARTBEAT", "3")
    monkeypatch.setenv("SLUICE_NODE_TTL", "9")
    app = sluice.App(f"sqlite:///{tmp_path / 'x.db'}", heartbeat=0.5)
    assert app.settings.heartbeat == 0.5
    assert app.settings.node_ttl == 9.0


@pytest.mark.parametrize(
    "url, problem",
    [
        ("mysql://root@localhost/db", "mysql"),
        ("redis://localhost:6379/0", "redis"),
        ("/just/a/path.db", "scheme"),
        ("sqlite:///", "file name"),
    ],
)
def test_bad_database_url_fails_when_the_app_or_store_is_made(url, problem):
    with pytest.raises(sluice.ConfigError) as caught:
        sluice.App(url).open_store()
    message = str(caught.value)
    assert "database url" in message and problem in message
    assert "sqlite:///" in message


def test_bad_database_url_scheme_fails_at_app_construction():
    with pytest.raises(sluice.ConfigError, match="mysql"):
        sluice.App("mysql://root@localhost/db")


# -- good declarations --------------------------------------------------------------------


def test_timedelta_intervals(app):
    @app.job(fixed_rate=timedelta(minutes=2), initial_delay=timedelta(seconds=30))
    def every_two_minutes(ctx):
        pass

    @app.job(fixed_delay=timedelta(milliseconds=1500))
    def after_each(ctx):
        pass

    rate = app.jobs["every_two_minutes"].schedule
    assert isinstance(rate, FixedRate) and rate.every == 120.0 and rate.initial_delay == 30.0
    assert rate.first(1000.0) == 1030.0 and rate.next_after(1030.0) == 1150.0
    delay = app.jobs["after_each"].schedule
    assert isinstance(delay, FixedDelay) and delay.finish_delay == 1.5
    assert delay.next_after(1000.0) is None, "fixed delay: the run's end sets the next instant"


def test_decorator_returns_the_function_unchanged(app):
    def tick(ctx):
        return 42

    assert app.job(fixed_rate=1)(tick) is tick
    assert app.job(tick, name="tick2") is tick
    assert set(app.jobs) == {"tick", "tick2"}


def test_async_handler(app):
    @app.job(fixed_rate=1)
    async def fetch(ctx):
        await asyncio.sleep(0)

    @app.job(fixed_rate=1)
    def plain(ctx):
        pass

    assert app.jobs["fetch"].is_async
    assert not app.jobs["plain"].is_async


def test_five_field_cron_fires_at_second_zero(app):
    @app.job(cron="*/15 9-17 * * MON-FRI", timezone="Asia/Shanghai")
    def quarter_hourly(ctx):
        pass

    schedule = app.jobs["quarter_hourly"].schedule
    assert isinstance(schedule, CronSchedule)
    # Friday 2024-03-01 09:07:30 in Shanghai is 01:07:30 UTC; next is 09:15:00 local.
    start = 1709255250.0
    nxt = schedule.next_after(start)
    assert nxt == 1709255700.0
    assert schedule.next_after(nxt) == nxt + 15 * 60
    assert schedule.spec()["timezone"] == "Asia/Shanghai"


def test_six_field_quartz_cron(app):
    @app.job(cron="0 0/30 9-17 * * ?", timezone="Asia/Shanghai", overlap="skip")
    def half_hourly_report(ctx):
        pass

    @app.job(cron="0 0 12 L * ?")
    def month_end(ctx):
        pass

    assert isinstance(app.jobs["half_hourly_report"].schedule, CronSchedule)
    assert isinstance(app.jobs["month_end"].schedule, CronSchedule)


def test_defaults_and_full_declaration(app):
    @app.job
    def manual_only(ctx):
        pass

    spec = app.jobs["manual_only"]
    assert spec.schedule is None
    assert (spec.routing, spec.overlap, spec.misfire) == ("single", "skip", "fire_once")
    assert spec.max_attempts == 1 and spec.timeout is None and spec.catch_up_limit == 10

    @app.job(
        fixed_rate=60,
        routing="sharded",
        shards=8,
        overlap="queue",
        misfire="catch_up",
        catch_up_limit=3,
        misfire_grace=0,
        max_attempts=5,
        backoff=(0.5, 10),
        timeout=30,
    )
    def reconcile(ctx):
        pass

    spec = app.jobs["reconcile"]
    assert spec.shards == tuple(str(i) for i in range(8))
    assert (spec.overlap, spec.misfire, spec.catch_up_limit) == ("queue", "catch_up", 3)
    assert spec.misfire_grace == 0.0 and spec.max_attempts == 5 and spec.timeout == 30.0
    assert spec.backoff == Backoff(base=0.5, cap=10.0)
    stored = spec.stored()
    assert stored["schedule"] == {"fixed_rate": 60.0, "initial_delay": 0.0}
    assert stored["shards"] == [str(i) for i in range(8)]


def test_sharded_with_a_list_of_items(app):
    @app.job(fixed_rate=60, routing="sharded", shards=["eu", "us", "asia"])
    def per_zone(ctx):
        pass

    assert app.jobs["per_zone"].shards == ("eu", "us", "asia")


def test_declaring_never_opens_the_store(tmp_path):
    app = sluice.App(f"sqlite:///{tmp_path / 'lazy.db'}")
    app.job(name="a", fixed_rate=1)(handler)
    app.job(name="b", cron="0 * * * * ?")(handler)
    assert not (tmp_path / "lazy.db").exists()


def test_app_defaults_from_the_environment(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    assert sluice.App().settings.database_url == url
    monkeypatch.delenv("SLUICE_DATABASE_URL")
    assert sluice.App().settings.database_url == "sqlite:///sluice.db"
